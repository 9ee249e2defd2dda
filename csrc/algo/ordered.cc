// Ordered reductions: each element's result is the fold of the ranks' contributions in
// rank order 0, 1, ..., n-1, carried in the accumulation type (float32 for float16 and
// bfloat16) and rounded once (Links::ordered()). A left fold is a chain, so all n
// contributions of an element must meet in one place: the algorithms here differ only
// in how they get there and how the result spreads, never in the arithmetic, which is
// why every algorithm, segment size, transport and host layout returns the same bits.
//
// The fold (foldFromAll): the owner of a block posts one receive at a time, in rank
// order, each reducing the arriving block into its partial as it lands (shared memory
// reduces straight from the sender's pages; tcp and MPI from a staging piece), so no
// contribution is staged whole. Step 0 converts, steps 1..n-2 add into a float32 (or
// dtype) partial, step n-1 adds and rounds into the output.
//
// Without HCOMM_DETERMINISTIC (Links::rankOrder() false) a 16-bit result only has to be
// the float32 sum rounded once, in any order: the owner folds its own contribution first,
// then each peer's as it arrives (foldAsArrived), on host memory (device transports
// cannot probe). Same steps, bytes and partial, so the costs below hold for both orders;
// what it saves is the wait on a descheduled rank while another's piece is ready.
//
// Costs, n ranks, S bytes, e = 2 for 16-bit dtypes (the float32 partial) else 1:
//   reduceScatterOrdered (direct): each rank sends n-1 blocks of S/n to their owners at
//     once and folds its own block from n-1 arrivals in turn;
//     T ~ (n-1)*(alpha + S/n*beta) + n * S/n * gamma * e      bytes sent (n-1)/n * S,
//     as the ring reduce-scatter's: it costs no extra bytes.
//   allgather by Bruck: ceil(log2 n) steps, (n-1)/n * S bytes; T ~ log2(n)*alpha + (n-1)/n*S*beta.
//   gatherFold (small messages): Bruck-allgather every input, fold locally;
//     T ~ log2(n)*alpha + (n-1)*S*beta + n*S*gamma*e.
//   rootFold: every rank sends S to the root, which folds; T ~ (n-1)*(alpha + S*beta) + n*S*gamma*e.
// Large messages go in pieces of pieceBytes() per block (n per chunk for allreduce), each
// piece's fold adding (n-1)*alpha: T gains S/(n*piece) * (n-1)*alpha. allreduceOrdered
// folds each chunk's block in foldPieceBytes() pieces sent at the chunk's start (no
// lockstep), so that the float32 partial stays in L2: n*S/fold messages instead of
// n*S/piece, each a rendezvous (~alpha of CPU time, no wait), against 16 bytes of
// memory traffic per element saved on a 4-rank fold.
#include <algorithm>
#include <numeric>

#include "algo/algorithms.h"
#include "common/param.h"

namespace hcomm {
namespace algo {

namespace {

// Channels apart from the flat algorithms' 0..3 and the hierarchical sub-groups' 8..
constexpr int kFoldChannel = 6;
constexpr int kBruckChannel = 7;
// Bytes (of the dtype) of one block folded at a time. Each piece costs its steps a
// wake-up when the ranks outnumber the CPUs, so pieces are large; one whole 16 MiB block
// went through DRAM three times too often. Measured, 4 ranks on 2 busy cores, float16
// 64 MiB against the old pairwise ring (hcomm-bench, out of place): 1 MiB pieces
// 2.6-3.3x its time, 4 MiB 1.25x, 8 MiB 0.93x; whole blocks 3x.
// HCOMM_ORDERED_PIECE_BYTES overrides it (tests cross pieces with small ones); every
// rank must use the same value, as for the segment sizes.
size_t pieceBytes() { return static_cast<size_t>(std::max<int64_t>(64, envInt("HCOMM_ORDERED_PIECE_BYTES", 8 << 20))); }

// Bytes (of the dtype) of one fold piece inside an allreduce chunk: small enough that
// its float32 partial (twice the bytes for 16-bit dtypes) and the shared-memory staging
// piece (1 MiB) stay in a 2 MiB L2 through all n fold steps. With 8 MiB pieces the
// partial (16 MiB) went through memory at every step: a 4-rank fold touched ~40 bytes
// per element against the 16-bit ring's ~24. The pieces of a chunk are all sent at its
// start, so they cost messages but no waits. HCOMM_ORDERED_FOLD_BYTES overrides it, the
// same on every rank.
size_t foldPieceBytes() {
  return static_cast<size_t>(std::max<int64_t>(64, envInt("HCOMM_ORDERED_FOLD_BYTES", 256 << 10)));
}

std::vector<size_t> displacements(const std::vector<size_t>& counts) {
  std::vector<size_t> d(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), d.begin() + 1);
  return d;
}


// foldFromAll without HCOMM_DETERMINISTIC: this rank's own contribution first, then each
// peer's as it arrives (Links::nextArrival), so an owner never idles on a descheduled
// rank while another's piece waits. Same steps, bytes and partial as the rank-order
// fold, so the same cost; only the order of the float32 additions changes, and with it
// at most the last bit of the float32 partial, not the one rounding to 16 bits.
void foldAsArrived(Links& l, const void* own, void* out, size_t count, int channel, char* acc) {
  int n = l.size(), me = l.rank();
  bool wide = l.wide();
  l.accumulateLocal(acc, wide, nullptr, wide, own, count);  // `out` may alias `own`: read first
  std::vector<int> left;
  for (int d = 1; d < n; ++d) left.push_back((me + d) % n);  // the send order of reduceScatter
  while (!left.empty()) {
    int k = l.nextArrival(left, channel);
    left.erase(std::find(left.begin(), left.end(), k));
    bool last = left.empty();
    l.wait(l.irecvAccumulate(k, last ? out : acc, !last && wide, acc, wide, count * l.elemSize(), channel));
  }
}

}  // namespace

void foldFromAll(Links& l, const void* own, void* out, size_t count, int channel, char* acc) {
  int n = l.size(), me = l.rank();
  if (count == 0) return;
  bool wide = l.wide();
  // The running partial; the last step writes `out`, which may alias `own` (read by then).
  if (!acc) acc = l.scratch(count * l.accSize());
  // Device transports cannot probe for an arrival; they keep the rank order.
  if (!l.rankOrder() && l.memory().device() < 0) return foldAsArrived(l, own, out, count, channel, acc);
  for (int k = 0; k < n; ++k) {
    bool last = k == n - 1;
    void* dst = last ? out : acc;
    bool dstWide = !last && wide;
    const void* a = k == 0 ? nullptr : acc;
    if (k == me) l.accumulateLocal(dst, dstWide, a, wide, own, count);
    else l.wait(l.irecvAccumulate(k, dst, dstWide, a, wide, count * l.elemSize(), channel));
  }
}

void foldLocal(Links& l, const std::vector<const char*>& inputs, void* out, size_t count) {
  int n = static_cast<int>(inputs.size());
  bool wide = l.wide();
  char* acc = l.scratch(count * l.accSize());
  for (int k = 0; k < n; ++k) {
    bool last = k == n - 1;
    l.accumulateLocal(last ? out : acc, !last && wide, k == 0 ? nullptr : acc, wide, inputs[k], count);
  }
}

void reduceScattervOrdered(Links& l, const void* inv, void* outv, const std::vector<size_t>& counts) {
  // In pieces of pieceBytes() per block, so that each fold's partial and the pieces it
  // pulls stay in cache (measured: whole 16 MiB blocks ran 3x slower than the ring).
  // Every piece is sent at once, up front: an owner then waits only for data, never for
  // its peers to reach the same piece (lockstep costs a wake-up per piece when the ranks
  // outnumber the CPUs). Safe with per-peer FIFO transports: nothing else is queued
  // between these pieces, and each owner takes its pieces from every sender in order.
  const char* in = static_cast<const char*>(inv);
  char* out = static_cast<char*>(outv);
  int n = l.size(), me = l.rank();
  size_t es = l.elemSize();
  std::vector<size_t> displ = displacements(counts);
  size_t piece = std::max<size_t>(1, pieceBytes() / es);
  std::vector<RequestPtr> sends;
  for (int d = 1; d < n; ++d) {  // to me+1 first: every owner hears from a different rank first
    int b = (me + d) % n;
    for (size_t off = 0; off < counts[b]; off += piece)
      sends.push_back(l.isend(b, in + (displ[b] + off) * es, std::min(piece, counts[b] - off) * es, kFoldChannel));
  }
  char* acc = l.scratch(std::min(piece, std::max<size_t>(counts[me], 1)) * l.accSize());
  for (size_t off = 0; off < counts[me]; off += piece)
    foldFromAll(l, in + (displ[me] + off) * es, out + off * es, std::min(piece, counts[me] - off), kFoldChannel, acc);
  l.waitAll(sends);  // the caller may overwrite `in` next (in-place allreduce)
}

void allgathervBruck(Links& l, const void* inv, void* outv, const std::vector<size_t>& counts) {
  // Rank r collects blocks r, r+1, ... (mod n) contiguously in `rot`; at the step with
  // `have` blocks it sends the first min(have, n-have) to r-have and receives as many
  // from r+have, so ceil(log2 n) steps; then the blocks are put in rank order.
  char* out = static_cast<char*>(outv);
  int n = l.size(), me = l.rank();
  size_t es = l.elemSize();
  std::vector<size_t> displ = displacements(counts);
  size_t total = displ[n];
  char* rot = l.scratch(total * es);
  std::vector<size_t> rdispl(n + 1, 0);  // where block (me+i)%n starts in rot
  for (int i = 0; i < n; ++i) rdispl[i + 1] = rdispl[i] + counts[(me + i) % n];
  l.copy(rot, inv, counts[me] * es);
  for (int have = 1; have < n; have *= 2) {
    int m = std::min(have, n - have);
    int to = (me - have + n) % n, from = (me + have) % n;
    // Blocks from+0 .. from+m-1 are blocks me+have .. me+have+m-1: rot positions have.. .
    size_t sendBytes = rdispl[m] * es;
    size_t recvBytes = (rdispl[have + m] - rdispl[have]) * es;
    RequestPtr s = sendBytes ? l.isend(to, rot, sendBytes, kBruckChannel) : nullptr;
    RequestPtr r = recvBytes ? l.irecv(from, rot + rdispl[have] * es, recvBytes, kBruckChannel) : nullptr;
    l.waitAll({s, r});
  }
  for (int i = 0; i < n; ++i) {
    int b = (me + i) % n;
    if (counts[b]) l.copy(out + displ[b] * es, rot + rdispl[i] * es, counts[b] * es);
  }
}

void allreduceOrdered(Links& l, const void* inv, void* outv, size_t count, const OrderedSpread& spread) {
  // Chunk by chunk (a piece per block), so that a chunk's allgather reads blocks still in
  // cache. A chunk's contributions are sent when the chunk starts, not all up front:
  // transports keep one FIFO per peer, so an allgather message queued behind the next
  // chunk's contribution would wait for a fold that waits for that very allgather. In
  // place, the spread of a chunk overwrites this rank's input blocks only once their
  // owners have folded them, which needed this rank's bytes.
  // Within a chunk each block goes as several fold pieces (foldPieceBytes()), all sent
  // at the chunk's start, and the owner folds one piece from every rank before the next:
  // the float32 partial of a piece stays in L2 across the n steps instead of going
  // through memory n times (see foldPieceBytes()). Only the spread waits per chunk.
  const char* in = static_cast<const char*>(inv);
  char* out = static_cast<char*>(outv);
  int n = l.size(), me = l.rank();
  size_t es = l.elemSize();
  size_t chunk = std::max<size_t>(1, pieceBytes() / es) * n;
  size_t sub = std::max<size_t>(1, foldPieceBytes() / es);
  char* acc = l.scratch(std::min(sub, Blocks{std::min(chunk, count), static_cast<size_t>(n)}.size(0)) * l.accSize());
  std::vector<size_t> counts(n);
  std::vector<RequestPtr> sends;
  for (size_t begin = 0; begin < count; begin += chunk) {
    Blocks blocks{std::min(chunk, count - begin), static_cast<size_t>(n)};
    for (int b = 0; b < n; ++b) counts[b] = blocks.size(b);
    for (int d = 1; d < n; ++d) {
      int b = (me + d) % n;
      const char* block = in + (begin + blocks.start(b)) * es;
      for (size_t off = 0; off < counts[b]; off += sub)
        sends.push_back(l.isend(b, block + off * es, std::min(sub, counts[b] - off) * es, kFoldChannel));
    }
    char* mine = out + (begin + blocks.start(me)) * es;
    const char* own = in + (begin + blocks.start(me)) * es;
    for (size_t off = 0; off < counts[me]; off += sub)
      foldFromAll(l, own + off * es, mine + off * es, std::min(sub, counts[me] - off), kFoldChannel, acc);
    spread(l, mine, out + begin * es, counts);
  }
  l.waitAll(sends);
}

void allreduceGatherFold(Links& l, const void* in, void* out, size_t count) {
  int n = l.size(), me = l.rank();
  size_t bytes = count * l.elemSize();
  char* all = l.scratch(bytes * n);
  allgathervBruck(l, in, all, std::vector<size_t>(n, count));
  std::vector<const char*> inputs(n);
  for (int k = 0; k < n; ++k) inputs[k] = k == me ? static_cast<const char*>(in) : all + k * bytes;
  foldLocal(l, inputs, out, count);
}

void rootFold(Links& l, const void* inv, void* outv, size_t count, int root, int channel, std::vector<RequestPtr>& sends) {
  const char* in = static_cast<const char*>(inv);
  char* out = static_cast<char*>(outv);
  size_t es = l.elemSize(), piece = std::max<size_t>(1, pieceBytes() / es);
  char* acc = l.rank() == root && count ? l.scratch(std::min(piece, count) * l.accSize()) : nullptr;
  for (size_t off = 0; off < count; off += piece) {  // in pieces, as reduceScattervOrdered
    size_t len = std::min(piece, count - off);
    if (l.rank() == root) foldFromAll(l, in + off * es, out + off * es, len, channel, acc);
    else sends.push_back(l.isend(root, in + off * es, len * es, channel));
  }
}

void reduceOrdered(Links& l, const void* inv, void* outv, size_t count, int root) {
  // Ordered reduce-scatter, then the root gathers the n reduced blocks: the root takes in
  // (n-1)/n * S instead of a binomial tree's log2(n) * S.
  char* out = static_cast<char*>(outv);
  int n = l.size(), me = l.rank();
  size_t es = l.elemSize();
  Blocks blocks{count, static_cast<size_t>(n)};
  std::vector<size_t> counts(n);
  for (int b = 0; b < n; ++b) counts[b] = blocks.size(b);
  char* mine = me == root ? out + blocks.start(me) * es : l.scratch(counts[me] * es);
  reduceScattervOrdered(l, inv, mine, counts);
  if (me != root) {
    if (counts[me]) l.send(root, mine, counts[me] * es, kBruckChannel);
    return;
  }
  std::vector<RequestPtr> recvs;
  for (int b = 0; b < n; ++b)
    if (b != root && counts[b]) recvs.push_back(l.irecv(b, out + blocks.start(b) * es, counts[b] * es, kBruckChannel));
  l.waitAll(recvs);
}

}  // namespace algo
}  // namespace hcomm
