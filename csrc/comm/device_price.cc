// The price of a device engine's own collectives (NCCL on CUDA buffers, HCCL on NPU
// buffers), measured when the engine is set up: the one code path both set-ups use
// (comm/device_nccl.cc, comm/npu_call.cc), so that the two engines are priced alike.
//
// Every rank times the engine's allreduce at two sizes (kProbeSmall, kProbeLarge; the
// median of kProbeIters after a warm-up), unless every rank reads the price from its
// HCOMM_<ENGINE>_COST setting; the ranks exchange their times over the host routes and
// take the slowest rank's, because every rank must decide alike whether a call goes to
// the engine (some calling it and others not would hang). topo/native_cost.h fits the
// line through the two points and prices each collective from it.
//
// Cost: 2 x (1 + kProbeIters) engine allreduces of 8 KiB and 2 MiB, two small host
// allgathers (channels `channel` and `channel` + 4); once per communicator and engine.
#include <algorithm>
#include <cstdio>

#include "algo/algorithms.h"
#include "comm/communicator.h"
#include "common/param.h"
#include "topo/topology.h"

namespace hcomm {

namespace {

constexpr size_t kProbeSmall = 8 << 10, kProbeLarge = 2 << 20;  // the two timed allreduce sizes
constexpr int kProbeIters = 5;

// Median seconds of `allreduce(buf, bytes)` (which returns when the engine is done).
double timeAllreduce(const Memory& mem, size_t bytes, const std::function<void(void*, size_t)>& allreduce) {
  std::shared_ptr<char> buf = mem.alloc(bytes);
  std::vector<double> times;
  for (int i = 0; i <= kProbeIters; ++i) {  // the first is a warm-up
    auto t0 = std::chrono::steady_clock::now();
    allreduce(buf.get(), bytes);
    if (i) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

// `var`="<alpha us>,<GB/s>" replaces the timing (tests, simulation); false when unset.
bool costFromEnv(const std::string& var, double* small, double* large) {
  std::string v = envStr(var.c_str());
  if (v.empty()) return false;
  double alphaUs = 0, gbps = 0;
  char extra = 0;
  if (std::sscanf(v.c_str(), "%lf,%lf%c", &alphaUs, &gbps, &extra) != 2 || alphaUs < 0 || gbps <= 0)
    throw Error(var + " must be '<latency in us>,<allreduce bandwidth in GB/s>', e.g. '20,100', not '" + v + "'");
  *small = alphaUs * 1e-6 + kProbeSmall / (gbps * 1e9);
  *large = alphaUs * 1e-6 + kProbeLarge / (gbps * 1e9);
  return true;
}

}  // namespace

NativeCost Communicator::priceDeviceEngine(const std::string& costVar, const Memory& mem, uint64_t tagBase,
                                           int channel, std::chrono::steady_clock::time_point deadline,
                                           const std::function<void(void*, size_t)>& allreduce) {
  // HCOMM_DETERMINISTIC=1 (job-wide) never hands a call to an engine by price, so its
  // set-up times nothing (as MPI's init probe): native only when asked for.
  if (deterministicMode()) return NativeCost();
  // The timing is collective (an engine allreduce), so the ranks first agree on whether
  // to time: [bad setting, given, small, large] from every rank. A setting a rank cannot
  // read raises on every rank; the given price replaces the timing only where every
  // rank gives one (the slowest is taken either way).
  double mine[4] = {0, 0, 0, 0};
  std::string bad;
  try {
    mine[1] = costFromEnv(costVar, &mine[2], &mine[3]) ? 1 : 0;
  } catch (const Error& e) {
    bad = e.what();
    mine[0] = 1;
  }
  auto exchange = [&](int ch, const double* in, size_t k) {
    std::vector<double> all(k * size_);
    Links host(rank_, size_, linkRoutes_, tagBase + ch, 0, DataType::U8, ReduceOp::SUM, deadline, world_->policy,
               [] { return std::string("device engine cost probe"); });
    if (size_ > 1) algo::allgathervRing(host, in, all.data(), std::vector<size_t>(size_, k * sizeof(double)));
    else std::copy(in, in + k, all.begin());
    return all;
  };
  std::vector<double> all = exchange(channel, mine, 4);
  bool everyGiven = true;
  for (int r = 0; r < size_; ++r) {
    if (all[4 * r] != 0)
      throw Error(!bad.empty() ? bad
                               : "rank " + std::to_string(r) + " could not read its " + costVar + " (its error says why)");
    everyGiven = everyGiven && all[4 * r + 1] != 0;
  }
  std::vector<double> times(2 * size_);
  if (everyGiven) {
    for (int r = 0; r < size_; ++r) std::copy(&all[4 * r + 2], &all[4 * r + 4], &times[2 * r]);
  } else {
    double t[2] = {timeAllreduce(mem, kProbeSmall, allreduce), timeAllreduce(mem, kProbeLarge, allreduce)};
    times = exchange(channel + 4, t, 2);
  }
  double slowest[2] = {0, 0};
  for (int r = 0; r < size_; ++r)
    for (int k = 0; k < 2; ++k) slowest[k] = std::max(slowest[k], times[2 * r + k]);
  return fitNativeCost(kProbeSmall, slowest[0], kProbeLarge, std::max(slowest[1], slowest[0]));
}

}  // namespace hcomm
