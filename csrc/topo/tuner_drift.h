// Drift: the tuner keeps learning after init. A communicator records, per (collective,
// algorithm, size class), the time its calls take beside what the model predicted. When
// one key runs more than `threshold` (20 %) over its prediction for `streak` consecutive
// calls, and by more than `minExcess` seconds (scheduler noise on a shared machine is
// not a link getting slower), the key has drifted. Every `interval` tracked calls the
// ranks compare notes (comm/drift.cc: one small MIN-allreduce, so a key counts only when
// every rank saw it, and the least-delayed rank's times are used); for an agreed key the
// link class whose cost explains the gap is re-fitted (refit()), the ranks swap in a
// tuner over the new costs, re-pick, and warn once with the old and new costs.
//
// Noise within +-10 % never triggers (10 % < 20 %). A sustained slowdown of one key is
// seen after `streak` of its calls and acted on at the next checkpoint: at most
// streak + interval tracked calls after it began.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "topo/tuner.h"

namespace hcomm {

struct DriftSettings {
  bool enabled = true;       // HCOMM_DRIFT (0 turns it off); always off under HCOMM_DETERMINISTIC=1
  double threshold = 1.2;    // measured / predicted above this counts as slow
  int streak = 4;            // consecutive slow calls of one key
  double minExcess = 1e-4;   // seconds over the prediction, at least (HCOMM_DRIFT_MIN_US)
  int interval = 16;         // tracked calls between agreements (HCOMM_DRIFT_INTERVAL)
  int window = 8;            // samples kept per key (medians)
  static DriftSettings fromEnv();
};

// One call as planned: enough to price it again with other link costs.
struct PlannedCall {
  std::string collective, algo;
  size_t bytes = 0;
  int root = 0;
  Fold fold = Fold::PLAIN;
  double predicted = 0;  // seconds, as the tuner priced it
};

// Per-key record: recent samples and the current run of slow calls. Pure logic, no
// communication (process-free tests drive it through hcomm._C._drift_first_trigger).
class DriftKey {
 public:
  void add(double predicted, double measured, const DriftSettings& s);
  bool drifted(const DriftSettings& s) const { return slowRun_ >= s.streak; }
  double medianRatio() const;     // measured / predicted over the window
  double medianMeasured() const;  // seconds
  int samples() const { return static_cast<int>(ratios_.size()); }

 private:
  std::vector<double> ratios_, measured_;
  int slowRun_ = 0;
};

int sizeClass(size_t bytes);  // floor(log2 bytes), 0 for 0 and 1

// A communicator's measurements. Thread-safe: calls are planned on the caller's thread
// and measured where they run (the progress thread when async).
class DriftMonitor {
 public:
  explicit DriftMonitor(DriftSettings s) : s_(s) {}
  const DriftSettings& settings() const { return s_; }
  // A tracked call about to be submitted; true when this call is a checkpoint (every
  // `interval` tracked calls: the same call on every rank).
  // Runs on every call: it copies no string unless the key's last call changed.
  bool planned(const char* collective, const std::string& algo, size_t bytes, int root, Fold fold, double predicted);
  void measured(const std::string& collective, const std::string& algo, size_t bytes, double seconds);
  // The checkpoint's local notes: for the kSlots keys planned most recently (the same
  // keys in the same order on every rank: every rank plans the same calls),
  // [median ratio if drifted else 0 ..., median measured seconds ...].
  static constexpr int kSlots = 32;
  std::vector<double> notes() const;
  // After the agreement (element-wise MIN of every rank's notes): the agreed drifted key
  // with the largest ratio, or -1; its last planned call in *call.
  int agreedKey(const std::vector<double>& agreed, PlannedCall* call) const;
  void reset();  // after a re-fit: predictions changed, start counting again
  // Median measured seconds of (collective, algo, size class of bytes), or -1.
  double measuredFor(const std::string& collective, const std::string& algo, size_t bytes) const;
  std::vector<std::string> events() const;
  void addEvent(const std::string& e);

 private:
  DriftSettings s_;
  mutable std::mutex mu_;
  // Keys are hashes: of (collective, algorithm, size class) for a key, of (collective,
  // algorithm, bytes) for one call's prediction (equal on every rank: one binary).
  struct KeyState {
    DriftKey drift;
    PlannedCall last;      // the key's last planned call (what a re-fit prices)
    long lastPlanned = 0;  // its call number
  };
  std::map<uint64_t, KeyState> keys_;
  std::map<uint64_t, double> predicted_;  // by exact call
  mutable std::vector<uint64_t> slots_;   // notes()'s keys, for agreedKey()
  long calls_ = 0;
  std::vector<std::string> events_;
};

// The link class whose cost, raised, makes the model predict `target` seconds for
// `call` on `shape` (the one that explains most of the time); its new cost in *cost.
// Returns false when no class can (native calls; a gap the model cannot absorb).
bool refit(const CommShape& shape, const PlannedCall& call, double target, LinkClass* cls, LinkCost* cost);

// Every collective's tuner entry by name (forced to `algo`): the price refit() solves for.
Decision tuneByName(const CommShape& shape, const std::string& collective, size_t bytes, int root, Fold fold,
                    const std::string& algo);

}  // namespace hcomm
