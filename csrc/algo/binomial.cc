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

}  // namespace algo
}  // namespace hcomm
