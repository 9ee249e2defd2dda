#include "topo/tuner.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "common/param.h"
#include "common/types.h"

namespace hcomm {

namespace {

// A set of ranks running one algorithm; `share` copies of the same pattern run at once
// over the same NICs (the k leader groups of a hierarchical allreduce).
struct Net {
  const CommShape& s;
  std::vector<int> members;  // shape ranks, in the algorithm's rank order
  int share = 1;
  int size() const { return static_cast<int>(members.size()); }
};

// One step in which each edge (member a -> member b) carries the same bytes:
// time = alpha + bytes * perByte.
struct StepCost {
  double alpha = 0, perByte = 0;
};

LinkClass classOf(const CommShape& s, int a, int b) {
  if (s.host[a] == s.host[b]) return LinkClass::SHM;
  return s.rack[a] == s.rack[b] ? LinkClass::TCP : LinkClass::RACK;
}

StepCost step(const Net& net, const std::vector<std::pair<int, int>>& edges) {
  std::map<int, int> out, in;  // crossing transfers per host
  for (auto e : edges) {
    int a = net.members[e.first], b = net.members[e.second];
    if (net.s.host[a] != net.s.host[b]) {
      ++out[net.s.host[a]];
      ++in[net.s.host[b]];
    }
  }
  StepCost c;
  for (auto e : edges) {
    int a = net.members[e.first], b = net.members[e.second];
    LinkClass k = classOf(net.s, a, b);
    const LinkCost& l = net.s.links[static_cast<int>(k)];
    int load = k == LinkClass::SHM ? 1 : std::max(out[net.s.host[a]], in[net.s.host[b]]) * net.share;
    c.alpha = std::max(c.alpha, l.alpha);
    c.perByte = std::max(c.perByte, l.beta * load);
  }
  return c;
}

const std::vector<size_t>& ringSegments() {
  static const std::vector<size_t> v = {256u << 10, 1u << 20, 4u << 20};
  return v;
}
const std::vector<size_t>& treeSegments() {
  static const std::vector<size_t> v = {16u << 10, 64u << 10, 256u << 10, 512u << 10, 1u << 20, 4u << 20};
  return v;
}

// Pipelined work overlaps the wire (B) with reductions (G) once several chunks are in flight.
double overlap(double b, double g, double inFlight) { return std::max(b, g) + std::min(b, g) / std::max(1.0, inFlight); }

Candidate ringModel(const Net& net, double bytes) {
  int m = net.size();
  Candidate best{"ring", std::numeric_limits<double>::infinity(), ringSegments().back()};
  std::vector<std::pair<int, int>> edges;
  for (int i = 0; i < m; ++i) edges.push_back({i, (i + 1) % m});
  StepCost st = step(net, edges);
  for (size_t seg : ringSegments()) {
    double chunks = std::max(1.0, std::ceil(bytes / (double(m) * seg)));
    double lat = 2.0 * (m - 1) * std::ceil(chunks / 4) * st.alpha;  // 4 chunks travel at once (ring.cc)
    double wire = 2.0 * (m - 1) / m * bytes * st.perByte;
    double red = double(m - 1) / m * bytes * gammaSecondsPerByte();
    double t = lat + overlap(wire, red, std::min(chunks, 4.0));
    if (t < best.seconds) {
      best.seconds = t;
      best.segBytes = seg;
    }
  }
  return best;
}

Candidate treeModel(const Net& net, double bytes) {
  int m = net.size();
  std::vector<std::pair<int, int>> edges;  // child -> parent in both trees (tree.cc)
  for (int i = 1; i < m; ++i) {
    edges.push_back({i, (i - 1) / 2});
    edges.push_back({m - 1 - i, m - 1 - (i - 1) / 2});
  }
  StepCost st = step(net, edges);
  double depth = std::floor(std::log2(std::max(1, m)));
  Candidate best{"tree", std::numeric_limits<double>::infinity(), treeSegments().back()};
  double g = gammaSecondsPerByte();
  for (size_t seg : treeSegments()) {
    double s = std::min<double>(seg, std::max(1.0, bytes / 2));
    double k = std::max(1.0, std::ceil(bytes / 2 / s));
    double up = (depth + k - 1) * (st.alpha + 2 * s * st.perByte + 2 * s * g);  // two children per stage
    double down = (depth + k - 1) * (st.alpha + 2 * s * st.perByte);
    if (up + down < best.seconds) {
      best.seconds = up + down;
      best.segBytes = seg;
    }
  }
  return best;
}

Candidate halvingDoublingModel(const Net& net, double bytes) {
  int m = net.size(), p = 1;
  while (p * 2 <= m) p *= 2;
  int rem = m - p;
  double g = gammaSecondsPerByte(), t = 0;
  if (rem) {  // the non-power-of-two fold and the result's way back
    std::vector<std::pair<int, int>> fold;
    for (int i = 0; i < rem; ++i) fold.push_back({2 * i, 2 * i + 1});
    StepCost st = step(net, fold);
    t += 2 * (st.alpha + bytes * st.perByte) + bytes * g;
  }
  auto realRank = [&](int v) { return v < rem ? 2 * v + 1 : v + rem; };
  bool large = bytes >= static_cast<double>(envInt("HCOMM_HD_LARGE_BYTES", 256 << 10));  // halving_doubling.cc
  for (int mask = 1; mask < p; mask <<= 1) {
    std::vector<std::pair<int, int>> edges;
    for (int v = 0; v < p; ++v) edges.push_back({realRank(v), realRank(v ^ mask)});
    StepCost st = step(net, edges);
    if (large) {
      double b = bytes * mask / p;  // halving then doubling move the same bytes at this mask
      t += 2 * (st.alpha + b * st.perByte) + b * g;
    } else {
      t += st.alpha + bytes * st.perByte + bytes * g;
    }
  }
  return {"halving_doubling", t, 0};
}

Candidate bestFlat(const Net& net, double bytes) {
  Candidate c[3] = {ringModel(net, bytes), treeModel(net, bytes), halvingDoublingModel(net, bytes)};
  return *std::min_element(c, c + 3, [](const Candidate& a, const Candidate& b) { return a.seconds < b.seconds; });
}

// hierarchical.cc, level by level: ring reduce-scatter inside each group into k blocks
// (k = the smallest group), the leaders of block i across groups recurse one level up,
// ring allgather inside the group. The top level runs the best flat algorithm.
Candidate hierarchicalModel(const CommShape& s, const std::vector<std::vector<int>>& levels,
                            const std::vector<int>& members, size_t depth, double bytes, int share) {
  if (depth == levels.size()) {
    Candidate top = bestFlat(Net{s, members, share}, bytes);
    return {"hierarchical", top.seconds, 0, top.algo, top.segBytes};
  }
  std::vector<std::vector<int>> groups;
  std::map<int, size_t> index;
  for (int r : members) {
    auto it = index.emplace(levels[depth][r], groups.size());
    if (it.second) groups.emplace_back();
    groups[it.first->second].push_back(r);
  }
  size_t k = groups[0].size(), gmax = 0;
  const std::vector<int>* largest = &groups[0];
  for (const auto& g : groups) {
    k = std::min(k, g.size());
    if (g.size() > gmax) {
      gmax = g.size();
      largest = &g;
    }
  }
  if (groups.size() == 1 || gmax == 1) return hierarchicalModel(s, levels, members, depth + 1, bytes, share);
  std::vector<int> leaders;
  for (const auto& g : groups) leaders.push_back(g[0]);
  Candidate up = hierarchicalModel(s, levels, leaders, depth + 1, bytes / k, share * static_cast<int>(k));
  std::vector<std::pair<int, int>> ring;
  for (size_t i = 0; i < gmax; ++i) ring.push_back({static_cast<int>(i), static_cast<int>((i + 1) % gmax)});
  StepCost st = step(Net{s, *largest, share}, ring);
  double block = bytes / k;
  up.seconds += (gmax - 1) * (2 * st.alpha + 2 * block * st.perByte + block * gammaSecondsPerByte());
  return up;
}

}  // namespace

const std::vector<std::string>& allreduceAlgorithms() {
  static const std::vector<std::string> v = {"ring", "tree", "halving_doubling", "hierarchical"};
  return v;
}

double gammaSecondsPerByte() {
  // One pass reading two inputs and writing one: a few GB/s per core (HCOMM_GAMMA overrides).
  return envDouble("HCOMM_GAMMA", 1.0 / 4e9);
}

CommShape CommShape::of(const Topology& t, const std::vector<int>& worldRanks) {
  CommShape s;
  s.n = static_cast<int>(worldRanks.size());
  std::map<int, int> h, r;  // world index -> dense index, in order of appearance
  for (int w : worldRanks) {
    s.host.push_back(h.emplace(t.hostOf.at(w), static_cast<int>(h.size())).first->second);
    s.rack.push_back(r.emplace(t.rackOf.at(w), static_cast<int>(r.size())).first->second);
  }
  for (int c = 0; c < kLinkClasses; ++c) s.links[c] = t.links[c];
  return s;
}

int CommShape::hosts() const { return host.empty() ? 1 : *std::max_element(host.begin(), host.end()) + 1; }

std::vector<std::vector<int>> CommShape::levels() const {
  std::vector<std::vector<int>> l = {host};
  if (!rack.empty() && *std::max_element(rack.begin(), rack.end()) > 0) l.push_back(rack);
  return l;
}

Decision tuneAllreduce(const CommShape& s, size_t bytes, const std::string& forced, const std::string& why) {
  const auto& names = allreduceAlgorithms();
  if (!forced.empty() && forced != "auto" && std::find(names.begin(), names.end(), forced) == names.end())
    throw Error("unknown allreduce algorithm '" + forced + "' (ring, tree, halving_doubling, hierarchical, auto)");
  std::vector<int> all(s.n);
  for (int r = 0; r < s.n; ++r) all[r] = r;
  Net net{s, all, 1};
  double b = static_cast<double>(bytes);
  Decision d;
  d.candidates = {ringModel(net, b), treeModel(net, b), halvingDoublingModel(net, b),
                  hierarchicalModel(s, s.levels(), all, 0, b, 1)};
  // On one host, or one rank per host, the hierarchy has one level: it is the flat algorithm.
  bool someHostShared = s.hosts() < s.n;
  d.candidates[3].applicable = s.hosts() > 1 && someHostShared;
  d.chosen = 0;
  for (size_t i = 1; i < d.candidates.size(); ++i)
    if (d.candidates[i].applicable && d.candidates[i].seconds < d.candidates[d.chosen].seconds) d.chosen = static_cast<int>(i);
  d.why = "model";
  if (!forced.empty() && forced != "auto") {
    d.chosen = static_cast<int>(std::find(names.begin(), names.end(), forced) - names.begin());
    d.why = why;
  }
  return d;
}

Decision Tuner::allreduce(const std::vector<int>& worldRanks, size_t bytes, const std::string& forced,
                          const std::string& why) const {
  Key key{worldRanks, bytes, forced, why};
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
  }
  Decision d = tuneAllreduce(CommShape::of(*topology_, worldRanks), bytes, forced, why);
  std::lock_guard<std::mutex> lock(mu_);
  if (cache_.size() >= 4096) cache_.clear();  // many distinct sizes: start over rather than grow
  cache_.emplace(std::move(key), d);
  return d;
}

}  // namespace hcomm
