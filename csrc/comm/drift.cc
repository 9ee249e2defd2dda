// Drift re-fit on a communicator (topo/tuner_drift.h has the rules): every tracked call
// is noted with its prediction when planned and its time when done (engine.h); every
// `interval` tracked calls - the same call on every rank, since every rank plans the
// same calls in the same order - the ranks exchange their notes with one small
// MIN-allreduce, and an agreed drifted key re-fits one link class, the same on every
// rank (the same arithmetic on the same agreed numbers), so they keep choosing alike.
#include <cstdio>
#include <sstream>

#include "comm/communicator.h"
#include "comm/placement.h"

namespace hcomm {

namespace {

// What drift tracks: collectives whose calls take about the same time on every rank and
// that the model prices by link class (not alltoall(v), whose bytes differ per rank, nor
// the root-centred gather/scatter).
const char* trackedName(CollKind kind) {
  switch (kind) {
    case CollKind::ALLREDUCE: return "allreduce";
    case CollKind::BROADCAST: return "broadcast";
    case CollKind::ALLGATHER: return "allgather";
    case CollKind::REDUCE_SCATTER: return "reduce_scatter";
    case CollKind::REDUCE: return "reduce";
    default: return nullptr;
  }
}

std::string costText(const LinkCost& c) {
  std::ostringstream o;
  o.precision(3);
  o << "alpha " << c.alpha * 1e6 << " us, beta " << (c.beta > 0 ? 1e-9 / c.beta : 0) << " GB/s";
  return o.str();
}

}  // namespace

std::shared_ptr<const Tuner> Communicator::tuner() const {
  if (!world_) return nullptr;
  std::lock_guard<std::mutex> lock(planMu_);
  return refitTuner_ ? refitTuner_ : world_->tuner;
}

bool Communicator::noteDrift(CollKind kind, size_t bytes, int rootSlot, const Candidate& c) {
  // Device buffers are not tracked: NCCL may run them instead of the planned algorithm,
  // and the host model does not price device copies.
  const char* name = trackedName(kind);
  if (!name || !drift_->settings().enabled || inDrift_ || size_ < 2 || !world_ || !world_->tuner ||
      onWorkerThread() || currentPlacement().onDevice())
    return false;
  // The pick cache's root slot (collectives.cc): the fold for allreduce and reduce_scatter,
  // 3 * root + fold for reduce, the root for broadcast.
  int root = 0;
  Fold fold = Fold::PLAIN;
  if (kind == CollKind::ALLREDUCE || kind == CollKind::REDUCE_SCATTER) fold = static_cast<Fold>(-1 - rootSlot);
  if (kind == CollKind::REDUCE) {
    root = rootSlot / 3;
    fold = static_cast<Fold>(rootSlot % 3);
  }
  if (kind == CollKind::BROADCAST) root = rootSlot;
  if (!drift_->planned(name, c.algo, bytes, root, fold, c.seconds)) return false;

  // The checkpoint: every rank's notes, element-wise MIN (a key counts only when every
  // rank saw it drift; the least-delayed rank's times).
  std::vector<double> notes = drift_->notes();
  inDrift_ = true;
  try {
    PlacementScope host(Placement{});  // the notes are host memory, whatever the user's call's buffers
    allreduce(notes.data(), notes.data(), notes.size(), DataType::F64, ReduceOp::MIN, 1.0, "ring", false);
  } catch (...) {
    inDrift_ = false;
    throw;
  }
  inDrift_ = false;
  PlannedCall slow;
  int key = drift_->agreedKey(notes, &slow);
  if (key < 0) return false;
  std::shared_ptr<const Tuner> current = tuner();
  CommShape shape = CommShape::of(current->topology(), worldRanks_);
  LinkClass cls;
  LinkCost cost;
  double ratio = notes[key];
  bool ok = refit(shape, slow, ratio * slow.predicted, &cls, &cost);
  drift_->reset();  // predictions change (or the gap is not the links'): count afresh
  if (!ok) return false;
  const LinkCost& old = shape.links[static_cast<int>(cls)];
  std::ostringstream msg;
  msg.precision(3);
  msg << "drift: " << slow.collective << " " << slow.algo << " of " << slow.bytes << " bytes took " << ratio
      << "x its prediction on every rank; " << linkClassName(cls) << " link re-fitted from " << costText(old)
      << " to " << costText(cost) << "; re-picking";
  {
    std::lock_guard<std::mutex> lock(planMu_);
    refitTuner_ = current->withLink(cls, cost);
    plans_.clear();
  }
  drift_->addEvent(msg.str());
  if (rank_ == 0) std::fprintf(stderr, "hcomm warning: %s\n", msg.str().c_str());  // once per re-fit
  return true;
}

}  // namespace hcomm
