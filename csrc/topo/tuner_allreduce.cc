// The allreduce model: ring, tree and halving-doubling over a set of ranks, the
// hierarchical recursion over the levels, and the ordered folds (HCOMM_DETERMINISTIC=1,
// 16-bit float32 partials) of algo/ordered.cc.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "algo/names.h"
#include "common/param.h"
#include "common/types.h"
#include "topo/tuner_model.h"

namespace hcomm {
namespace tuning {

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
    double red = double(m - 1) / m * bytes * gammaOf(net.s);
    double t = lat + (st.cpuCopies ? wire + red : overlap(wire, red, std::min(chunks, 4.0)));
    if (t < best.seconds) {
      best.seconds = t;
      best.segBytes = seg;
    }
  }
  return best;
}

// tree.cc's two heap trees (tree 1 mirrors the ranks, m-1-r), side by side: every
// receive is posted without blocking and each tree advances on its own, so a segment
// pays its way up one tree and down again (the two trees at once), and the segments
// after it follow at the pace of the busiest NIC or machine carrying all of one
// segment's transfers, both trees, both ways (up for segment j+1 while j comes down).
// Until round 7 (docs/tuner.md) a rank took the trees in turn, blocking on each receive,
// and each segment cost both trees' paths one after the other.
struct TreePath {
  double alpha = 0, perByte = 0;  // a segment of s bytes takes alpha + s * perByte along it
  double at(double s) const { return alpha + s * perByte; }
};

// The path from heap position m-1 up to the root of one tree (its deepest), with what
// each hop costs going up (the parent folds child[0]'s segment, then posts child[1]'s
// receive: a path child that is child[0] waits for its sibling's fold too, a second
// alpha either way) or going down (the parent posts both children's sends at once, so a
// hop crossing hosts shares the parent's NIC with its sibling's when that crosses too).
// floorPerByte: a hop is no faster than the step of all the transfers running with it.
static TreePath treePath(const Net& net, bool mirrored, bool up, double floorPerByte = 0) {
  int m = net.size();
  auto rank = [&](int pos) { return net.members[mirrored ? m - 1 - pos : pos]; };
  TreePath path;
  double g = gammaOf(net.s), wake = net.size() >= 2 ? net.s.lateWake : 0;
  for (int p = m - 1; p > 0; p = (p - 1) / 2) {
    int q = (p - 1) / 2, sibling = p % 2 ? p + 1 : p - 1;  // p odd: child[0]
    bool hasSibling = sibling < m;
    int a = rank(p), b = rank(q);
    LinkCost c = linkOf(net.s, a, b);
    path.alpha += c.alpha + wake;
    if (up) {
      if (hasSibling) path.alpha += linkOf(net.s, rank(sibling), b).alpha + wake;
      path.perByte += std::max(c.beta * net.share, floorPerByte) + g * (p % 2 && hasSibling ? 2 : 1);
    } else {
      bool cross = net.s.host[a] != net.s.host[b];
      int load = 1 + (cross && hasSibling && net.s.host[rank(sibling)] != net.s.host[b]);
      path.perByte += std::max(c.beta * net.share * load, floorPerByte);
    }
  }
  return path;
}

// Every transfer of one segment of both trees, up (child to parent), down, or both.
static StepCost treeStep(const Net& net, bool up, bool down) {
  int m = net.size();
  std::vector<std::pair<int, int>> edges;
  for (int i = 1; i < m; ++i)
    for (bool mirrored : {false, true}) {
      int child = mirrored ? m - 1 - i : i, parent = mirrored ? m - 1 - (i - 1) / 2 : (i - 1) / 2;
      if (up) edges.push_back({child, parent});
      if (down) edges.push_back({parent, child});
    }
  return step(net, edges);
}

// The most segments any rank folds in per segment of each tree (its children, both trees).
static int treeFolds(int m) {
  std::vector<int> folds(m, 0);
  for (int i = 1; i < m; ++i) {
    ++folds[(i - 1) / 2];
    ++folds[m - 1 - (i - 1) / 2];
  }
  return m > 1 ? *std::max_element(folds.begin(), folds.end()) : 0;
}

// One segment after the first: the busiest NIC or machine moves all its transfers (both
// ways when `up`), while the busiest rank folds its children's segments (a CPU copy on
// shared memory adds to it; over a NIC the fold overlaps the next segment's transfer).
// Plus one step's alpha, as a hop of the paths pays it: each rank keeps one receive per
// child and one from its parent posted per tree, so every segment is one more completion
// to wait for on the paths (at 256 KiB on 3 x 1, 10 Gbit/s, 16 KiB segments priced
// without it ran 0.52-0.54 ms, priced 0.39-0.46: round 7).
static double treeCycle(const Net& net, double s, bool up) {
  StepCost st = treeStep(net, up, true);
  double wire = s * st.perByte, fold = up ? s * treeFolds(net.size()) * gammaOf(net.s) : 0;
  return st.alpha + (st.cpuCopies ? wire + fold : overlap(wire, fold, 2));
}

// Every rank but the two roots receives its result from both trees, one message after
// the other (a rank handles one completion at a time): the later arrival costs one more
// receive, as a parent's second child does on the way up. Measured (docs/tuner.md, round
// 7): 3 x 1 at 8 B - 4 KiB, the tree 1.14-1.25x halving-doubling's 3 steps, not a tie.
static double lastArrival(const Net& net) {
  int m = net.size();
  if (m < 3) return 0;
  double wake = net.s.lateWake, alpha = 0;
  for (int pos = 1; pos < m; ++pos)
    for (bool mirrored : {false, true}) {
      int a = net.members[mirrored ? m - 1 - pos : pos], b = net.members[mirrored ? m - 1 - (pos - 1) / 2 : (pos - 1) / 2];
      alpha = std::max(alpha, linkOf(net.s, a, b).alpha);
    }
  return alpha + wake;
}

Candidate treeModel(const Net& net, double bytes) {
  Candidate best{"tree", std::numeric_limits<double>::infinity(), treeSegments().back()};
  // The first segment: every rank posts its sends of it at once (the leaves at the
  // start), so each hop of the path shares its NIC and machine with all of them.
  double upRate = treeStep(net, true, false).perByte, downRate = treeStep(net, false, true).perByte;
  TreePath up0 = treePath(net, false, true, upRate), up1 = treePath(net, true, true, upRate);
  TreePath down0 = treePath(net, false, false, downRate), down1 = treePath(net, true, false, downRate);
  double last = lastArrival(net);
  for (size_t seg : treeSegments()) {
    double s = std::min<double>(seg, std::max(1.0, bytes / 2));
    double k = std::max(1.0, std::ceil(bytes / 2 / s));
    double first = std::max(up0.at(s) + down0.at(s), up1.at(s) + down1.at(s)) + last;
    double t = first + (k - 1) * treeCycle(net, s, true);
    if (t < best.seconds) {
      best.seconds = t;
      best.segBytes = seg;
    }
  }
  return best;
}

Candidate halvingDoublingModel(const Net& net, double bytes) {
  int m = net.size(), p = 1;
  while (p * 2 <= m) p *= 2;
  int rem = m - p;
  double g = gammaOf(net.s), t = 0;
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
        beta = std::max(beta, linkOf(net.s, net.members[i], net.members[j]).beta);
      }
  StepCost st = step(net, edges);
  double block = bytes / m;
  // The m-1 arrivals are awaited in turn, but all were sent at once: one late wake.
  return (m - 1) * (st.alpha - st.wake) + st.wake + std::max((m - 1) * block * beta, block * st.perByte) +
         bytes * foldGamma(net.s, f);
}

Candidate orderedRing(const Net& net, double bytes, Fold f) {
  return {"ring", orderedReduceScatterSeconds(net, bytes, f) + ringAllgatherSeconds(net, bytes), 0};
}

// Small: Bruck-allgather every input and fold all m locally; large: direct
// reduce-scatter + Bruck allgather (halving_doubling.cc's same switch).
Candidate orderedHalvingDoubling(const Net& net, double bytes, Fold f) {
  int m = net.size();
  bool large = bytes >= static_cast<double>(envInt("HCOMM_HD_LARGE_BYTES", 256 << 10));
  double t = large ? orderedReduceScatterSeconds(net, bytes, f) + bruckAllgatherSeconds(net, bytes)
                   : bruckAllgatherSeconds(net, m * bytes) + m * bytes * foldGamma(net.s, f);
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
      LinkCost c = linkOf(net.s, net.members[i], net.members[root]);
      t += c.alpha + bytes / 2 * c.beta * net.share;
    }
    gather = std::max(gather, t + m * bytes / 2 * foldGamma(net.s, f));
  }
  double downRate = treeStep(net, false, true).perByte;
  TreePath down0 = treePath(net, false, false, downRate), down1 = treePath(net, true, false, downRate);
  Candidate best{"tree", std::numeric_limits<double>::infinity(), treeSegments().back()};
  for (size_t seg : treeSegments()) {
    double s = std::min<double>(seg, std::max(1.0, bytes / 2));
    double k = std::max(1.0, std::ceil(bytes / 2 / s));
    // both roots hold their halves after the folds: one way down, then a segment a cycle
    double down = std::max(down0.at(s), down1.at(s)) + lastArrival(net) + (k - 1) * treeCycle(net, s, false);
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
  if (depth == levels.size()) {  // only the block holders work: `share` copies of `members`
    CommShape phase = s.duringPhase(members, share);
    Candidate top = bestFlat(Net{phase, members, share}, bytes);
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
  std::vector<int> leaders, inside;  // inside: the ranks of groups that have a ring to run
  for (const auto& g : groups) {
    leaders.push_back(g[0]);
    if (g.size() > 1) inside.insert(inside.end(), g.begin(), g.end());
  }
  Candidate up = hierarchicalModel(s, levels, leaders, depth + 1, bytes / k, share * static_cast<int>(k));
  std::vector<std::pair<int, int>> ring;
  for (size_t i = 0; i < gmax; ++i) ring.push_back({static_cast<int>(i), static_cast<int>((i + 1) % gmax)});
  // The rings inside groups run while a group of one waits (2 + 1: rank 2 sleeps), so
  // they get the CPUs those leave (docs/tuner.md, "CPU share by phase").
  CommShape phase = s.duringPhase(inside, share);
  StepCost st = step(Net{phase, *largest, share}, ring);
  double block = bytes / k;
  up.seconds += (gmax - 1) * (2 * st.alpha + 2 * block * st.perByte + block * gammaOf(phase));
  // The other side of that coin: a rank that waits out a phase gives its CPU away and
  // wakes up to a sleep slice late for the next one (2 + 1: rank 2 after the rings,
  // rank 1 after the leaders' phase).
  int holders = static_cast<int>(k * groups.size()) * share;
  up.seconds += s.idleWake(static_cast<int>(inside.size()) * share) + s.idleWake(holders);
  return up;
}

}  // namespace tuning

using namespace tuning;

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


}  // namespace hcomm
