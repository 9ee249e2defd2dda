// Hierarchical allreduce over any number of levels (host, rack, ...).
//
// At each level the ranks fall into groups (the ranks of one host). With k the size
// of the smallest group, each group reduce-scatters the buffer into k blocks (ring,
// inside the group: shared memory at the host level); the ranks holding block i in
// every group - one per group - allreduce that block among themselves, recursively
// one level up; at the top the flat algorithm the tuner chose runs. Each group then
// allgathers the blocks. Groups larger than k give their extra ranks an empty block:
// they take part in the reduce-scatter and the allgather only (remainder handling,
// e.g. 3+1 ranks per host).
//
// Cost, h groups of g ranks, S bytes, ring inside and the top algorithm A across:
//   2(g-1)*alpha_in + 2(g-1)/g * S * beta_in + (g-1)/g * S * gamma     (inside)
//   + T_A(h ranks, S/g bytes)  with the g leader groups sharing each host's NIC
// so a host's NIC carries 2(h-1)/h * S instead of the flat ring's 2(n-1)/n * S:
// 1.5x less for 2 hosts x 2 ranks. Wins for large messages across hosts with several
// ranks per host; a flat algorithm wins on one host and for latency-bound sizes.
//
// Ordered reductions (16-bit SUM/PROD on 3+ ranks, HCOMM_DETERMINISTIC=1; ordered.cc):
// group partials cannot give the rank-order fold, so every contribution travels to its
// block's owner unreduced (direct reduce-scatter over all ranks: (n-g)/n * S of each
// rank's bytes cross hosts, g of them per host NIC) and the result spreads by this
// file's hierarchical allgather:
//   T ~ T_direct_reduce_scatter(n, S) + T_hier_allgather(S)
// It keeps the allgather's saving, not the reduce-scatter's.
//
// Broadcast, same levels: the root's group leader is the root itself, every other
// group's leader is its lowest rank. The leaders broadcast among themselves one level
// up (recursively; binomial at the top), then each group broadcasts from its leader
// (binomial, pipelined in segments).
//   T = T_binomial(h leaders, S) across + T_binomial(g, S) inside
// Only ceil(log2 h) hops cross hosts and each host's NIC takes S in once; a flat
// binomial tree can put several hops of one round through the same NIC.
//
// Allgather(v), same levels. Equal groups and a single level that splits (hosts, no
// racks): rank i of every group rings with rank i of the others (g rings of h ranks at
// once, each rank's block straight into place), then each group rings inside, every
// step passing the h blocks a member collected.
//   T = (h-1)*(alpha_x + S/n * g * beta_x)    g rings share each host's NIC
//     + (g-1)*(h*alpha_in + S/g * beta_in)     ring inside
// Otherwise (unequal groups such as 3+1, or racks above hosts): each group gathers its
// ranks' blocks into its leader (packed in group order), the leaders allgather the
// packed group blocks one level up (recursively; ring at the top), each leader unpacks
// into rank order and broadcasts the whole result inside its group.
//   T = (g-1)*alpha_in + (g-1)/g * S_grp * beta_in            gather inside
//     + (h-1)*(alpha_x + S_big * beta_x)                         ring across leaders
//     + S * beta_in + (ceil(log2 g) + k - 1) * (alpha_in + S/k * beta_in)  unpack, broadcast
// where S_big is the largest group's packed block (g_max/n * S): every ring step
// forwards every block at once, so the largest paces it (2 + 1: 2S/3, as the flat ring).
// With equal groups a host's NIC carries (h-1)/h * S instead of the flat ring's
// (n-1)/n * S: wins for large messages across hosts with several ranks per host.
#include <algorithm>
#include <cstring>
#include <map>
#include <numeric>

#include "algo/algorithms.h"

namespace hcomm {
namespace algo {

namespace {

// Channel offsets of one level's sub-groups, relative to the Links they split: the
// flat algorithms use channels 0..3, so 8 apart keeps every phase's messages apart,
// and nesting adds kLevelStride per level (at most 10 levels in 256 channels).
constexpr int kReduceScatterChannel = 8;
constexpr int kAllgatherChannel = 16;
constexpr int kLevelStride = 24;

struct Grouping {
  std::vector<std::vector<int>> groups;  // ranks of the current Links, by group, ascending
  int mine = 0;                          // this rank's group
  int local = 0;                         // this rank's index in it
  size_t smallest = 0;
};

Grouping groupBy(const std::vector<int>& key, int me) {
  Grouping g;
  std::map<int, size_t> index;
  for (int r = 0; r < static_cast<int>(key.size()); ++r) {
    auto it = index.emplace(key[r], g.groups.size());
    if (it.second) g.groups.emplace_back();
    g.groups[it.first->second].push_back(r);
  }
  g.smallest = g.groups[0].size();
  for (size_t i = 0; i < g.groups.size(); ++i) {
    g.smallest = std::min(g.smallest, g.groups[i].size());
    auto pos = std::find(g.groups[i].begin(), g.groups[i].end(), me);
    if (pos != g.groups[i].end()) {
      g.mine = static_cast<int>(i);
      g.local = static_cast<int>(pos - g.groups[i].begin());
    }
  }
  return g;
}

void level(Links& l, const void* in, void* out, size_t count, const std::vector<std::vector<int>>& levels,
           size_t depth, const FlatAllreduce& top) {
  if (depth == levels.size()) {
    if (l.size() > 1) top(l, in, out, count);
    else if (in != out) l.copy(out, in, count * l.elemSize());
    return;
  }
  Grouping g = groupBy(levels[depth], l.rank());
  const std::vector<int>& group = g.groups[g.mine];
  bool singletons = g.groups.size() == static_cast<size_t>(l.size());
  if (g.groups.size() == 1 || singletons) return level(l, in, out, count, levels, depth + 1, top);  // splits nothing

  size_t k = g.smallest, es = l.elemSize();
  Blocks blocks{count, k};
  std::vector<size_t> counts(group.size(), 0), displ(group.size(), 0);
  for (size_t i = 0; i < k; ++i) {
    counts[i] = blocks.size(i);
    displ[i] = blocks.start(i);
  }
  char* mine = static_cast<char*>(out) + displ[g.local] * es;
  Links inside = l.sub(group, kReduceScatterChannel);
  if (group.size() > 1) reduceScattervRing(inside, in, mine, counts);
  else l.copy(mine, static_cast<const char*>(in) + displ[g.local] * es, counts[g.local] * es);

  if (static_cast<size_t>(g.local) < k && counts[g.local]) {
    std::vector<int> peers;  // block g.local's holders, one per group
    for (const auto& grp : g.groups) peers.push_back(grp[g.local]);
    std::vector<std::vector<int>> upper;
    for (size_t d = depth + 1; d < levels.size(); ++d) {
      upper.emplace_back();
      for (int p : peers) upper.back().push_back(levels[d][p]);
    }
    Links across = l.sub(peers, kLevelStride);
    level(across, mine, mine, counts[g.local], upper, 0, top);
  }
  Links gather = l.sub(group, kAllgatherChannel);
  if (group.size() > 1) allgathervRing(gather, mine, out, counts);
}

}  // namespace

void allreduceHierarchical(Links& l, const void* in, void* out, size_t count,
                           const std::vector<std::vector<int>>& levels, const FlatAllreduce& top) {
  for (const auto& lv : levels)
    if (static_cast<int>(lv.size()) != l.size())
      throw Error("hierarchical allreduce: a level lists " + std::to_string(lv.size()) + " ranks for a group of " +
                  std::to_string(l.size()));
  if (l.ordered()) {  // see the header
    constexpr size_t kSpreadSegment = 512u << 10;  // the broadcast segment inside groups
    return allreduceOrdered(l, in, out, count, [&](Links& ll, const void* mine, void* o, const std::vector<size_t>& c) {
      allgathervHierarchical(ll, mine, o, c, levels, kSpreadSegment);
    });
  }
  level(l, in, out, count, levels, 0, top);
}

namespace {

constexpr int kGatherChannel = 8;
constexpr int kBroadcastChannel = 16;

// Skips levels that split nothing (one group, or every rank alone).
size_t firstSplitting(const std::vector<std::vector<int>>& levels, size_t depth, int me, Grouping* out) {
  for (; depth < levels.size(); ++depth) {
    *out = groupBy(levels[depth], me);
    if (out->groups.size() > 1 && out->groups.size() < levels[depth].size()) break;
  }
  return depth;
}

// levels[d] restricted to `members` (ranks of the current Links), for the Links of those members.
std::vector<std::vector<int>> upperLevels(const std::vector<std::vector<int>>& levels, size_t from,
                                          const std::vector<int>& members) {
  std::vector<std::vector<int>> upper;
  for (size_t d = from; d < levels.size(); ++d) {
    upper.emplace_back();
    for (int p : members) upper.back().push_back(levels[d][p]);
  }
  return upper;
}

void broadcastLevel(Links& l, void* buf, size_t count, int root, const std::vector<std::vector<int>>& levels,
                    size_t depth, size_t segBytes) {
  Grouping g;
  depth = firstSplitting(levels, depth, l.rank(), &g);
  if (depth == levels.size()) {
    if (l.size() > 1) broadcastBinomial(l, buf, count, root, segBytes);
    return;
  }
  std::vector<int> leaders;
  int rootGroup = 0;
  for (size_t i = 0; i < g.groups.size(); ++i) {
    const auto& grp = g.groups[i];
    bool hasRoot = std::find(grp.begin(), grp.end(), root) != grp.end();
    leaders.push_back(hasRoot ? root : grp[0]);
    if (hasRoot) rootGroup = static_cast<int>(i);
  }
  const std::vector<int>& group = g.groups[g.mine];
  int leader = leaders[g.mine];
  if (l.rank() == leader) {
    Links across = l.sub(leaders, kLevelStride);
    broadcastLevel(across, buf, count, rootGroup, upperLevels(levels, depth + 1, leaders), 0, segBytes);
  }
  if (group.size() > 1) {
    Links inside = l.sub(group, kBroadcastChannel);
    int localLeader = static_cast<int>(std::find(group.begin(), group.end(), leader) - group.begin());
    broadcastBinomial(inside, buf, count, localLeader, segBytes);
  }
}

struct Range {
  size_t off, bytes;
};

// Ring allgather in which rank r's part is the byte ranges parts[r] of out (already in
// place on rank r); both ends post a step's ranges in the same order.
void ringRanges(Links& l, char* out, const std::vector<std::vector<Range>>& parts) {
  int n = l.size(), r = l.rank();
  int right = (r + 1) % n, left = (r + n - 1) % n;
  std::vector<RequestPtr> reqs;
  for (int s = 0; s < n - 1; ++s) {
    reqs.clear();
    for (const Range& x : parts[(r - s + n) % n])
      if (x.bytes) reqs.push_back(l.isend(right, out + x.off, x.bytes));
    for (const Range& x : parts[(r - s - 1 + 2 * n) % n])
      if (x.bytes) reqs.push_back(l.irecv(left, out + x.off, x.bytes));
    l.waitAll(reqs);
  }
}

// The peer-ring scheme applies: equal groups, and no level above splits one rank per group.
bool peerRings(const Grouping& g, const std::vector<std::vector<int>>& levels, size_t depth) {
  for (const auto& grp : g.groups)
    if (grp.size() != g.groups[0].size()) return false;
  std::vector<int> firsts;
  for (const auto& grp : g.groups) firsts.push_back(grp[0]);
  auto upper = upperLevels(levels, depth + 1, firsts);
  Grouping ignored;
  return firstSplitting(upper, 0, 0, &ignored) == upper.size();
}

void allgatherLevel(Links& l, const void* in, void* outv, const std::vector<size_t>& counts,
                    const std::vector<std::vector<int>>& levels, size_t depth, size_t segBytes) {
  char* out = static_cast<char*>(outv);
  size_t es = l.elemSize();
  int n = l.size(), me = l.rank();
  std::vector<size_t> displ(n + 1, 0);
  for (int r = 0; r < n; ++r) displ[r + 1] = displ[r] + counts[r];
  Grouping g;
  depth = firstSplitting(levels, depth, me, &g);
  if (depth == levels.size()) {
    allgathervRing(l, in, out, counts);
    return;
  }
  const std::vector<int>& group = g.groups[g.mine];
  auto range = [&](int r) { return Range{displ[r] * es, counts[r] * es}; };
  if (peerRings(g, levels, depth)) {
    if (counts[me] && in != out + displ[me] * es) l.copy(out + displ[me] * es, in, counts[me] * es);
    std::vector<int> peers;
    std::vector<std::vector<Range>> across, inside(group.size());
    for (const auto& grp : g.groups) {
      peers.push_back(grp[g.local]);
      across.push_back({range(grp[g.local])});
      for (size_t i = 0; i < grp.size(); ++i) inside[i].push_back(range(grp[i]));
    }
    Links peersLinks = l.sub(peers, kLevelStride);
    ringRanges(peersLinks, out, across);
    Links groupLinks = l.sub(group, kGatherChannel);
    ringRanges(groupLinks, out, inside);
    return;
  }
  std::vector<size_t> groupCounts;  // elements per group, the upper level's per-rank counts
  std::vector<size_t> packedAt(g.groups.size() + 1, 0);
  for (size_t i = 0; i < g.groups.size(); ++i) {
    size_t c = 0;
    for (int r : g.groups[i]) c += counts[r];
    groupCounts.push_back(c);
    packedAt[i + 1] = packedAt[i] + c;
  }
  if (g.local != 0) {  // a member: hand the block to the leader, get everything back
    Links inside = l.sub(group, kGatherChannel);
    if (counts[me]) inside.send(0, in, counts[me] * es);
  } else {
    // Leader: the group's blocks packed in group order (its own first) in a scratch
    // buffer laid out as the upper level's output, so the upper level works in place.
    char* packed = l.scratch(packedAt.back() * es);
    char* mine = packed + packedAt[g.mine] * es;
    std::vector<RequestPtr> recvs;
    if (group.size() > 1) {
      Links inside = l.sub(group, kGatherChannel);
      size_t off = counts[me];
      for (size_t i = 1; i < group.size(); ++i) {
        size_t c = counts[group[i]];
        if (c) recvs.push_back(inside.irecv(static_cast<int>(i), mine + off * es, c * es));
        off += c;
      }
      if (counts[me]) l.copy(mine, in, counts[me] * es);
      inside.waitAll(recvs);
    } else if (counts[me]) {
      l.copy(mine, in, counts[me] * es);
    }
    std::vector<int> leaders;
    for (const auto& grp : g.groups) leaders.push_back(grp[0]);
    Links across = l.sub(leaders, kLevelStride);
    allgatherLevel(across, mine, packed, groupCounts, upperLevels(levels, depth + 1, leaders), 0, segBytes);
    for (size_t i = 0; i < g.groups.size(); ++i) {  // unpack into rank order
      size_t off = packedAt[i];
      for (int r : g.groups[i]) {
        if (counts[r] && !(r == me && in == out + displ[r] * es))
          l.copy(out + displ[r] * es, packed + off * es, counts[r] * es);
        off += counts[r];
      }
    }
  }
  if (group.size() > 1) {
    Links inside = l.sub(group, kBroadcastChannel);
    broadcastBinomial(inside, out, displ[n], 0, segBytes);
  }
}

}  // namespace

void broadcastHierarchical(Links& l, void* buf, size_t count, int root, const std::vector<std::vector<int>>& levels,
                           size_t segBytes) {
  for (const auto& lv : levels)
    if (static_cast<int>(lv.size()) != l.size())
      throw Error("hierarchical broadcast: a level lists " + std::to_string(lv.size()) + " ranks for a group of " +
                  std::to_string(l.size()));
  broadcastLevel(l, buf, count, root, levels, 0, segBytes);
}

void allgathervHierarchical(Links& l, const void* in, void* out, const std::vector<size_t>& counts,
                            const std::vector<std::vector<int>>& levels, size_t segBytes) {
  for (const auto& lv : levels)
    if (static_cast<int>(lv.size()) != l.size())
      throw Error("hierarchical allgather: a level lists " + std::to_string(lv.size()) + " ranks for a group of " +
                  std::to_string(l.size()));
  allgatherLevel(l, in, out, counts, levels, 0, segBytes);
}

}  // namespace algo
}  // namespace hcomm
