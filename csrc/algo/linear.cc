// Linear gather and scatter: the root posts one receive (or send) per rank and lets
// them all run at once.
//
// Cost, n ranks, S bytes per rank: 1 step of n-1 concurrent messages; the root moves
// (n-1)*S bytes;  T ~ alpha + (n-1)*S*beta (bound by the root's link).
// Wins whenever the root's link is the bottleneck anyway (the usual case); a binomial
// tree would only save latency for tiny messages on many ranks.
#include <cstring>

#include "algo/algorithms.h"

namespace hcomm {
namespace algo {

void gatherLinear(Links& l, const void* in, void* outv, size_t count, int root) {
  size_t bytes = count * l.elemSize();
  if (l.rank() != root) {
    l.send(root, in, bytes);
    return;
  }
  char* out = static_cast<char*>(outv);
  std::vector<RequestPtr> recvs;
  for (int p = 0; p < l.size(); ++p)
    if (p != root) recvs.push_back(l.irecv(p, out + p * bytes, bytes));
  if (in != out + root * bytes) l.copy(out + root * bytes, in, bytes);
  l.waitAll(recvs);
}

void scatterLinear(Links& l, const void* inv, void* out, size_t count, int root) {
  size_t bytes = count * l.elemSize();
  if (l.rank() != root) {
    l.recv(root, out, bytes);
    return;
  }
  const char* in = static_cast<const char*>(inv);
  std::vector<RequestPtr> sends;
  for (int p = 0; p < l.size(); ++p)
    if (p != root) sends.push_back(l.isend(p, in + p * bytes, bytes));
  if (out != in + root * bytes) l.copy(out, in + root * bytes, bytes);
  l.waitAll(sends);
}

}  // namespace algo
}  // namespace hcomm
