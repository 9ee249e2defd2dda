// Planning: which algorithm a call of this communicator runs. The tuner (topo/tuner.h)
// prices the candidates; the policy (topo/policy.h) applies what the user forces; MPI's
// own collectives are added when this communicator mirrors an MPI one.
#include <functional>

#include "comm/communicator.h"
#include "algo/names.h"
#include "comm/native_call.h"
#include "comm/placement.h"
#include "topo/policy.h"
#include "common/param.h"
#include "topo/topology.h"

namespace hcomm {

void addNative(Decision& d, const std::string& collective, size_t bytes, int n, const Tuner& tuner, Fold fold,
               bool automatic);
void withMeasured(Decision& d, const std::string& collective, size_t bytes, const DriftMonitor& drift);

std::string Communicator::chooseAllreduce(size_t bytes, const std::string& requested) const {
  return planAllreduce(bytes, requested).choice().algo;
}

Decision Communicator::planAllreduce(size_t bytes, const std::string& requested, Fold fold) const {
  bool asked = !requested.empty() && requested != "auto";
  if (!world_) throw Error("communicator is closed");
  std::shared_ptr<const Tuner> tuner = this->tuner();
  std::string forced = asked ? canonicalAlgorithm("allreduce", requested)
                             : forcedByEnv("allreduce", allreduceAlgorithms(), tuner != nullptr);
  if (forced == "native") {  // MPI's own allreduce (algo/native_mpi.h), NCCL's on device buffers
    if (!currentPlacement().onDevice()) requireMpi(mpi_, "allreduce");
    Decision d;
    d.candidates = {Candidate{"native"}};
    d.why = asked ? "requested" : "HCOMM_ALGO";
    return d;
  }
  if (!tuner) {  // during create, before the topology exists: only explicit requests
    if (!asked) throw Error("allreduce during init needs an explicit algorithm");
    Decision d;
    d.candidates = {Candidate{requested}};
    d.why = "requested";
    return d;
  }
  Decision d = tuner->allreduce(worldRanks_, bytes, forced, asked ? "requested" : "HCOMM_ALGO", fold);
  if (mpi_) addNative(d, "allreduce", bytes, size_, *tuner, fold, forced.empty() || forced == "auto");
  withMeasured(d, "allreduce", bytes, *drift_);
  return d;
}

// explain(): each candidate's recent measured time beside its prediction.
void withMeasured(Decision& d, const std::string& collective, size_t bytes, const DriftMonitor& drift) {
  for (Candidate& c : d.candidates) c.measured = drift.measuredFor(collective, c.algo, bytes);
}

// MPI's own collective as a candidate, priced from the init probe (algo/native_mpi_probe.cc).
// Chosen by the model when cheapest, unless the reduction is an ordered fold (MPI folds
// in its own order, and 16-bit partials in 16 bits) or HCOMM_DETERMINISTIC=1 (choices
// from fixed constants only). HCOMM_NATIVE_BYTES, when set, is an explicit override for
// allreduce: inside its range native is chosen, outside it never automatically.
void addNative(Decision& d, const std::string& collective, size_t bytes, int n, const Tuner& tuner, Fold fold,
               bool automatic) {
  Candidate nat{"native"};
  const NativeCosts* costs = tuner.native();
  nat.seconds = costs ? costs->seconds(collective, static_cast<double>(bytes), n) : -1;
  bool rangeSet = collective == "allreduce" && !envStr("HCOMM_NATIVE_BYTES").empty();
  // Device buffers never go to MPI's own collectives here: their native engine is NCCL,
  // priced where the call runs (comm/device_nccl.cc).
  bool allowed = n > 1 && fold == Fold::PLAIN && !deterministicMode() && !currentPlacement().onDevice();
  nat.applicable = allowed && (rangeSet ? nativeBySize(bytes) : nat.seconds >= 0);
  if (nat.seconds < 0) nat.seconds = 0;  // unmeasured: listed, chosen only when forced
  d.candidates.push_back(nat);
  if (!automatic || !nat.applicable) return;
  if (rangeSet) {
    d.chosen = static_cast<int>(d.candidates.size()) - 1;
    d.why = "HCOMM_NATIVE_BYTES";
  } else if (nat.seconds < d.choice().seconds || !d.choice().applicable) {
    d.chosen = static_cast<int>(d.candidates.size()) - 1;
  }
}

std::shared_ptr<const NativeCosts> measureNativeCosts(const std::shared_ptr<MpiComm>& mpi, int size,
                                                      double timeoutSec, const WaitPolicy& policy) {
  // HCOMM_DETERMINISTIC=1 decides from fixed constants only, and never picks native.
  if (!mpi || size < 2 || deterministicMode() || envStr("HCOMM_NATIVE_PROBE", "1") == "0") return nullptr;
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeoutSec));
  auto costs = std::make_shared<NativeCosts>();
  costs->ranks = size;
  for (const algo::NativeTiming& t : algo::probeNativeMpi(*mpi, size, NativeWait{deadline, policy, "native probe"}))
    costs->byCollective[t.collective] = LinkCost{t.alpha, t.beta};
  return costs;
}

namespace {

// an explicit request before the tuner exists (init), else the tuner's decision.
Decision planWith(const std::string& collective, const std::vector<std::string>& names, const std::string& requested,
                  const std::shared_ptr<MpiComm>& mpi, const Tuner* tuner, int n, size_t bytes, Fold fold,
                  const DriftMonitor& drift,
                  const std::function<Decision(const std::string& forced, const std::string& why)>& tune) {
  bool tunerReady = tuner != nullptr;
  bool asked = !requested.empty() && requested != "auto";
  std::string forced = asked ? canonicalAlgorithm(collective, requested) : forcedByEnv(collective, names, tunerReady);
  std::string why = asked ? "requested" : "HCOMM_ALGO";
  if (forced == "native") {
    if (!currentPlacement().onDevice()) requireMpi(mpi, collective);
    Decision d;
    d.candidates = {Candidate{"native"}};
    d.why = why;
    return d;
  }
  if (!tunerReady) {  // during create, before the topology exists: the flat algorithm
    Decision d;
    d.candidates = {Candidate{names[0]}};
    d.why = "init";
    return d;
  }
  Decision d = tune(forced, why);
  if (mpi) addNative(d, collective, bytes, n, *tuner, fold, forced.empty() || forced == "auto");
  withMeasured(d, collective, bytes, drift);
  return d;
}


}  // namespace

Decision Communicator::planBroadcast(size_t bytes, int root, const std::string& requested) const {
  if (!world_) throw Error("communicator is closed");
  std::shared_ptr<const Tuner> tuner = this->tuner();
  if (root < 0 || root >= size_)
    throw Error("broadcast root " + std::to_string(root) + " is out of range for size " + std::to_string(size_));
  return planWith("broadcast", broadcastAlgorithms(), requested, mpi_, tuner.get(), size_, bytes, Fold::PLAIN, *drift_,
                  [&](const std::string& forced, const std::string& why) {
                    return tuner->broadcast(worldRanks_, bytes, root, forced, why);
                  });
}

Decision Communicator::planAllgather(size_t bytes, const std::string& requested) const {
  if (!world_) throw Error("communicator is closed");
  std::shared_ptr<const Tuner> tuner = this->tuner();
  return planWith("allgather", allgatherAlgorithms(), requested, mpi_, tuner.get(), size_, bytes, Fold::PLAIN, *drift_,
                  [&](const std::string& forced, const std::string& why) {
                    return tuner->allgather(worldRanks_, bytes, forced, why);
                  });
}

Decision Communicator::planReduceScatter(size_t bytes, const std::string& requested, Fold fold) const {
  if (!world_) throw Error("communicator is closed");
  std::shared_ptr<const Tuner> tuner = this->tuner();
  return planWith("reduce_scatter", reduceScatterAlgorithms(), requested, mpi_, tuner.get(), size_, bytes, fold, *drift_,
                  [&](const std::string& forced, const std::string& why) {
                    return tuner->reduceScatter(worldRanks_, bytes, forced, why, fold);
                  });
}

Decision Communicator::planReduce(size_t bytes, int root, const std::string& requested, Fold fold) const {
  if (!world_) throw Error("communicator is closed");
  std::shared_ptr<const Tuner> tuner = this->tuner();
  if (root < 0 || root >= size_)
    throw Error("reduce root " + std::to_string(root) + " is out of range for size " + std::to_string(size_));
  return planWith("reduce", reduceAlgorithms(), requested, mpi_, tuner.get(), size_, bytes, fold, *drift_,
                  [&](const std::string& forced, const std::string& why) {
                    return tuner->reduce(worldRanks_, bytes, root, forced, why, fold);
                  });
}

Decision Communicator::planGather(const std::string& collective, size_t bytes, int root,
                                  const std::string& requested) const {
  if (!world_) throw Error("communicator is closed");
  std::shared_ptr<const Tuner> tuner = this->tuner();
  if (root < 0 || root >= size_)
    throw Error(collective + " root " + std::to_string(root) + " is out of range for size " + std::to_string(size_));
  return planWith(collective, gatherAlgorithms(), requested, nullptr, tuner.get(), size_, bytes,  // no native gather
                  Fold::PLAIN, *drift_,
                  [&](const std::string& forced, const std::string& why) {
                    return tuner->gather(worldRanks_, collective, bytes, root, forced, why);
                  });
}

Decision Communicator::planAlltoall(size_t bytes, bool even, const std::string& requested) const {
  if (!world_) throw Error("communicator is closed");
  std::shared_ptr<const Tuner> tuner = this->tuner();
  bool asked = !requested.empty() && requested != "auto";
  Decision d = planWith("alltoall", alltoallAlgorithms(), requested, nullptr, tuner.get(), size_, bytes,
                        Fold::PLAIN, *drift_,
                        [&](const std::string& forced, const std::string& why) {
                          return tuner->alltoall(worldRanks_, bytes, even, forced, why);
                        });
  if (d.choice().algo == "bruck" && !even) {
    // Bruck moves equal blocks only: a request is refused, HCOMM_ALGO (job-wide) yields here.
    if (asked) throw Error("alltoallv: algorithm 'bruck' needs equal counts in rank order (use 'pairwise')");
    d.chosen = 0;
    d.why = "HCOMM_ALGO (bruck needs equal blocks)";
  }
  return d;
}

}  // namespace hcomm
