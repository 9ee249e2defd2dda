// Bruck alltoall (equal blocks): ceil(log2 n) steps instead of pairwise's n-1.
//
// Each rank first rotates its blocks so that position i holds the block for rank
// me+i. At the step for bit k (k = 1, 2, 4, ...) it sends every block whose position
// has bit k set to rank me+k, and puts what rank me-k sends in the same positions;
// after the last step position i holds the block from rank me-i, copied to its place.
//
// Cost, n ranks, b bytes per block (S = n*b sent per rank):
//   ceil(log2 n) * alpha + sum over steps of (blocks with that bit) * b * beta
//   ~ ceil(log2 n) * (alpha + S/2 * beta)  + 2 * S * beta_copy (rotate, unpack) + the
//   per-step pack and unpack copies (S/2 each way a step).
// Pairwise sends (n-1)/n * S once but waits n-1 latencies; Bruck sends about
// log2(n)/2 * S, so it wins for small blocks on many ranks, and loses once the bytes
// dominate (the tuner prices both).
#include <algorithm>

#include "algo/algorithms.h"

namespace hcomm {
namespace algo {

void alltoallBruck(Links& l, const void* inv, void* outv, size_t count) {
  const char* in = static_cast<const char*>(inv);
  char* out = static_cast<char*>(outv);
  int n = l.size(), me = l.rank();
  size_t b = count * l.elemSize();
  if (b == 0) return;
  char* rot = l.scratch(n * b);
  // rot[i] = in[(me + i) % n]: two contiguous runs.
  l.copy(rot, in + me * b, (n - me) * b);
  if (me) l.copy(rot + (n - me) * b, in, me * b);
  char* sendBuf = l.scratch((n / 2 + 1) * b);
  char* recvBuf = l.scratch((n / 2 + 1) * b);
  for (int k = 1; k < n; k <<= 1) {
    size_t used = 0;
    for (int i = 1; i < n; ++i)
      if (i & k) l.copy(sendBuf + (used++) * b, rot + i * b, b);
    int to = (me + k) % n, from = (me - k + n) % n;
    l.waitAll({l.isend(to, sendBuf, used * b), l.irecv(from, recvBuf, used * b)});
    size_t got = 0;
    for (int i = 1; i < n; ++i)
      if (i & k) l.copy(rot + i * b, recvBuf + (got++) * b, b);
  }
  // Position i came from rank me - i.
  for (int i = 0; i < n; ++i) l.copy(out + ((me - i + n) % n) * b, rot + i * b, b);
}

}  // namespace algo
}  // namespace hcomm
