#include "topo/tuner.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "algo/names.h"
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
  // Some edge is shared memory, where the receiving rank's own CPU copies (single-copy
  // pull): its reduction cannot overlap the transfer the way it overlaps a NIC's.
  bool cpuCopies = false;
};

LinkClass classOf(const CommShape& s, int a, int b) {
  if (!s.domain.empty() && s.domain[a] >= 0 && s.domain[a] == s.domain[b]) return LinkClass::NVLINK;
  if (s.host[a] == s.host[b]) return LinkClass::SHM;
  return s.rack[a] == s.rack[b] ? LinkClass::TCP : LinkClass::RACK;
}

// What a step in which every rank sends and receives costs on top of alpha when the
// ranks outnumber the CPUs and the Links mixes transports (CommShape::lateWake). Not
// charged to a broadcast tree: there a rank waits once, idle, while its parent runs, and
// the namespace cluster measured no such delay (binomial 0.2-0.6 ms for 8 B from rank 1).
double wakePenalty(const Net& net) {
  if (!net.s.oversubscribed || net.size() < 3) return 0;
  std::map<int, int> perHost;
  for (int m : net.members) ++perHost[net.s.host[m]];
  bool shared = false;
  for (auto& h : perHost) shared |= h.second > 1;
  return shared && perHost.size() > 1 ? net.s.lateWake : 0;
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
    bool inHost = k == LinkClass::SHM || k == LinkClass::NVLINK;  // no NIC shared
    int load = inHost ? 1 : std::max(out[net.s.host[a]], in[net.s.host[b]]) * net.share;
    c.alpha = std::max(c.alpha, l.alpha);
    c.perByte = std::max(c.perByte, l.beta * load);
    c.cpuCopies |= k == LinkClass::SHM;
  }
  c.alpha += wakePenalty(net);
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

// Pipelined work overlaps the wire (B) with reductions (G) once several chunks are in
// flight, when something else (a NIC, the kernel's socket path) moves the bytes.
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
    double t = lat + (st.cpuCopies ? wire + red : overlap(wire, red, std::min(chunks, 4.0)));
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

// ---------------------------------------------------------------- ordered reductions
// algo/ordered.cc and the "Ordered reductions" paragraph of each algorithm's header.

// The reduction kernel's bytes per byte of payload: a float32 partial doubles them.
double foldGamma(Fold f) { return gammaSecondsPerByte() * (f == Fold::ORDERED_WIDE ? 2.0 : 1.0); }

// Direct reduce-scatter: every rank sends a block of S/m to every other at once (each
// host's NIC carries all its crossing blocks: step()'s load), each owner takes its m-1
// blocks one after another and folds m times.
double orderedReduceScatterSeconds(const Net& net, double bytes, Fold f) {
  int m = net.size();
  std::vector<std::pair<int, int>> edges;
  double beta = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j)
      if (i != j) {
        edges.push_back({i, j});
        beta = std::max(beta, net.s.links[static_cast<int>(classOf(net.s, net.members[i], net.members[j]))].beta);
      }
  StepCost st = step(net, edges);
  double block = bytes / m;
  return (m - 1) * st.alpha + std::max((m - 1) * block * beta, block * st.perByte) + bytes * foldGamma(f);
}

// Bruck allgather of `total` bytes: ceil(log2 m) steps, rank i sending to i - have,
// into a fresh rotated buffer that is then copied out in rank order: two local passes
// over `total` (the copy and the new buffer's first touch), which lose to the ring's
// extra steps for large messages (measured 4 ranks, 64 MiB float16: 330-380 ms against
// the ring's 150 ms).
double bruckAllgatherSeconds(const Net& net, double total) {
  int m = net.size();
  double t = 2 * total * net.s.links[static_cast<int>(LinkClass::SHM)].beta;
  for (int have = 1; have < m; have *= 2) {
    std::vector<std::pair<int, int>> edges;
    for (int i = 0; i < m; ++i) edges.push_back({i, (i - have + m) % m});
    StepCost st = step(net, edges);
    t += st.alpha + std::min(have, m - have) * total / m * st.perByte;
  }
  return t;
}

double ringAllgatherSeconds(const Net& net, double bytes);
double hierarchicalAllgatherSeconds(const CommShape& s, const std::vector<std::vector<int>>& levels,
                                    const std::vector<int>& members, size_t depth, double bytes, double seg);

Candidate orderedRing(const Net& net, double bytes, Fold f) {
  return {"ring", orderedReduceScatterSeconds(net, bytes, f) + ringAllgatherSeconds(net, bytes), 0};
}

// Small: Bruck-allgather every input and fold all m locally; large: direct
// reduce-scatter + Bruck allgather (halving_doubling.cc's same switch).
Candidate orderedHalvingDoubling(const Net& net, double bytes, Fold f) {
  int m = net.size();
  bool large = bytes >= static_cast<double>(envInt("HCOMM_HD_LARGE_BYTES", 256 << 10));
  double t = large ? orderedReduceScatterSeconds(net, bytes, f) + bruckAllgatherSeconds(net, bytes)
                   : bruckAllgatherSeconds(net, m * bytes) + m * bytes * foldGamma(f);
  return {"halving_doubling", t, 0};
}

// The two roots (ranks 0 and m-1) take S/2 from every rank one after another and fold;
// then each tree broadcasts its half down, pipelined in segments.
Candidate orderedTree(const Net& net, double bytes, Fold f) {
  int m = net.size();
  double gather = 0;
  for (int root : {0, m - 1}) {
    double t = 0;
    for (int i = 0; i < m; ++i) {
      if (i == root) continue;
      const LinkCost& c = net.s.links[static_cast<int>(classOf(net.s, net.members[i], net.members[root]))];
      t += c.alpha + bytes / 2 * c.beta * net.share;
    }
    gather = std::max(gather, t + m * bytes / 2 * foldGamma(f));
  }
  std::vector<std::pair<int, int>> edges;  // parent -> child in both trees
  for (int i = 1; i < m; ++i) {
    edges.push_back({(i - 1) / 2, i});
    edges.push_back({m - 1 - (i - 1) / 2, m - 1 - i});
  }
  StepCost st = step(net, edges);
  double depth = std::floor(std::log2(std::max(1, m)));
  Candidate best{"tree", std::numeric_limits<double>::infinity(), treeSegments().back()};
  for (size_t seg : treeSegments()) {
    double s = std::min<double>(seg, std::max(1.0, bytes / 2));
    double k = std::max(1.0, std::ceil(bytes / 2 / s));
    double down = (depth + k - 1) * (st.alpha + 2 * s * st.perByte);
    if (gather + down < best.seconds) {
      best.seconds = gather + down;
      best.segBytes = seg;
    }
  }
  return best;
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

// ---------------------------------------------------------------- broadcast, allgather

// Members of `members` grouped by levels[depth] (first appearance order), or the first
// level at or after depth that splits them (returns levels.size() when none does).
size_t splitAt(const std::vector<std::vector<int>>& levels, const std::vector<int>& members, size_t depth,
               std::vector<std::vector<int>>* groups) {
  for (; depth < levels.size(); ++depth) {
    groups->clear();
    std::map<int, size_t> index;
    for (int r : members) {
      auto it = index.emplace(levels[depth][r], groups->size());
      if (it.second) groups->emplace_back();
      (*groups)[it.first->second].push_back(r);
    }
    if (groups->size() > 1 && groups->size() < members.size()) return depth;
  }
  return depth;
}

// binomial.cc's tree over net.members (index 0..m-1), rooted at index `root`, pipelined
// in segments of `seg`: the first segment reaches the deepest leaf after the path's
// hops; the others follow at the pace of the busiest sender or host NIC (a node sends
// every segment to each of its children; a host's NIC carries every crossing hop).
double binomialSeconds(const Net& net, double bytes, int root, double seg) {
  int m = net.size();
  if (m <= 1 || bytes <= 0) return 0;
  const CommShape& s = net.s;
  std::vector<int> parent(m, -1);
  for (int v = 1; v < m; ++v) parent[(v + root) % m] = ((v - (v & -v)) + root) % m;
  double segBytes = std::min(seg, bytes), k = std::max(1.0, std::ceil(bytes / segBytes));
  std::vector<double> pathTime(m, 0), nodeBytes(m, 0);
  std::map<int, double> hostOut, hostIn;
  double alphaMax = 0, path = 0;
  auto cost = [&](int a, int b) { return s.links[static_cast<int>(classOf(s, net.members[a], net.members[b]))]; };
  for (int v = 1; v < m; ++v) {  // v in tree order: a parent's v is below its children's
    int r = (v + root) % m, p = parent[r];
    LinkCost c = cost(p, r);
    pathTime[r] = pathTime[p] + c.alpha + segBytes * c.beta * net.share;
    path = std::max(path, pathTime[r]);
    alphaMax = std::max(alphaMax, c.alpha);
    int hp = s.host[net.members[p]], hr = s.host[net.members[r]];
    if (hp != hr) {
      hostOut[hp] += c.beta * net.share;
      hostIn[hr] += c.beta * net.share;
    } else {
      nodeBytes[p] += c.beta;
    }
  }
  double perSeg = 0;
  for (double b : nodeBytes) perSeg = std::max(perSeg, b);
  for (auto& h : hostOut) perSeg = std::max(perSeg, h.second);
  for (auto& h : hostIn) perSeg = std::max(perSeg, h.second);
  return path + (k - 1) * (alphaMax + segBytes * perSeg);
}

// hierarchical.cc's broadcast: leaders (the root in its group) broadcast level by level,
// then every group from its leader; the slowest group sets the inside time.
double hierarchicalBroadcastSeconds(const CommShape& s, const std::vector<std::vector<int>>& levels,
                                    const std::vector<int>& members, size_t depth, double bytes, int root,
                                    double seg) {
  std::vector<std::vector<int>> groups;
  depth = splitAt(levels, members, depth, &groups);
  if (depth == levels.size()) return binomialSeconds(Net{s, members, 1}, bytes, root, seg);
  std::vector<int> leaders;
  int rootGroup = 0;
  double inside = 0;
  for (size_t i = 0; i < groups.size(); ++i) {
    auto pos = std::find(groups[i].begin(), groups[i].end(), members[root]);
    bool hasRoot = pos != groups[i].end();
    leaders.push_back(hasRoot ? *pos : groups[i][0]);
    if (hasRoot) rootGroup = static_cast<int>(i);
    int local = hasRoot ? static_cast<int>(pos - groups[i].begin()) : 0;
    inside = std::max(inside, binomialSeconds(Net{s, groups[i], 1}, bytes, local, seg));
  }
  return hierarchicalBroadcastSeconds(s, levels, leaders, depth + 1, bytes, rootGroup, seg) + inside;
}

// ring.cc's allgatherv: n-1 steps, each rank passing one block to its right neighbour.
double ringAllgatherSeconds(const Net& net, double bytes) {
  int m = net.size();
  std::vector<std::pair<int, int>> edges;
  for (int i = 0; i < m; ++i) edges.push_back({i, (i + 1) % m});
  StepCost st = step(net, edges);
  return (m - 1) * (st.alpha + bytes / m * st.perByte);
}

// hierarchical.cc's allgatherv: gather into each group's leader, leaders allgather one
// level up (ring at the top), the leader unpacks (one local copy) and broadcasts inside.
double hierarchicalAllgatherSeconds(const CommShape& s, const std::vector<std::vector<int>>& levels,
                                    const std::vector<int>& members, size_t depth, double bytes, double seg) {
  std::vector<std::vector<int>> groups;
  depth = splitAt(levels, members, depth, &groups);
  if (depth == levels.size()) return ringAllgatherSeconds(Net{s, members, 1}, bytes);
  bool equal = true;
  for (const auto& g : groups) equal &= g.size() == groups[0].size();
  std::vector<int> firsts;
  for (const auto& g : groups) firsts.push_back(g[0]);
  std::vector<std::vector<int>> upper;
  if (equal && splitAt(levels, firsts, depth + 1, &upper) == levels.size()) {
    // Peer rings: rank i of every group rings with its peers (the g rings share each
    // NIC), then a ring inside each group passes h blocks a step.
    double h = static_cast<double>(groups.size()), g = static_cast<double>(groups[0].size());
    double across = ringAllgatherSeconds(Net{s, firsts, static_cast<int>(g)}, bytes / g);
    std::vector<std::pair<int, int>> ring;
    for (int i = 0; i < static_cast<int>(g); ++i) ring.push_back({i, (i + 1) % static_cast<int>(g)});
    StepCost st = step(Net{s, groups[0], 1}, ring);
    return across + (g - 1) * (h * st.alpha + bytes / g * st.perByte);
  }
  std::vector<int> leaders;
  double gather = 0, inside = 0, m = static_cast<double>(members.size());
  for (const auto& g : groups) {  // the leader receives every member's block (shm at the host level)
    leaders.push_back(g[0]);
    for (size_t i = 1; i < g.size(); ++i) {
      const LinkCost& c = s.links[static_cast<int>(classOf(s, g[0], g[i]))];
      gather = std::max(gather, c.alpha + (g.size() - 1) * bytes / m * c.beta);
    }
    inside = std::max(inside, binomialSeconds(Net{s, g, 1}, bytes, 0, seg));
  }
  double unpack = bytes * s.links[static_cast<int>(LinkClass::SHM)].beta;  // one local copy
  return gather + hierarchicalAllgatherSeconds(s, levels, leaders, depth + 1, bytes, seg) + unpack + inside;
}

// The best segment of treeSegments() for a pipelined tree cost.
Candidate bestSegment(const std::string& name, const std::function<double(double)>& seconds) {
  Candidate best{name, std::numeric_limits<double>::infinity(), treeSegments().back()};
  bool matters = false;  // no segment changes the time: the algorithm uses none
  for (size_t seg : treeSegments()) {
    double t = seconds(static_cast<double>(seg));
    matters |= best.seconds != std::numeric_limits<double>::infinity() && t != best.seconds;
    if (t < best.seconds) {
      best.seconds = t;
      best.segBytes = seg;
    }
  }
  if (!matters) best.segBytes = 0;
  return best;
}

void checkForced(const std::string& collective, const std::vector<std::string>& names, const std::string& forced) {
  if (forced.empty() || forced == "auto" || std::find(names.begin(), names.end(), forced) != names.end()) return;
  std::string list;
  for (const auto& n : names) list += n + ", ";
  throw Error("unknown " + collective + " algorithm '" + forced + "' (" + list + "auto)");
}

// The smallest applicable prediction, unless `forced` names a candidate.
void choose(Decision& d, const std::string& forced, const std::string& why) {
  d.chosen = 0;
  for (size_t i = 1; i < d.candidates.size(); ++i)
    if (d.candidates[i].applicable && d.candidates[i].seconds < d.candidates[d.chosen].seconds)
      d.chosen = static_cast<int>(i);
  d.why = "model";
  if (forced.empty() || forced == "auto") return;
  for (size_t i = 0; i < d.candidates.size(); ++i)
    if (d.candidates[i].algo == forced) d.chosen = static_cast<int>(i);
  d.why = why;
}

// One level (a single host with one GPU domain, or one rank per host): hierarchical is
// the flat algorithm. Applies across hosts sharing ranks, or on hosts split into GPU
// domains of which some holds several ranks.
bool hierarchyApplies(const CommShape& s) {
  if (s.hosts() > 1 && s.hosts() < s.n) return true;
  std::vector<int> gpu = s.domainLevel();
  return !gpu.empty() && static_cast<int>(std::set<int>(gpu.begin(), gpu.end()).size()) < s.n;
}

}  // namespace

const std::vector<std::string>& allreduceAlgorithms() {
  static const std::vector<std::string> v = algorithmsOf("allreduce", false);
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
  for (int w : worldRanks) {
    auto it = machines.find(t.ranks.at(w).hostname);
    if (it != machines.end() && it->second.first > static_cast<int>(it->second.second.size())) s.oversubscribed = true;
  }
  // links.cc's backoff round with two transports: a sleep slice of at most 100 us in each;
  // an arrival on the other transport lands anywhere in the round: half of it on average.
  double slice = std::min(100e-6, static_cast<double>(envInt("HCOMM_SLEEP_US", 1000)) * 1e-6);
  s.lateWake = 2 * slice / 2;
  return s;
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

Decision tuneAllreduce(const CommShape& s, size_t bytes, const std::string& forced, const std::string& why,
                       Fold fold) {
  const auto& names = allreduceAlgorithms();
  checkForced("allreduce", names, forced);
  std::vector<int> all(s.n);
  for (int r = 0; r < s.n; ++r) all[r] = r;
  Net net{s, all, 1};
  double b = static_cast<double>(bytes);
  Decision d;
  if (fold != Fold::PLAIN && s.n > 2) {  // two ranks: one a op b, the plain algorithms (links.h)
    constexpr double kSpreadSegment = 512 << 10;  // hierarchical.cc's ordered allgather segment
    d.candidates = {orderedRing(net, b, fold), orderedTree(net, b, fold), orderedHalvingDoubling(net, b, fold),
                    {"hierarchical", orderedReduceScatterSeconds(net, b, fold) +
                                         hierarchicalAllgatherSeconds(s, s.levels(), all, 0, b, kSpreadSegment), 0}};
  } else {
    d.candidates = {ringModel(net, b), treeModel(net, b), halvingDoublingModel(net, b),
                    hierarchicalModel(s, s.levels(), all, 0, b, 1)};
  }
  // On one host with one GPU domain, or one rank per host, the hierarchy has one level:
  // it is the flat algorithm.
  d.candidates[3].applicable = hierarchyApplies(s);
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

const std::vector<std::string>& reduceAlgorithms() {
  static const std::vector<std::string> v = algorithmsOf("reduce", false);
  return v;
}

Decision tuneBroadcast(const CommShape& s, size_t bytes, int root, const std::string& requested,
                       const std::string& why) {
  std::string forced = requested == "tree" ? "binomial" : requested;
  checkForced("broadcast", broadcastAlgorithms(), forced);
  if (root < 0 || root >= s.n) throw Error("broadcast root " + std::to_string(root) + " is not among " +
                                           std::to_string(s.n) + " ranks");
  std::vector<int> all(s.n);
  for (int r = 0; r < s.n; ++r) all[r] = r;
  double b = static_cast<double>(bytes);
  auto levels = s.levels();
  Decision d;
  d.candidates = {bestSegment("binomial", [&](double seg) { return binomialSeconds(Net{s, all, 1}, b, root, seg); }),
                  bestSegment("hierarchical", [&](double seg) {
                    return hierarchicalBroadcastSeconds(s, levels, all, 0, b, root, seg);
                  })};
  d.candidates[1].applicable = hierarchyApplies(s);
  choose(d, forced, why);
  return d;
}

Decision tuneAllgather(const CommShape& s, size_t bytes, const std::string& forced, const std::string& why) {
  checkForced("allgather", allgatherAlgorithms(), forced);
  std::vector<int> all(s.n);
  for (int r = 0; r < s.n; ++r) all[r] = r;
  double b = static_cast<double>(bytes);
  auto levels = s.levels();
  Decision d;
  d.candidates = {Candidate{"ring", ringAllgatherSeconds(Net{s, all, 1}, b), 0},
                  bestSegment("hierarchical", [&](double seg) {
                    return hierarchicalAllgatherSeconds(s, levels, all, 0, b, seg);
                  }),
                  Candidate{"bruck", bruckAllgatherSeconds(Net{s, all, 1}, b), 0}};
  d.candidates[1].applicable = hierarchyApplies(s);
  choose(d, forced, why);
  return d;
}

Decision tuneReduceScatter(const CommShape& s, size_t bytes, const std::string& forced, const std::string& why,
                           Fold fold) {
  checkForced("reduce_scatter", reduceScatterAlgorithms(), forced);
  std::vector<int> all(s.n);
  for (int r = 0; r < s.n; ++r) all[r] = r;
  Net net{s, all, 1};
  double b = static_cast<double>(bytes);
  double direct = orderedReduceScatterSeconds(net, b, fold);
  Decision d;
  if (fold != Fold::PLAIN && s.n > 2) {  // ring.cc runs the direct reduce-scatter then
    d.candidates = {Candidate{"ring", direct, 0}, Candidate{"direct", direct, 0}};
  } else {
    // ring.cc: n-1 steps, each passing a block on and reducing the one received.
    std::vector<std::pair<int, int>> edges;
    for (int i = 0; i < s.n; ++i) edges.push_back({i, (i + 1) % s.n});
    StepCost st = step(net, edges);
    double ring = (s.n - 1) * (st.alpha + b / s.n * st.perByte) + (s.n - 1.0) / s.n * b * gammaSecondsPerByte();
    d.candidates = {Candidate{"ring", ring, 0}, Candidate{"direct", direct, 0}};
  }
  choose(d, forced, why);
  return d;
}

Decision tuneReduce(const CommShape& s, size_t bytes, int root, const std::string& requested, const std::string& why,
                    Fold fold) {
  std::string forced = requested == "tree" ? "binomial" : requested;
  checkForced("reduce", reduceAlgorithms(), forced);
  if (root < 0 || root >= s.n) throw Error("reduce root " + std::to_string(root) + " is not among " +
                                           std::to_string(s.n) + " ranks");
  std::vector<int> all(s.n);
  for (int r = 0; r < s.n; ++r) all[r] = r;
  Net net{s, all, 1};
  double b = static_cast<double>(bytes);
  // ordered.cc's reduceOrdered: direct reduce-scatter, then the root takes the n-1 blocks at once.
  double toRoot = 0, alpha = 0;
  for (int i = 0; i < s.n; ++i)
    if (i != root) {
      const LinkCost& c = s.links[static_cast<int>(classOf(s, i, root))];
      toRoot += b / s.n * c.beta;
      alpha = std::max(alpha, c.alpha);
    }
  double rsg = orderedReduceScatterSeconds(net, b, fold) + alpha + toRoot;
  Decision d;
  if (fold != Fold::PLAIN && s.n > 2) {  // binomial.cc runs reduceOrdered then
    d.candidates = {Candidate{"binomial", rsg, 0}, Candidate{"reduce_scatter_gather", rsg, 0}};
  } else {
    // binomial.cc: the broadcast tree upwards; the root reduces its ceil(log2 n) children in turn.
    double levels = std::ceil(std::log2(std::max(1, s.n)));
    Candidate bin = bestSegment("binomial", [&](double seg) {
      return binomialSeconds(net, b, root, seg) + levels * b * gammaSecondsPerByte();
    });
    d.candidates = {bin, Candidate{"reduce_scatter_gather", rsg, 0}};
  }
  choose(d, forced, why);
  return d;
}

Decision tuneGather(const CommShape& s, const std::string& collective, size_t bytes, int root,
                    const std::string& forced, const std::string& why) {
  checkForced(collective, gatherAlgorithms(), forced);
  if (root < 0 || root >= s.n) throw Error(collective + " root " + std::to_string(root) + " is not among " +
                                           std::to_string(s.n) + " ranks");
  double b = static_cast<double>(bytes);
  auto link = [&](int a, int c) { return s.links[static_cast<int>(classOf(s, a, c))]; };
  // linear.cc: n-1 messages at the root, which handles them one after another.
  double linear = 0;
  for (int i = 0; i < s.n; ++i)
    if (i != root) linear += link(i, root).alpha + b * link(i, root).beta;
  // binomial.cc: ceil(log2 n) levels; the root takes each child's subtree in turn.
  double levels = std::ceil(std::log2(std::max(1, s.n))), alpha = 0, atRoot = 0;
  for (int mask = 1; mask < s.n; mask <<= 1) {
    int child = (root + mask) % s.n;
    size_t size = std::min<size_t>(mask, s.n - mask);
    atRoot += size * b * link(child, root).beta;
  }
  for (int i = 0; i < s.n; ++i)
    for (int j = 0; j < s.n; ++j) alpha = std::max(alpha, link(i, j).alpha);
  // The root also copies the n blocks between rank order and the tree's order (binomial.cc).
  double copy = s.n * b * s.links[static_cast<int>(LinkClass::SHM)].beta;
  Decision d;
  d.candidates = {Candidate{"linear", linear, 0}, Candidate{"binomial", levels * alpha + atRoot + copy, 0}};
  choose(d, forced, why);
  return d;
}

Decision Tuner::gather(const std::vector<int>& worldRanks, const std::string& collective, size_t bytes, int root,
                       const std::string& forced, const std::string& why) const {
  return cached(Key{collective, worldRanks, bytes, root, forced, why},
                [&](const CommShape& s) { return tuneGather(s, collective, bytes, root, forced, why); });
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
