#include "topo/tuner_drift.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <string_view>

#include "common/param.h"
#include "common/types.h"
#include "topo/tuner_model.h"

namespace hcomm {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The last k of v (the samples of the current slow run).
std::vector<double> tail(const std::vector<double>& v, size_t k) {
  return std::vector<double>(v.end() - std::min(k, v.size()), v.end());
}

}  // namespace

DriftSettings DriftSettings::fromEnv() {
  DriftSettings s;
  s.enabled = envStr("HCOMM_DRIFT", "1") != "0" && !deterministicMode();
  s.interval = std::max<int>(1, static_cast<int>(envInt("HCOMM_DRIFT_INTERVAL", s.interval)));
  s.streak = std::max<int>(1, static_cast<int>(envInt("HCOMM_DRIFT_CALLS", s.streak)));
  s.minExcess = static_cast<double>(envInt("HCOMM_DRIFT_MIN_US", 100)) * 1e-6;
  return s;
}

void DriftKey::add(double predicted, double measured, const DriftSettings& s) {
  if (predicted <= 0 || measured <= 0) return;
  double ratio = measured / predicted;
  bool slow = ratio > s.threshold && measured - predicted > s.minExcess;
  slowRun_ = slow ? slowRun_ + 1 : 0;
  ratios_.push_back(ratio);
  measured_.push_back(measured);
  if (static_cast<int>(ratios_.size()) > s.window) {
    ratios_.erase(ratios_.begin());
    measured_.erase(measured_.begin());
  }
}

// While drifted, the slow run's own samples (the old fast ones would pull the median down).
double DriftKey::medianRatio() const { return median(tail(ratios_, slowRun_ > 0 ? slowRun_ : ratios_.size())); }
double DriftKey::medianMeasured() const {
  return median(tail(measured_, slowRun_ > 0 ? slowRun_ : measured_.size()));
}

int sizeClass(size_t bytes) {
  int c = 0;
  while (bytes > 1) {
    bytes >>= 1;
    ++c;
  }
  return c;
}

namespace {

uint64_t keyHash(const char* collective, const std::string& algo, uint64_t sizeOrClass, uint64_t tag) {
  uint64_t h = std::hash<std::string_view>{}(collective);
  h = h * 1000003 ^ std::hash<std::string_view>{}(algo);
  return (h * 1000003 ^ sizeOrClass) * 31 + tag;
}
uint64_t classKey(const char* c, const std::string& a, size_t bytes) { return keyHash(c, a, sizeClass(bytes), 1); }
uint64_t callKey(const char* c, const std::string& a, size_t bytes) { return keyHash(c, a, bytes, 2); }

}  // namespace

bool DriftMonitor::planned(const char* collective, const std::string& algo, size_t bytes, int root, Fold fold,
                           double predicted) {
  uint64_t id = classKey(collective, algo, bytes), exact = callKey(collective, algo, bytes);
  std::lock_guard<std::mutex> lock(mu_);
  KeyState& k = keys_[id];
  PlannedCall& c = k.last;
  if (c.bytes != bytes || c.root != root || c.fold != fold || c.algo != algo || c.collective != collective)
    c = PlannedCall{collective, algo, bytes, root, fold, predicted};
  c.predicted = predicted;
  k.lastPlanned = ++calls_;
  if (predicted_.size() >= 4096) predicted_.clear();  // many distinct sizes: keep the memory bounded
  predicted_[exact] = predicted;
  return calls_ % s_.interval == 0;
}

void DriftMonitor::measured(const std::string& collective, const std::string& algo, size_t bytes, double seconds) {
  const char* name = collective.c_str();
  uint64_t exact = callKey(name, algo, bytes);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = predicted_.find(exact);
  if (it == predicted_.end()) return;
  keys_[classKey(name, algo, bytes)].drift.add(it->second, seconds, s_);
}

std::vector<double> DriftMonitor::notes() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<long, uint64_t>> recent;
  for (const auto& k : keys_) recent.push_back({k.second.lastPlanned, k.first});
  std::sort(recent.rbegin(), recent.rend());  // call numbers are unique: a total order
  slots_.clear();
  for (size_t i = 0; i < recent.size() && i < static_cast<size_t>(kSlots); ++i) slots_.push_back(recent[i].second);
  std::vector<double> v(2 * kSlots, 0.0);
  for (size_t i = 0; i < slots_.size(); ++i) {
    const DriftKey& k = keys_.at(slots_[i]).drift;
    v[i] = k.drifted(s_) ? k.medianRatio() : 0.0;
    v[kSlots + i] = k.samples() ? k.medianMeasured() : 0.0;
  }
  return v;
}

int DriftMonitor::agreedKey(const std::vector<double>& agreed, PlannedCall* call) const {
  std::lock_guard<std::mutex> lock(mu_);
  int best = -1;
  for (size_t i = 0; i < slots_.size(); ++i)
    if (agreed[i] > s_.threshold && (best < 0 || agreed[i] > agreed[best])) best = static_cast<int>(i);
  if (best >= 0) *call = keys_.at(slots_[best]).last;
  return best;
}

void DriftMonitor::reset() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& k : keys_) k.second.drift = DriftKey();
}

double DriftMonitor::measuredFor(const std::string& collective, const std::string& algo, size_t bytes) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keys_.find(classKey(collective.c_str(), algo, bytes));
  return it == keys_.end() || !it->second.drift.samples() ? -1 : it->second.drift.medianMeasured();
}

std::vector<std::string> DriftMonitor::events() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_;
}

void DriftMonitor::addEvent(const std::string& e) {
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back(e);
}

Decision tuneByName(const CommShape& s, const std::string& collective, size_t bytes, int root, Fold fold,
                    const std::string& algo) {
  const std::string why = "refit";
  if (collective == "allreduce") return tuneAllreduce(s, bytes, algo, why, fold);
  if (collective == "broadcast") return tuneBroadcast(s, bytes, root, algo, why);
  if (collective == "allgather") return tuneAllgather(s, bytes, algo, why);
  if (collective == "reduce_scatter") return tuneReduceScatter(s, bytes, algo, why, fold);
  if (collective == "reduce") return tuneReduce(s, bytes, root, algo, why, fold);
  throw Error("drift: no model for collective '" + collective + "'");
}

namespace {

// The call's price with one class's alpha or beta multiplied by m.
double priceWith(const CommShape& s, const PlannedCall& c, LinkClass cls, bool beta, double m) {
  CommShape t = s;
  LinkCost& l = t.links[static_cast<int>(cls)];
  (beta ? l.beta : l.alpha) *= m;
  return tuneByName(t, c.collective, c.bytes, c.root, c.fold, c.algo).choice().seconds;
}

}  // namespace

bool refit(const CommShape& s, const PlannedCall& call, double target, LinkClass* cls, LinkCost* cost) {
  if (call.algo == "native" || call.algo.empty()) return false;
  std::set<LinkClass> present;  // the classes this communicator's ranks talk over
  for (int a = 0; a < s.n; ++a)
    for (int b = 0; b < s.n; ++b)
      if (a != b) present.insert(tuning::classOf(s, a, b));
  double now = priceWith(s, call, LinkClass::SHM, true, 1.0);
  if (present.empty() || target <= now) return false;
  // The term that explains most of the time: the largest growth when doubled.
  LinkClass bestCls = *present.begin();
  bool bestBeta = true;
  double bestGain = -1;
  for (LinkClass c : present)
    for (bool beta : {true, false}) {
      double gain = priceWith(s, call, c, beta, 2.0) - now;
      if (gain > bestGain) {
        bestGain = gain;
        bestCls = c;
        bestBeta = beta;
      }
    }
  if (bestGain <= 0) return false;
  // Prices grow with a link's cost: bisect the multiplier in [1, 1e6] (log scale).
  double lo = 0, hi = 6;  // log10
  if (priceWith(s, call, bestCls, bestBeta, std::pow(10.0, hi)) < target) return false;
  for (int i = 0; i < 40; ++i) {
    double mid = (lo + hi) / 2;
    (priceWith(s, call, bestCls, bestBeta, std::pow(10.0, mid)) < target ? lo : hi) = mid;
  }
  *cls = bestCls;
  *cost = s.links[static_cast<int>(bestCls)];
  (bestBeta ? cost->beta : cost->alpha) *= std::pow(10.0, hi);
  cost->source = "refit";
  return true;
}

}  // namespace hcomm
