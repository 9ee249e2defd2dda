// One entry point per collective: validate, pick the algorithm (planning.cc), and submit
// a body that runs it on a Links (engine.h). AVG and PREMUL_SUM become SUM here, with a
// scale before or after, so algorithms see SUM, PROD, MIN or MAX only.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "algo/algorithms.h"
#include "algo/native_hccl.h"
#include "comm/engine.h"
#include "comm/native_call.h"
#include "comm/placement.h"
#include "algo/native_nccl.h"
#include "reduce/reduce.h"
#include "topo/policy.h"
#include "topo/topology.h"

namespace hcomm {

namespace {

// AVG and PREMUL_SUM are SUM with a scale before or after.
// Both run in the collective's memory (host or device), through its Links.
void prescale(const Links& l, DataType dt, ReduceOp op, double premul, const void*& in, void* tmp, size_t count) {
  if (op != ReduceOp::PREMUL_SUM) return;
  l.memory().scale(dt, tmp, in, count, premul);
  in = tmp;
}

void postscale(const Links& l, DataType dt, ReduceOp op, int n, void* out, size_t count) {
  if (op == ReduceOp::AVG) l.memory().divide(dt, out, out, count, n);
}

// How the tuner should price a reduction's arithmetic (topo/tuner.h).
Fold foldOf(DataType dt, bool ordered) {
  if (!ordered) return Fold::PLAIN;
  return dt == DataType::F16 || dt == DataType::BF16 ? Fold::ORDERED_WIDE : Fold::ORDERED;
}

}  // namespace

template <class Plan>
Candidate Communicator::pick(CollKind kind, size_t bytes, int root, const std::string& requested, const Plan& plan) {
  // HCOMM_ALGO (and HCOMM_NATIVE_BYTES under MPI) are read at every call, as documented;
  // the model's choice per (collective, size, root) is remembered while they stay the
  // same. Explicit requests are rare in hot loops and take the full path.
  const char* env = std::getenv("HCOMM_ALGO");
  const char* native = mpi_ ? std::getenv("HCOMM_NATIVE_BYTES") : nullptr;
  bool cacheable = (requested.empty() || requested == "auto") && world_ && world_->tuner;
  // Host and device calls plan apart (MPI's own collectives are candidates on host only).
  auto key = std::make_tuple(static_cast<int>(kind), bytes, root, currentPlacement().onDevice());
  auto planned = [&] {
    Candidate c = plan().choice();
    c.segBytes = resolvedSegment(kind, c.algo, c.segBytes);
    if (kind == CollKind::ALLREDUCE && !c.inner.empty()) c.innerSegBytes = resolvedSegment(kind, c.inner, c.innerSegBytes);
    if (cacheable) {
      std::lock_guard<std::mutex> lock(planMu_);
      if (plans_.size() >= 1024) plans_.clear();  // many distinct sizes: start over rather than grow
      plans_.emplace(key, c);
    }
    return c;
  };
  Candidate c;
  bool found = false;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(planMu_);
    if (planEnv_ != (env ? env : "") || planNative_ != (native ? native : "")) {
      plans_.clear();
      planEnv_ = env ? env : "";
      planNative_ = native ? native : "";
    }
    auto it = plans_.find(key);
    if ((found = it != plans_.end())) c = it->second;
  }
  if (!found) c = planned();
  if (noteDrift(kind, bytes, root, c)) c = planned();  // re-fitted at this checkpoint: plan again
  return c;
}

namespace {

// One flat allreduce algorithm with its segment size.
struct FlatChoice {
  enum Kind { NONE, RING, TREE, HALVING_DOUBLING } kind = NONE;
  size_t seg = 0;

  // `algo`: a flat allreduce of the table of names (algo/names.h), or none ("", "native":
  // an ordered hierarchical allreduce runs no flat one); anything else is a bug upstream
  // (planning checked the name), so it raises rather than run something else.
  static FlatChoice of(const std::string& algo, size_t seg) {
    FlatChoice f;
    if (algo == "ring") f.kind = RING;
    else if (algo == "tree") f.kind = TREE;
    else if (algo == "halving_doubling") f.kind = HALVING_DOUBLING;
    else if (!algo.empty() && algo != "native")
      throw Error("allreduce: no flat algorithm '" + algo + "' (ring, tree, halving_doubling)");
    f.seg = seg;
    return f;
  }
  void operator()(Links& l, const void* in, void* out, size_t count) const {
    if (kind == RING) algo::allreduceRing(l, in, out, count, seg);
    else if (kind == TREE) algo::allreduceTree(l, in, out, count, seg);
    else if (kind == HALVING_DOUBLING) algo::allreduceHalvingDoubling(l, in, out, count);
    else throw Error("allreduce: no flat algorithm was planned");
  }
};

}  // namespace

WorkPtr Communicator::allreduce(const void* in, void* out, size_t count, DataType dt, ReduceOp op, double premul,
                                const std::string& algo, bool async) {
  checkUsable();
  size_t bytes = count * dtypeSize(dt);
  bool ordered = orderedReduction(dt, op);
  bool rankOrder = deterministicMode();  // else a fold takes contributions as they arrive
  Fold fold = foldOf(dt, ordered);
  // The plan cache keys allreduce by its fold in the root slot (-1 plain, -2, -3).
  int key = -1 - static_cast<int>(fold);
  Candidate pick = this->pick(CollKind::ALLREDUCE, bytes, key, algo, [&] { return planAllreduce(bytes, algo, fold); });
  if (pick.algo == "native") refuseNativeIfDeterministic("allreduce", dt, op);
  CollectiveInfo info{"allreduce", CollKind::ALLREDUCE, dt, count, -1, pick.algo, op};
  bool hier = pick.algo == "hierarchical";
  FlatChoice run = FlatChoice::of(hier ? pick.inner : pick.algo, hier ? pick.innerSegBytes : pick.segBytes);
  std::vector<std::vector<int>> levels;
  if (hier) levels = CommShape::of(*world_->topology, worldRanks_).levels();
  int n = size_;
  bool native = pick.algo == "native";
  NativeChoice viaNative = nativeChoice(CollKind::ALLREDUCE, bytes, pick, algo);
  NativeCall nat = nativeCall(native && !currentPlacement().onDevice(), mpi_, "allreduce", timeoutSec_,
                              world_->policy, [&] { return describe(info, nextSeq_, "native mpi"); });
  return submit(info, false, 0, [=, levels = std::move(levels)](Links& l, Work&) {
    if (count == 0) return;
    if (runOnHccl(l, viaNative, HcclCall{CollKind::ALLREDUCE, in, out, count, dt, op, premul})) return;
    if (runOnNccl(l, viaNative, [&](NcclTransport& nc, void* s) {
          algo::allreduceNccl(nc, in, out, count, dt, op, premul, s);
        }))
      return;
    l.setOrdered(ordered);
    l.setRankOrder(rankOrder);
    const void* src = in;
    if (op == ReduceOp::PREMUL_SUM) prescale(l, dt, op, premul, src, out, count);  // scaled copy into out
    if (n == 1) {
      l.copy(out, src, count * dtypeSize(dt));
    } else if (nat) {
      algo::allreduceNative(*nat.comm, src, out, count, dt, l.op(), nat.wait());
    } else if (hier) {
      algo::allreduceHierarchical(l, src, out, count, levels, run);
    } else {
      run(l, src, out, count);
    }
    postscale(l, dt, op, n, out, count);
  }, async);
}

WorkPtr Communicator::reduce(const void* in, void* out, size_t count, DataType dt, ReduceOp op, double premul,
                             int root, const std::string& algo, bool async) {
  checkUsable();
  checkRoot(root, "root");
  size_t bytes = count * dtypeSize(dt);
  bool ordered = orderedReduction(dt, op);
  bool rankOrder = deterministicMode();  // else a fold takes contributions as they arrive
  Fold fold = foldOf(dt, ordered);
  // The plan cache keys reduce by root and fold together in its root slot.
  Candidate pick = this->pick(CollKind::REDUCE, bytes, 3 * root + static_cast<int>(fold), algo,
                              [&] { return planReduce(bytes, root, algo, fold); });
  if (pick.algo == "native") refuseNativeIfDeterministic("reduce", dt, op);
  CollectiveInfo info{"reduce", CollKind::REDUCE, dt, count, root, pick.algo, op};
  bool native = pick.algo == "native";
  NativeChoice viaNative = nativeChoice(CollKind::REDUCE, bytes, pick, algo);
  NativeCall nat = nativeCall(native && !currentPlacement().onDevice(), mpi_, "reduce", timeoutSec_,
                              world_->policy, [&] { return describe(info, nextSeq_, "native mpi"); });
  size_t seg = segmentBytes("HCOMM_TREE_SEGMENT_BYTES", pick.segBytes ? pick.segBytes : 512u << 10);
  bool rsg = pick.algo == "reduce_scatter_gather";
  int n = size_, me = rank_;
  return submit(info, false, 0, [=](Links& l, Work&) {
    if (count == 0) return;
    if (runOnHccl(l, viaNative, HcclCall{CollKind::REDUCE, in, out, count, dt, op, premul, root})) return;
    if (runOnNccl(l, viaNative, [&](NcclTransport& nc, void* s) {
          algo::reduceNccl(nc, in, out, count, dt, op, premul, root, s);
        }))
      return;
    l.setOrdered(ordered);
    l.setRankOrder(rankOrder);
    const void* src = in;
    if (op == ReduceOp::PREMUL_SUM) prescale(l, dt, op, premul, src, l.scratch(count * dtypeSize(dt)), count);
    if (n == 1) {
      l.copy(out, src, count * dtypeSize(dt));
    } else if (nat) {
      algo::reduceNative(*nat.comm, src, out, count, dt, l.op(), root, nat.wait());
    } else if (rsg) {
      algo::reduceOrdered(l, src, out, count, root);  // any op: the owners fold in rank order
    } else {
      algo::reduceBinomial(l, src, out, count, root, seg);
    }
    if (me == root) postscale(l, dt, op, n, out, count);
  }, async);
}

WorkPtr Communicator::broadcast(const void* in, void* out, size_t count, DataType dt, int root,
                                const std::string& algo, bool async) {
  checkUsable();
  checkRoot(root, "root");
  size_t bytes = count * dtypeSize(dt);
  Candidate choice = this->pick(CollKind::BROADCAST, bytes, root, algo, [&] { return planBroadcast(bytes, root, algo); });
  const std::string& pick = choice.algo;
  CollectiveInfo info{"broadcast", CollKind::BROADCAST, dt, count, root, pick, ReduceOp::SUM};
  bool native = pick == "native";
  NativeChoice viaNative = nativeChoice(CollKind::BROADCAST, bytes, choice, algo);
  NativeCall nat = nativeCall(native && !currentPlacement().onDevice(), mpi_, "broadcast", timeoutSec_,
                              world_->policy, [&] { return describe(info, nextSeq_, "native mpi"); });
  size_t seg = choice.segBytes;
  std::vector<std::vector<int>> levels;
  if (pick == "hierarchical") levels = CommShape::of(*world_->topology, worldRanks_).levels();
  int me = rank_, n = size_;
  return submit(info, false, 0, [=](Links& l, Work&) {
    if (count == 0) return;
    if (runOnHccl(l, viaNative, HcclCall{CollKind::BROADCAST, in, out, count, dt, ReduceOp::SUM, 1, root})) return;
    if (runOnNccl(l, viaNative, [&](NcclTransport& nc, void* s) {
          algo::broadcastNccl(nc, me == root && in ? in : out, out, count, dt, root, s);
        }))
      return;
    if (me == root && in) l.copy(out, in, count * dtypeSize(dt));
    if (n == 1) return;
    if (nat) algo::broadcastNative(*nat.comm, out, count, dt, root, nat.wait());
    else if (!levels.empty()) algo::broadcastHierarchical(l, out, count, root, levels, seg);
    else algo::broadcastBinomial(l, out, count, root, seg);
  }, async);
}

WorkPtr Communicator::allgatherv(const void* in, void* out, std::vector<size_t> counts, DataType dt, bool async,
                                 const std::string& algo) {
  checkUsable();
  if (static_cast<int>(counts.size()) != size_)
    throw Error("allgatherv: " + std::to_string(counts.size()) + " counts for " + std::to_string(size_) + " ranks");
  size_t total = std::accumulate(counts.begin(), counts.end(), size_t(0));
  size_t bytes = total * dtypeSize(dt);
  Candidate choice = this->pick(CollKind::ALLGATHER, bytes, -1, algo, [&] { return planAllgather(bytes, algo); });
  const std::string& pick = choice.algo;
  CollectiveInfo info{"allgather", CollKind::ALLGATHER, dt, total, -1, pick, ReduceOp::SUM};
  bool native = pick == "native";
  NativeChoice viaNative = nativeChoice(CollKind::ALLGATHER, bytes, choice, algo);
  bool even = std::all_of(counts.begin(), counts.end(), [&](size_t c) { return c == counts[0]; });
  NativeCall nat = nativeCall(native && !currentPlacement().onDevice(), mpi_, "allgather", timeoutSec_,
                              world_->policy, [&] { return describe(info, nextSeq_, "native mpi"); });
  size_t seg = choice.segBytes;
  std::vector<std::vector<int>> levels;
  if (pick == "hierarchical") levels = CommShape::of(*world_->topology, worldRanks_).levels();
  bool bruck = pick == "bruck";
  int n = size_;
  return submit(info, false, 0, [=](Links& l, Work&) {
    if (total == 0) return;
    if (even && runOnHccl(l, viaNative, HcclCall{CollKind::ALLGATHER, in, out, counts[0], dt})) return;
    if (even && runOnNccl(l, viaNative, [&](NcclTransport& nc, void* s) {  // NCCL's is equal counts only
          algo::allgatherNccl(nc, in, out, counts[0], dt, s);
        }))
      return;
    if (n == 1) {
      l.copy(out, in, total * dtypeSize(dt));
      return;
    }
    if (nat) algo::allgathervNative(*nat.comm, in, out, counts, dt, nat.wait());
    else if (!levels.empty()) algo::allgathervHierarchical(l, in, out, counts, levels, seg);
    else if (bruck) algo::allgathervBruck(l, in, out, counts);
    else algo::allgathervRing(l, in, out, counts);
  }, async);
}

WorkPtr Communicator::reduceScatterv(const void* in, void* out, std::vector<size_t> counts, DataType dt, ReduceOp op,
                                     double premul, bool async, const std::string& algo) {
  checkUsable();
  if (static_cast<int>(counts.size()) != size_)
    throw Error("reduce_scatterv: " + std::to_string(counts.size()) + " counts for " + std::to_string(size_) + " ranks");
  size_t total = std::accumulate(counts.begin(), counts.end(), size_t(0));
  bool ordered = orderedReduction(dt, op);
  bool rankOrder = deterministicMode();  // else a fold takes contributions as they arrive
  Fold fold = foldOf(dt, ordered);
  Candidate pick = this->pick(CollKind::REDUCE_SCATTER, total * dtypeSize(dt), -1 - static_cast<int>(fold), algo,
                              [&] { return planReduceScatter(total * dtypeSize(dt), algo, fold); });
  if (pick.algo == "native") refuseNativeIfDeterministic("reduce_scatter", dt, op);
  CollectiveInfo info{"reduce_scatter", CollKind::REDUCE_SCATTER, dt, total, -1, pick.algo, op};
  bool native = pick.algo == "native";
  NativeChoice viaNative = nativeChoice(CollKind::REDUCE_SCATTER, total * dtypeSize(dt), pick, algo);
  bool even = std::all_of(counts.begin(), counts.end(), [&](size_t c) { return c == counts[0]; });
  NativeCall nat = nativeCall(native && !currentPlacement().onDevice(), mpi_, "reduce_scatter", timeoutSec_,
                              world_->policy, [&] { return describe(info, nextSeq_, "native mpi"); });
  bool direct = pick.algo == "direct";
  std::vector<int> hosts;  // hierarchical: each rank's group at the innermost level
  if (pick.algo == "hierarchical") hosts = CommShape::of(*world_->topology, worldRanks_).levels()[0];
  int n = size_, me = rank_;
  return submit(info, false, 0, [=](Links& l, Work&) {
    if (total == 0) return;
    if (even && runOnHccl(l, viaNative, HcclCall{CollKind::REDUCE_SCATTER, in, out, counts[0], dt, op, premul})) return;
    if (even && runOnNccl(l, viaNative, [&](NcclTransport& nc, void* s) {
          algo::reduceScatterNccl(nc, in, out, counts[0], dt, op, premul, s);
        }))
      return;
    l.setOrdered(ordered);
    l.setRankOrder(rankOrder);
    const void* src = in;
    if (op == ReduceOp::PREMUL_SUM) prescale(l, dt, op, premul, src, l.scratch(total * dtypeSize(dt)), total);
    if (n == 1) {
      l.copy(out, src, total * dtypeSize(dt));
    } else if (nat) {
      algo::reduceScattervNative(*nat.comm, src, out, counts, dt, l.op(), nat.wait());
    } else if (direct) {
      algo::reduceScattervOrdered(l, src, out, counts);  // any op: each owner folds its block
    } else if (!hosts.empty()) {
      algo::reduceScattervHierarchical(l, src, out, counts, hosts);
    } else {
      algo::reduceScattervRing(l, src, out, counts);
    }
    postscale(l, dt, op, n, out, counts[me]);
  }, async);
}

WorkPtr Communicator::alltoallv(const void* in, std::vector<size_t> sendCounts, std::vector<size_t> sendDispls,
                                void* out, std::vector<size_t> recvCounts, std::vector<size_t> recvDispls,
                                DataType dt, bool async, const std::string& algo) {
  checkUsable();
  for (auto* v : {&sendCounts, &sendDispls, &recvCounts, &recvDispls})
    if (static_cast<int>(v->size()) != size_)
      throw Error("alltoallv: every count/displacement list needs " + std::to_string(size_) + " entries");
  size_t sent = std::accumulate(sendCounts.begin(), sendCounts.end(), size_t(0));
  bool even = true;  // alltoall: one block size everywhere, blocks in rank order (Bruck)
  for (int r = 0; r < size_; ++r)
    even &= sendCounts[r] == sendCounts[0] && recvCounts[r] == sendCounts[0] && sendDispls[r] == r * sendCounts[0] &&
            recvDispls[r] == r * sendCounts[0];
  Candidate pick = this->pick(CollKind::ALLTOALL, sent * dtypeSize(dt), even ? 1 : 0, algo,
                              [&] { return planAlltoall(sent * dtypeSize(dt), even, algo); });
  CollectiveInfo info{"alltoall", CollKind::ALLTOALL, dt, sent, -1, pick.algo, ReduceOp::SUM};
  bool bruck = pick.algo == "bruck";
  int n = size_;
  return submit(info, false, 0, [=](Links& l, Work&) {
    const void* src = in;
    if (in == out) {  // in place: send from a copy, in the collective's memory (host or device)
      size_t end = 0;
      for (int r = 0; r < n; ++r) end = std::max(end, (sendDispls[r] + sendCounts[r]) * dtypeSize(dt));
      char* copy = l.scratch(end);
      l.copy(copy, in, end);
      src = copy;
    }
    if (bruck && n > 1) algo::alltoallBruck(l, src, out, sendCounts[0]);
    else algo::alltoallvPairwise(l, src, sendCounts, sendDispls, out, recvCounts, recvDispls);
  }, async);
}

WorkPtr Communicator::gather(const void* in, void* out, size_t count, DataType dt, int root, bool async) {
  checkUsable();
  checkRoot(root, "root");
  size_t bytes = count * dtypeSize(dt);
  Candidate pick = this->pick(CollKind::GATHER, bytes, root, "", [&] { return planGather("gather", bytes, root, ""); });
  CollectiveInfo info{"gather", CollKind::GATHER, dt, count, root, pick.algo, ReduceOp::SUM};
  bool binomial = pick.algo == "binomial";
  return submit(info, false, 0, [=](Links& l, Work&) {
    if (!count) return;
    if (binomial && l.size() > 1) algo::gatherBinomial(l, in, out, count, root);
    else algo::gatherLinear(l, in, out, count, root);
  }, async);
}

WorkPtr Communicator::scatter(const void* in, void* out, size_t count, DataType dt, int root, bool async) {
  checkUsable();
  checkRoot(root, "root");
  size_t bytes = count * dtypeSize(dt);
  Candidate pick = this->pick(CollKind::SCATTER, bytes, root, "", [&] { return planGather("scatter", bytes, root, ""); });
  CollectiveInfo info{"scatter", CollKind::SCATTER, dt, count, root, pick.algo, ReduceOp::SUM};
  bool binomial = pick.algo == "binomial";
  return submit(info, false, 0, [=](Links& l, Work&) {
    if (!count) return;
    if (binomial && l.size() > 1) algo::scatterBinomial(l, in, out, count, root);
    else algo::scatterLinear(l, in, out, count, root);
  }, async);
}

WorkPtr Communicator::barrier(bool async) {
  checkUsable();
  bool native = wantsNative("", "barrier");
  CollectiveInfo info{"barrier", CollKind::BARRIER, DataType::U8, 0, -1, native ? "native" : "dissemination",
                      ReduceOp::SUM};
  NativeCall nat = nativeCall(native, mpi_, "barrier", timeoutSec_, world_->policy, [&] { return describe(info, nextSeq_, "native mpi"); });
  return submit(info, false, 0, [nat](Links& l, Work&) {
    if (nat) algo::barrierNative(*nat.comm, nat.wait());
    else algo::barrierDissemination(l);
  }, async);
}

}  // namespace hcomm
