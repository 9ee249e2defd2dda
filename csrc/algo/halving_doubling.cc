// Halving-doubling allreduce, for any number of ranks.
//
// Ranks beyond the largest power of two p <= n first fold into a partner (the
// "non-power-of-two step": among the first 2(n-p) ranks, each even rank sends its data
// to the odd rank above it and sits out), the p remaining ranks run the core, and the
// folded ranks get the result back at the end.
//   small messages: recursive doubling, log2(p) exchanges of the whole buffer;
//     T ~ log2(p)*(alpha + S*beta + S*gamma)
//   large messages: Rabenseifner, reduce-scatter by recursive halving then allgather
//     by recursive doubling; each rank moves 2(p-1)/p * S bytes;
//     T ~ 2*log2(p)*alpha + 2(p-1)/p*S*beta + (p-1)/p*S*gamma
// plus 2*(alpha + S*beta) when n is not a power of two. Wins for small and medium
// messages (fewest steps) and for large ones on powers of two.
//
// Ordered reductions (16-bit SUM/PROD on 3+ ranks, HCOMM_DETERMINISTIC=1; ordered.cc):
// pairwise partials cannot give the rank-order fold, so
//   small messages: Bruck-allgather the inputs, every rank folds all n locally;
//     T ~ ceil(log2 n)*alpha + (n-1)*S*beta + n*S*gamma*e
//   large: direct reduce-scatter (owners fold), Bruck allgather;
//     T ~ (n-1)*alpha + (n-1)/n*S*beta + S*gamma*e + ceil(log2 n)*alpha + (n-1)/n*S*beta
// (e = 2 for 16-bit dtypes, whose partials are float32).
#include <algorithm>
#include <cstring>

#include "algo/algorithms.h"
#include "common/param.h"

namespace hcomm {
namespace algo {

namespace {

// The switch between the two cores, in bytes (HCOMM_HD_LARGE_BYTES).
size_t largeBytes() {
  static const size_t v = static_cast<size_t>(envInt("HCOMM_HD_LARGE_BYTES", 256 << 10));
  return v;
}

// From this many bytes a rank keeps at the first halving, its reduced block is written
// with streaming stores (HCOMM_STREAM_BYTES): the allgather reads it back only after the
// rest of the reduce-scatter has pushed it out of the cache anyway. Measured 2-rank out
// of place: 4 MiB 0.49 -> 0.61 ms (worse), 16 MiB 2.53 -> 2.35 ms, 64 MiB ~6 % faster.
size_t streamBytes() {
  static const size_t v = static_cast<size_t>(envInt("HCOMM_STREAM_BYTES", 8 << 20));
  return v;
}

void recursiveDoubling(Links& l, int vrank, int p, const char*& acc, char* out, size_t bytes,
                       const std::vector<int>& realRank) {
  char* tmp = l.scratch(bytes);
  for (int mask = 1; mask < p; mask <<= 1) {
    int partner = realRank[vrank ^ mask];
    RequestPtr s = l.isend(partner, acc, bytes);
    RequestPtr r = l.irecv(partner, tmp, bytes);
    l.waitAll({s, r});
    l.reduceLocal(out, acc, tmp, bytes);  // a+b == b+a in IEEE: both sides get the same bits
    acc = out;
  }
}

void rabenseifner(Links& l, int vrank, int p, const char*& acc, char* out, size_t count,
                  const std::vector<int>& realRank) {
  size_t es = l.elemSize();
  size_t lo = 0, hi = count;
  std::vector<std::pair<size_t, size_t>> kept;  // ranges kept at each halving, for the way back
  for (int mask = p / 2; mask >= 1; mask >>= 1) {
    int partner = realRank[vrank ^ mask];
    size_t mid = lo + (hi - lo) / 2;
    bool lower = (vrank & mask) == 0;
    size_t keepLo = lower ? lo : mid, keepHi = lower ? mid : hi;
    size_t giveLo = lower ? mid : lo, giveHi = lower ? hi : mid;
    RequestPtr s = giveHi > giveLo ? l.isend(partner, acc + giveLo * es, (giveHi - giveLo) * es) : nullptr;
    size_t keepBytes = (keepHi - keepLo) * es;
    RequestPtr r = keepHi > keepLo ? l.irecvReduce(partner, out + keepLo * es, acc + keepLo * es, keepBytes, 0,
                                                  keepBytes >= streamBytes())
                                   : nullptr;
    l.waitAll({s, r});
    kept.push_back({lo, hi});
    lo = keepLo;
    hi = keepHi;
    acc = out;
  }
  for (int mask = 1; mask < p; mask <<= 1) {
    int partner = realRank[vrank ^ mask];
    auto range = kept.back();
    kept.pop_back();
    // The partner holds the other half of `range`.
    size_t oLo = lo == range.first ? hi : range.first, oHi = lo == range.first ? range.second : lo;
    RequestPtr s = hi > lo ? l.isend(partner, out + lo * es, (hi - lo) * es) : nullptr;
    RequestPtr r = oHi > oLo ? l.irecv(partner, out + oLo * es, (oHi - oLo) * es) : nullptr;
    l.waitAll({s, r});
    lo = range.first;
    hi = range.second;
  }
}

}  // namespace

void allreduceHalvingDoubling(Links& l, const void* inv, void* outv, size_t count) {
  const char* in = static_cast<const char*>(inv);
  char* out = static_cast<char*>(outv);
  int n = l.size(), r = l.rank();
  size_t bytes = count * l.elemSize();
  int p = 1;
  while (p * 2 <= n) p *= 2;
  if (l.ordered()) {  // see the header
    if (bytes >= largeBytes() && count >= static_cast<size_t>(n)) allreduceOrdered(l, in, out, count, allgathervBruck);
    else allreduceGatherFold(l, in, out, count);
    return;
  }
  int rem = n - p;
  const char* acc = in;  // where this rank's running partial lives
  int vrank;
  if (r < 2 * rem) {
    if (r % 2 == 0) {  // folds into r+1, then waits for the result
      l.send(r + 1, in, bytes);
      l.recv(r + 1, out, bytes);
      return;
    }
    l.wait(l.irecvReduce(r - 1, out, in, bytes));
    acc = out;
    vrank = r / 2;
  } else {
    vrank = r - rem;
  }
  std::vector<int> realRank(p);
  for (int v = 0; v < p; ++v) realRank[v] = v < rem ? 2 * v + 1 : v + rem;
  if (bytes >= largeBytes() && count >= static_cast<size_t>(p))
    rabenseifner(l, vrank, p, acc, out, count, realRank);
  else
    recursiveDoubling(l, vrank, p, acc, out, bytes, realRank);
  if (acc != out) l.copy(out, acc, bytes);
  if (r < 2 * rem) l.send(r - 1, out, bytes);
}

}  // namespace algo
}  // namespace hcomm
