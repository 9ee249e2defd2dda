#include "topo/native_cost.h"

#include <algorithm>

namespace hcomm {

namespace {

// Bytes a ring moves per rank for `kind`, relative to allreduce's 2(n-1)/n S.
double perByteScale(CollKind kind, int n) {
  if (n <= 1) return 1.0;
  switch (kind) {
    case CollKind::ALLGATHER:
    case CollKind::REDUCE_SCATTER: return 0.5;
    case CollKind::BROADCAST:
    case CollKind::REDUCE: return n / (2.0 * (n - 1));
    default: return 1.0;
  }
}

}  // namespace

double NativeCost::seconds(CollKind kind, size_t bytes, int n) const {
  return alpha + beta * perByteScale(kind, n) * static_cast<double>(bytes);
}

NativeCost fitNativeCost(size_t b1, double t1, size_t b2, double t2) {
  if (b2 <= b1) throw Error("fitNativeCost: the second size must be larger than the first");
  NativeCost c;
  c.beta = std::max(0.0, (t2 - t1) / static_cast<double>(b2 - b1));
  c.alpha = std::max(0.0, t1 - c.beta * static_cast<double>(b1));
  c.measured = true;
  return c;
}

void priceNative(Decision& d, const NativeCost& c, CollKind kind, size_t bytes, int n, const char* engine) {
  if (!c.measured) return;
  auto it = std::find_if(d.candidates.begin(), d.candidates.end(), [](const Candidate& x) { return x.algo == "native"; });
  if (it == d.candidates.end()) {
    d.candidates.push_back(Candidate{"native"});
    it = d.candidates.end() - 1;
  }
  it->seconds = c.seconds(kind, bytes, n);
  it->applicable = true;
  it->inner = engine;  // explain() labels the row the engine's (MPI's native row has no inner)
  if (d.why != "model") return;
  int best = d.chosen;
  for (size_t i = 0; i < d.candidates.size(); ++i)
    if (d.candidates[i].applicable && d.candidates[i].seconds < d.candidates[best].seconds) best = static_cast<int>(i);
  d.chosen = best;
}

bool nativeWins(const NativeCost& c, CollKind kind, size_t bytes, int n, double hcommSeconds) {
  return c.measured && c.seconds(kind, bytes, n) < hcommSeconds;
}

}  // namespace hcomm
