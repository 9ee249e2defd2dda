// The native candidate's price: a short timed probe of MPI's own collectives at init.
//
// Each collective MPI does for hcomm (allreduce, broadcast, allgather, reduce_scatter,
// reduce) runs at two sizes, a latency size and a bandwidth size, a few times each after
// a warm-up; the median per rank, then the slowest rank's (an MPI MAX over every rank,
// so every rank fits the same line and prices native alike: the ranks keep choosing the
// same algorithm). alpha = the small time, beta = the slope between the two sizes.
// About 2 x 5 x (1 + kReps) calls: a few milliseconds on one host.
#include <algorithm>
#include <chrono>
#include <vector>

#include "algo/native_mpi.h"

namespace hcomm {
namespace algo {

namespace {

constexpr int kReps = 3;
constexpr size_t kSmall = 8, kLarge = 256u << 10;  // bytes of the whole message
const char* const kCollectives[] = {"allreduce", "broadcast", "allgather", "reduce_scatter", "reduce"};

// One call of `collective` over `bytes` (float32) on `c`, with scratch from `a`/`b`.
void runOnce(const MpiComm& c, const std::string& collective, size_t bytes, int n, std::vector<float>& a,
             std::vector<float>& b, const NativeWait& w) {
  size_t count = bytes / sizeof(float), per = std::max<size_t>(1, count / n);
  if (collective == "allreduce") allreduceNative(c, a.data(), b.data(), count, DataType::F32, ReduceOp::SUM, w);
  else if (collective == "broadcast") broadcastNative(c, a.data(), count, DataType::F32, 0, w);
  else if (collective == "allgather") allgathervNative(c, a.data(), b.data(), std::vector<size_t>(n, per), DataType::F32, w);
  else if (collective == "reduce_scatter")
    reduceScattervNative(c, a.data(), b.data(), std::vector<size_t>(n, per), DataType::F32, ReduceOp::SUM, w);
  else reduceNative(c, a.data(), b.data(), count, DataType::F32, ReduceOp::SUM, 0, w);
}

double medianSeconds(const MpiComm& c, const std::string& collective, size_t bytes, int n, std::vector<float>& a,
                     std::vector<float>& b, const NativeWait& w) {
  runOnce(c, collective, bytes, n, a, b, w);  // warm-up: connections, first touch
  std::vector<double> t;
  for (int i = 0; i < kReps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    runOnce(c, collective, bytes, n, a, b, w);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

std::vector<NativeTiming> probeNativeMpi(const MpiComm& c, int n, const NativeWait& w) {
  std::vector<float> a(kLarge / sizeof(float) * 2, 1.0f), b(kLarge / sizeof(float) * 2, 0.0f);
  std::vector<double> times;  // small, large per collective
  for (const char* coll : kCollectives) {
    times.push_back(medianSeconds(c, coll, kSmall, n, a, b, w));
    times.push_back(medianSeconds(c, coll, kLarge, n, a, b, w));
  }
  std::vector<double> agreed(times.size());
  allreduceNative(c, times.data(), agreed.data(), times.size(), DataType::F64, ReduceOp::MAX, w);
  std::vector<NativeTiming> out;
  for (size_t i = 0; i < std::size(kCollectives); ++i) {
    double small = agreed[2 * i], large = agreed[2 * i + 1];
    out.push_back({kCollectives[i], small, std::max(0.0, (large - small) / double(kLarge - kSmall))});
  }
  return out;
}

}  // namespace algo
}  // namespace hcomm
