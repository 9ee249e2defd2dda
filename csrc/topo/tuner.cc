// The tuner's public side: the candidate lists (from algo/names.h), the communicator's
// shape of the topology, and the per-job decision cache. The models are in tuner_*.cc.
#include "topo/tuner.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "algo/names.h"
#include "common/param.h"
#include "common/types.h"

namespace hcomm {

namespace {
std::vector<int> allRanksOf(int n) {
  std::vector<int> all(n);
  for (int r = 0; r < n; ++r) all[r] = r;
  return all;
}
}  // namespace

const std::vector<std::string>& allreduceAlgorithms() {
  static const std::vector<std::string> v = algorithmsOf("allreduce", false);
  return v;
}

double gammaSecondsPerByte() {
  // One pass reading two inputs and writing one on a core of its own: the kernel ran
  // 6.7-15.5 GB/s of payload in one process here (docs/tuner.md); HCOMM_GAMMA overrides.
  // A rank sharing its CPU pays more: CommShape::cpuShare.
  return envDouble("HCOMM_GAMMA", 1.0 / 8e9);
}

CommShape CommShape::of(const Topology& t, const std::vector<int>& worldRanks) {
  CommShape s;
  s.n = static_cast<int>(worldRanks.size());
  std::map<int, int> h, r;  // world index -> dense index, in order of appearance
  for (int w : worldRanks) {
    s.host.push_back(h.emplace(t.hostOf.at(w), static_cast<int>(h.size())).first->second);
    s.rack.push_back(r.emplace(t.rackOf.at(w), static_cast<int>(r.size())).first->second);
  }
  std::map<int, int> d;  // world domain -> dense index; -1 stays -1
  for (int w : worldRanks)
    s.domain.push_back(t.domainOf.at(w) < 0 ? -1 : d.emplace(t.domainOf.at(w), static_cast<int>(d.size())).first->second);
  for (int c = 0; c < kLinkClasses; ++c) s.links[c] = t.links[c];
  // Every rank of the job on a machine competes for its CPUs, members of this
  // communicator or not. Unknown hostnames or CPU sets (described topologies) count as
  // not oversubscribed.
  std::map<std::string, std::pair<int, std::set<int>>> machines;  // hostname -> (ranks, CPUs)
  for (const RankProbe& p : t.ranks) {
    if (p.hostname.empty() || p.cpus.empty()) continue;
    auto& m = machines[p.hostname];
    ++m.first;
    m.second.insert(p.cpus.begin(), p.cpus.end());
  }
  std::map<std::string, int> dense;  // hostname -> index into machineCpus
  for (int w : worldRanks) {
    auto it = machines.find(t.ranks.at(w).hostname);
    if (it == machines.end()) {
      s.machine.push_back(-1);
      continue;
    }
    auto d = dense.emplace(it->first, static_cast<int>(dense.size()));
    if (d.second) {
      s.machineCpus.push_back(static_cast<int>(it->second.second.size()));
      s.machineOutside.push_back(it->second.first);  // less this communicator's, below
    }
    --s.machineOutside[d.first->second];
    s.machine.push_back(d.first->second);
    s.oversubscribed |= it->second.first > static_cast<int>(it->second.second.size());
  }
  // A waiting rank reaches links.cc's sleep (and wakes late) when its CPU is shared:
  // its spins and yields hand the CPU to a peer for whole time slices. With a rank per
  // CPU to spare (3 ranks on 2 CPUs) the wait ends while it still yields. Measured with
  // benchmarks/tuner_validation.py (docs/tuner.md): 3 ranks on 2 CPUs, 8 B - 4 KiB,
  // halving-doubling 55-69 us over 3 steps, no slower than on 3 hosts of 1 rank (73 us);
  // 4 ranks on 2 CPUs, every algorithm ~100 us a dependent step, hierarchical's
  // single-transport phases included (hierarchical 406-414 us over 3 phases,
  // halving-doubling 191-381 over 2). A late wake waits out the rest of one sleep slice
  // (at most 100 us with two transports, HCOMM_SLEEP_US with one): one slice a step.
  s.wakeSlice = std::min(100e-6, static_cast<double>(envInt("HCOMM_SLEEP_US", 1000)) * 1e-6);
  return s.duringPhase(allRanksOf(s.n));
}

double CommShape::activeShare(const std::vector<int>& active, int copies) const {
  std::vector<int> busy = machineOutside;
  for (int r : active)
    if (r < static_cast<int>(machine.size()) && machine[r] >= 0) busy[machine[r]] += copies;
  double share = 1;
  for (size_t m = 0; m < busy.size(); ++m)
    if (busy[m] > 0) share = std::min(share, static_cast<double>(machineCpus[m]) / busy[m]);
  return share;
}

CommShape CommShape::duringPhase(const std::vector<int>& active, int copies) const {
  CommShape s = *this;
  s.cpuShare = activeShare(active, copies);
  s.lateWake = s.cpuShare <= 0.5 ? wakeSlice : 0;  // every CPU shared by two ranks or more
  return s;
}

double NativeCosts::seconds(const std::string& collective, double bytes, int n) const {
  auto it = byCollective.find(collective);
  if (it == byCollective.end()) return -1;
  double scale = ranks > 2 ? std::log2(std::max(2, n)) / std::log2(ranks) : 1.0;
  return it->second.alpha * scale + bytes * it->second.beta;
}

int CommShape::hosts() const { return host.empty() ? 1 : *std::max_element(host.begin(), host.end()) + 1; }

std::vector<int> CommShape::domainLevel() const {
  std::map<std::pair<int, int>, int> group;  // (host, domain or -1) -> dense group
  std::map<int, int> perHost;                 // host -> groups on it
  std::vector<int> level;
  for (int r = 0; r < n && r < static_cast<int>(domain.size()); ++r) {
    auto g = group.emplace(std::make_pair(host[r], domain[r]), static_cast<int>(group.size()));
    if (g.second) ++perHost[host[r]];
    level.push_back(g.first->second);
  }
  for (auto& h : perHost)
    if (h.second > 1) return level;
  return {};
}

std::vector<std::vector<int>> CommShape::levels() const {
  std::vector<std::vector<int>> l;
  std::vector<int> gpu = domainLevel();
  if (!gpu.empty()) l.push_back(gpu);
  l.push_back(host);
  if (!rack.empty() && *std::max_element(rack.begin(), rack.end()) > 0) l.push_back(rack);
  return l;
}

const std::vector<std::string>& broadcastAlgorithms() {
  static const std::vector<std::string> v = algorithmsOf("broadcast", false);
  return v;
}

const std::vector<std::string>& allgatherAlgorithms() {
  static const std::vector<std::string> v = algorithmsOf("allgather", false);
  return v;
}

const std::vector<std::string>& reduceScatterAlgorithms() {
  static const std::vector<std::string> v = algorithmsOf("reduce_scatter", false);
  return v;
}

const std::vector<std::string>& gatherAlgorithms() {
  static const std::vector<std::string> v = algorithmsOf("gather", false);
  return v;
}

const std::vector<std::string>& alltoallAlgorithms() {
  static const std::vector<std::string> v = algorithmsOf("alltoall", false);
  return v;
}

const std::vector<std::string>& reduceAlgorithms() {
  static const std::vector<std::string> v = algorithmsOf("reduce", false);
  return v;
}

Decision Tuner::gather(const std::vector<int>& worldRanks, const std::string& collective, size_t bytes, int root,
                       const std::string& forced, const std::string& why) const {
  return cached(Key{collective, worldRanks, bytes, root, forced, why},
                [&](const CommShape& s) { return tuneGather(s, collective, bytes, root, forced, why); });
}

Decision Tuner::alltoall(const std::vector<int>& worldRanks, size_t bytes, bool even, const std::string& forced,
                         const std::string& why) const {
  return cached(Key{"alltoall", worldRanks, bytes, even ? 1 : 0, forced, why},
                [&](const CommShape& s) { return tuneAlltoall(s, bytes, even, forced, why); });
}

Decision Tuner::reduceScatter(const std::vector<int>& worldRanks, size_t bytes, const std::string& forced,
                              const std::string& why, Fold fold) const {
  return cached(Key{"reduce_scatter", worldRanks, bytes, static_cast<int>(fold), forced, why},
                [&](const CommShape& s) { return tuneReduceScatter(s, bytes, forced, why, fold); });
}

Decision Tuner::reduce(const std::vector<int>& worldRanks, size_t bytes, int root, const std::string& forced,
                       const std::string& why, Fold fold) const {
  return cached(Key{"reduce", worldRanks, bytes, 3 * root + static_cast<int>(fold), forced, why},
                [&](const CommShape& s) { return tuneReduce(s, bytes, root, forced, why, fold); });
}

std::shared_ptr<const Tuner> Tuner::withLink(LinkClass c, const LinkCost& cost) const {
  auto t = std::make_shared<Topology>(*topology_);
  t->links[static_cast<int>(c)] = cost;
  return std::make_shared<Tuner>(t, native_);
}

Decision Tuner::cached(Key key, const std::function<Decision(const CommShape&)>& tune) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
  }
  Decision d = tune(CommShape::of(*topology_, std::get<1>(key)));
  std::lock_guard<std::mutex> lock(mu_);
  if (cache_.size() >= 4096) cache_.clear();  // many distinct sizes: start over rather than grow
  cache_.emplace(std::move(key), d);
  return d;
}

Decision Tuner::broadcast(const std::vector<int>& worldRanks, size_t bytes, int root, const std::string& forced,
                          const std::string& why) const {
  return cached(Key{"broadcast", worldRanks, bytes, root, forced, why},
                [&](const CommShape& s) { return tuneBroadcast(s, bytes, root, forced, why); });
}

Decision Tuner::allgather(const std::vector<int>& worldRanks, size_t bytes, const std::string& forced,
                          const std::string& why) const {
  return cached(Key{"allgather", worldRanks, bytes, -1, forced, why},
                [&](const CommShape& s) { return tuneAllgather(s, bytes, forced, why); });
}

Decision Tuner::allreduce(const std::vector<int>& worldRanks, size_t bytes, const std::string& forced,
                          const std::string& why, Fold fold) const {
  return cached(Key{"allreduce", worldRanks, bytes, static_cast<int>(fold), forced, why},
                [&](const CommShape& s) { return tuneAllreduce(s, bytes, forced, why, fold); });
}

}  // namespace hcomm
