// Dissemination barrier: in round k rank r signals r + 2^k and waits for r - 2^k.
// After ceil(log2 n) rounds every rank has heard, directly or not, from every other.
//
// Cost: ceil(log2 n) steps of empty messages;  T ~ ceil(log2 n) * alpha.
// Wins always for a barrier (no root to serialise on).
#include "algo/algorithms.h"

namespace hcomm {
namespace algo {

void barrierDissemination(Links& l) {
  int n = l.size(), r = l.rank();
  for (int k = 1; k < n; k <<= 1) {
    RequestPtr s = l.isend((r + k) % n, nullptr, 0);
    RequestPtr q = l.irecv((r - k + n) % n, nullptr, 0);
    l.waitAll({s, q});
  }
}

}  // namespace algo
}  // namespace hcomm
