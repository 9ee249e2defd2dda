// Pairwise-exchange alltoall(v): at step k (1..n-1) rank r sends to r+k and receives
// from r-k, so every pair meets exactly once and no rank is hit by two senders at once.
//
// Cost, n ranks, S bytes sent per rank in all: n-1 steps; each rank sends and receives
// (n-1)/n * S bytes;  T ~ (n-1)*alpha + (n-1)/n * S * beta.
// Wins for medium and large messages; for tiny ones Bruck's log-step scheme would save
// latency at the price of extra copies.
#include <cstring>

#include "algo/algorithms.h"

namespace hcomm {
namespace algo {

void alltoallvPairwise(Links& l, const void* inv, const std::vector<size_t>& sendCounts,
                       const std::vector<size_t>& sendDispls, void* outv,
                       const std::vector<size_t>& recvCounts, const std::vector<size_t>& recvDispls) {
  const char* in = static_cast<const char*>(inv);
  char* out = static_cast<char*>(outv);
  int n = l.size(), r = l.rank();
  size_t es = l.elemSize();
  if (recvCounts[r]) l.copy(out + recvDispls[r] * es, in + sendDispls[r] * es, recvCounts[r] * es);
  for (int k = 1; k < n; ++k) {
    int to = (r + k) % n, from = (r - k + n) % n;
    RequestPtr s = sendCounts[to] ? l.isend(to, in + sendDispls[to] * es, sendCounts[to] * es) : nullptr;
    RequestPtr q = recvCounts[from] ? l.irecv(from, out + recvDispls[from] * es, recvCounts[from] * es) : nullptr;
    l.waitAll({s, q});
  }
}

}  // namespace algo
}  // namespace hcomm
