// Binomial trees for the rooted collectives, pipelined in segments.
//
// Ranks are renumbered v = (r - root) mod n. In a broadcast, rank v receives from
// v - lowbit-parent and forwards to v + 2^k for every 2^k below its lowest set bit; a
// reduce runs the same tree upwards.
//
// Cost, n ranks, S bytes in k segments: (ceil(log2 n) + k - 1) segment steps;
// the root sends S * ceil(log2 n) bytes (its children one after another);
//   T ~ (log2 n + k - 1) * (alpha + S/k * beta)  [+ S*gamma for reduce]
// Wins for small messages and few ranks; large broadcasts on many ranks would prefer
// scatter + allgather.
//
// Ordered reductions (16-bit SUM/PROD on 3+ ranks, HCOMM_DETERMINISTIC=1; ordered.cc):
// the tree's partials would be rounded per hop and summed in tree order, so reduce runs
// the direct reduce-scatter (owners fold in rank order) and the root gathers the blocks:
//   T ~ (n-1)*alpha + (n-1)/n*S*beta + S*gamma*e + (n-1)/n*S*beta at the root.
//
// Gather and scatter on the same tree: rank v holds the blocks of its subtree, the
// relative ranks v .. v+size(v)-1, contiguous; a gather passes them up, a scatter down.
// Cost, S bytes per rank: ceil(log2 n) steps; the root moves (n-1)*S, a rank v its
// subtree's; T ~ ceil(log2 n)*alpha + (n-1)*S*beta. Against linear's n-1 messages that
// the root handles one by one ((n-1)*alpha), it wins for small messages on many ranks.
#include <algorithm>
#include <cstring>

#include "algo/algorithms.h"

namespace hcomm {
namespace algo {

namespace {

struct Binomial {
  int parent = -1;
  std::vector<int> children;  // in the order a broadcast serves them (largest subtree first)
};

Binomial binomial(int rank, int n, int root) {
  int v = (rank - root + n) % n;
  Binomial b;
  int mask = 1;
  while (mask < n) {
    if (v & mask) {
      b.parent = ((v - mask) + root) % n;
      break;
    }
    mask <<= 1;
  }
  for (mask >>= 1; mask > 0; mask >>= 1)
    if (v + mask < n) b.children.push_back((v + mask + root) % n);
  return b;
}

}  // namespace

void broadcastBinomial(Links& l, void* bufv, size_t count, int root, size_t segBytes) {
  char* buf = static_cast<char*>(bufv);
  size_t bytes = count * l.elemSize();
  size_t seg = std::max<size_t>(l.elemSize(), segBytes / l.elemSize() * l.elemSize());
  Binomial b = binomial(l.rank(), l.size(), root);
  std::vector<RequestPtr> sends;
  for (size_t off = 0; off < bytes; off += seg) {
    size_t len = std::min(seg, bytes - off);
    if (b.parent >= 0) l.recv(b.parent, buf + off, len);
    for (int c : b.children) sends.push_back(l.isend(c, buf + off, len));
  }
  l.waitAll(sends);
}

void reduceBinomial(Links& l, const void* inv, void* outv, size_t count, int root, size_t segBytes) {
  if (l.ordered()) return reduceOrdered(l, inv, outv, count, root);  // see the header
  const char* in = static_cast<const char*>(inv);
  size_t bytes = count * l.elemSize();
  size_t seg = std::max<size_t>(l.elemSize(), segBytes / l.elemSize() * l.elemSize());
  Binomial b = binomial(l.rank(), l.size(), root);
  // Non-roots with children fold into a scratch buffer; leaves send their input as is.
  char* acc = b.parent < 0 ? static_cast<char*>(outv) : (b.children.empty() ? nullptr : l.scratch(bytes));
  std::vector<RequestPtr> sends;
  for (size_t off = 0; off < bytes; off += seg) {
    size_t len = std::min(seg, bytes - off);
    const char* partial = in + off;
    for (auto it = b.children.rbegin(); it != b.children.rend(); ++it) {  // smallest subtree first
      l.wait(l.irecvReduce(*it, acc + off, partial, len));
      partial = acc + off;
    }
    if (b.parent >= 0) sends.push_back(l.isend(b.parent, partial, len));
    else if (partial != acc + off) l.copy(acc + off, partial, len);
  }
  l.waitAll(sends);
}

namespace {

// Relative rank v's subtree: v .. v+size-1 (the root's is every rank).
size_t subtreeSize(int v, int n) { return v == 0 ? n : std::min(v & -v, n - v); }

// Copies between rank order (rank-indexed blocks) and relative order (block v is rank
// (v + root) mod n), for the root: two contiguous pieces.
void rotate(Links& l, char* dst, const char* src, size_t bytes, int n, int root, bool toRelative) {
  size_t head = static_cast<size_t>(n - root) * bytes, tail = static_cast<size_t>(root) * bytes;
  if (toRelative) {
    l.copy(dst, src + tail, head);
    l.copy(dst + head, src, tail);
  } else {
    l.copy(dst + tail, src, head);
    l.copy(dst, src + head, tail);
  }
}

}  // namespace

void gatherBinomial(Links& l, const void* in, void* outv, size_t count, int root) {
  int n = l.size(), v = (l.rank() - root + n) % n;
  size_t bytes = count * l.elemSize();
  Binomial b = binomial(l.rank(), n, root);
  if (b.children.empty()) return l.send(b.parent, in, bytes);  // a leaf: its own block only
  char* mine = l.scratch(subtreeSize(v, n) * bytes);             // the subtree's blocks, relative order
  l.copy(mine, in, bytes);
  std::vector<RequestPtr> recvs;
  for (int c : b.children) {
    int cv = (c - root + n) % n;
    recvs.push_back(l.irecv(c, mine + (cv - v) * bytes, subtreeSize(cv, n) * bytes));
  }
  l.waitAll(recvs);
  if (b.parent >= 0) l.send(b.parent, mine, subtreeSize(v, n) * bytes);
  else rotate(l, static_cast<char*>(outv), mine, bytes, n, root, false);
}

void scatterBinomial(Links& l, const void* inv, void* out, size_t count, int root) {
  int n = l.size(), v = (l.rank() - root + n) % n;
  size_t bytes = count * l.elemSize();
  Binomial b = binomial(l.rank(), n, root);
  if (b.children.empty()) return l.recv(b.parent, out, bytes);
  char* mine = l.scratch(subtreeSize(v, n) * bytes);
  if (b.parent >= 0) l.recv(b.parent, mine, subtreeSize(v, n) * bytes);
  else rotate(l, mine, static_cast<const char*>(inv), bytes, n, root, true);
  std::vector<RequestPtr> sends;
  for (int c : b.children) {
    int cv = (c - root + n) % n;
    sends.push_back(l.isend(c, mine + (cv - v) * bytes, subtreeSize(cv, n) * bytes));
  }
  l.copy(out, mine, bytes);
  l.waitAll(sends);
}

}  // namespace algo
}  // namespace hcomm
