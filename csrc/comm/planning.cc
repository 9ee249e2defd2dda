// Planning: which algorithm a call of this communicator runs. The tuner (topo/tuner.h)
// prices the candidates; the policy (topo/policy.h) applies what the user forces; MPI's
// own collectives are added when this communicator mirrors an MPI one.
#include <functional>

#include "comm/communicator.h"
#include "algo/names.h"
#include "comm/native_call.h"
#include "comm/placement.h"
#include "topo/policy.h"
#include "topo/topology.h"

namespace hcomm {

std::string Communicator::chooseAllreduce(size_t bytes, const std::string& requested) const {
  return planAllreduce(bytes, requested).choice().algo;
}

Decision Communicator::planAllreduce(size_t bytes, const std::string& requested, Fold fold) const {
  bool asked = !requested.empty() && requested != "auto";
  if (!world_) throw Error("communicator is closed");
  std::string forced = asked ? canonicalAlgorithm("allreduce", requested)
                             : forcedByEnv("allreduce", allreduceAlgorithms(), world_->tuner != nullptr);
  if (forced == "native") {  // MPI's own allreduce (algo/native_mpi.h), NCCL's on device buffers
    if (!currentPlacement().onDevice()) requireMpi(mpi_, "allreduce");
    Decision d;
    d.candidates = {Candidate{"native"}};
    d.why = asked ? "requested" : "HCOMM_ALGO";
    return d;
  }
  if (!world_->tuner) {  // during create, before the topology exists: only explicit requests
    if (!asked) throw Error("allreduce during init needs an explicit algorithm");
    Decision d;
    d.candidates = {Candidate{requested}};
    d.why = "requested";
    return d;
  }
  Decision d = world_->tuner->allreduce(worldRanks_, bytes, forced, asked ? "requested" : "HCOMM_ALGO", fold);
  // Not under HCOMM_DETERMINISTIC=1: MPI's allreduce cannot promise the rank-order sum.
  if ((forced.empty() || forced == "auto") && mpi_ && size_ > 1 && !deterministicMode() && nativeBySize(bytes)) {  // the site's size rule for MPI's own
    d.candidates.push_back(Candidate{"native"});
    d.chosen = static_cast<int>(d.candidates.size()) - 1;
    d.why = "HCOMM_NATIVE_BYTES";
  }
  return d;
}

namespace {

// an explicit request before the tuner exists (init), else the tuner's decision.
Decision planWith(const std::string& collective, const std::vector<std::string>& names, const std::string& requested,
                  const std::shared_ptr<MpiComm>& mpi, bool tunerReady,
                  const std::function<Decision(const std::string& forced, const std::string& why)>& tune) {
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
  if (mpi) {  // listed, chosen only when forced: the model has no cost for MPI's own algorithms
    Candidate nat{"native"};
    nat.applicable = false;
    d.candidates.push_back(nat);
  }
  return d;
}


}  // namespace

Decision Communicator::planBroadcast(size_t bytes, int root, const std::string& requested) const {
  if (!world_) throw Error("communicator is closed");
  if (root < 0 || root >= size_)
    throw Error("broadcast root " + std::to_string(root) + " is out of range for size " + std::to_string(size_));
  return planWith("broadcast", broadcastAlgorithms(), requested, mpi_, world_->tuner != nullptr,
                  [&](const std::string& forced, const std::string& why) {
                    return world_->tuner->broadcast(worldRanks_, bytes, root, forced, why);
                  });
}

Decision Communicator::planAllgather(size_t bytes, const std::string& requested) const {
  if (!world_) throw Error("communicator is closed");
  return planWith("allgather", allgatherAlgorithms(), requested, mpi_, world_->tuner != nullptr,
                  [&](const std::string& forced, const std::string& why) {
                    return world_->tuner->allgather(worldRanks_, bytes, forced, why);
                  });
}

Decision Communicator::planReduceScatter(size_t bytes, const std::string& requested, Fold fold) const {
  if (!world_) throw Error("communicator is closed");
  return planWith("reduce_scatter", reduceScatterAlgorithms(), requested, mpi_, world_->tuner != nullptr,
                  [&](const std::string& forced, const std::string& why) {
                    return world_->tuner->reduceScatter(worldRanks_, bytes, forced, why, fold);
                  });
}

Decision Communicator::planReduce(size_t bytes, int root, const std::string& requested, Fold fold) const {
  if (!world_) throw Error("communicator is closed");
  if (root < 0 || root >= size_)
    throw Error("reduce root " + std::to_string(root) + " is out of range for size " + std::to_string(size_));
  return planWith("reduce", reduceAlgorithms(), requested, mpi_, world_->tuner != nullptr,
                  [&](const std::string& forced, const std::string& why) {
                    return world_->tuner->reduce(worldRanks_, bytes, root, forced, why, fold);
                  });
}

Decision Communicator::planGather(const std::string& collective, size_t bytes, int root,
                                  const std::string& requested) const {
  if (!world_) throw Error("communicator is closed");
  if (root < 0 || root >= size_)
    throw Error(collective + " root " + std::to_string(root) + " is out of range for size " + std::to_string(size_));
  return planWith(collective, gatherAlgorithms(), requested, nullptr, world_->tuner != nullptr,  // no native gather
                  [&](const std::string& forced, const std::string& why) {
                    return world_->tuner->gather(worldRanks_, collective, bytes, root, forced, why);
                  });
}

Decision Communicator::planAlltoall(size_t bytes, bool even, const std::string& requested) const {
  if (!world_) throw Error("communicator is closed");
  bool asked = !requested.empty() && requested != "auto";
  Decision d = planWith("alltoall", alltoallAlgorithms(), requested, nullptr, world_->tuner != nullptr,
                        [&](const std::string& forced, const std::string& why) {
                          return world_->tuner->alltoall(worldRanks_, bytes, even, forced, why);
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
