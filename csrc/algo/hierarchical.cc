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
#include <algorithm>
#include <cstring>
#include <map>

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
    else if (in != out) std::memcpy(out, in, count * l.elemSize());
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
  else std::memcpy(mine, static_cast<const char*>(in) + displ[g.local] * es, counts[g.local] * es);

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
  level(l, in, out, count, levels, 0, top);
}

}  // namespace algo
}  // namespace hcomm
