// Hierarchical reduce-scatter(v): reduce inside each group (a host), then only group
// partials cross the groups.
//
// Each block b (rank b's result) has a handler in every group: the member whose index
// in the group is b's index in its own group, modulo the group's size (with equal
// groups, rank b's peer at the same position). Phase 1, inside each group: the members
// ring-reduce-scatter the input repacked so that each member receives, summed over its
// group, the blocks it handles. Phase 2, across groups: every handler sends its partial
// of block b straight to b (the owner handles its own block in its group), and b adds
// the h-1 partials it receives.
//
// Cost, h groups of g ranks, S bytes in all (n = h*g), inside a group alpha_in/beta_in,
// across alpha_x/beta_x:
//   S * beta_copy                                                      repack by handler
//   + (g-1)*(alpha_in + S/g * beta_in) + (g-1)/g * S * gamma          ring inside
//   + alpha_x + (h-1)/h * S * beta_x  (each host's NIC: g ranks x (h-1) blocks of S/n)
//   + (h-1)/n * S * gamma                                              owner adds
// so a host's NIC carries (h-1)/h * S instead of the flat ring's (n-1)/n * S: 2 hosts
// x 2 ranks send 0.5 S instead of 0.75 S. Wins for large messages across hosts with
// several ranks per host; on one host, or one rank per host, it is the flat ring.
// Unequal groups (3+1) work the same; the small group's members handle several blocks.
// Only the innermost level that splits is used (racks above hosts are crossed directly).
//
// Ordered reductions (16-bit SUM/PROD on 3+ ranks, HCOMM_DETERMINISTIC=1): group partials
// cannot give the rank-order fold, so it runs the direct reduce-scatter (ordered.cc),
// priced as such by the tuner.
#include <algorithm>
#include <map>

#include "algo/algorithms.h"

namespace hcomm {
namespace algo {

namespace {

constexpr int kInsideChannel = 8;  // the group's sub-Links (the flat ring uses 0..3)
constexpr int kAcrossChannel = 1;  // handler -> owner partials, on the parent Links

struct Placement {
  std::vector<std::vector<int>> groups;  // ranks by group (first appearance), ascending
  std::vector<int> groupOf, indexOf;     // per rank
};

Placement place(const std::vector<int>& group) {
  Placement p;
  std::map<int, size_t> index;
  int n = static_cast<int>(group.size());
  p.groupOf.resize(n);
  p.indexOf.resize(n);
  for (int r = 0; r < n; ++r) {
    auto it = index.emplace(group[r], p.groups.size());
    if (it.second) p.groups.emplace_back();
    p.groupOf[r] = static_cast<int>(it.first->second);
    p.indexOf[r] = static_cast<int>(p.groups[it.first->second].size());
    p.groups[it.first->second].push_back(r);
  }
  return p;
}

// The rank of group k that handles block b.
int handler(const Placement& p, int k, int b) {
  const std::vector<int>& g = p.groups[k];
  return g[p.indexOf[b] % g.size()];
}

}  // namespace

void reduceScattervHierarchical(Links& l, const void* inv, void* outv, const std::vector<size_t>& counts,
                                const std::vector<int>& group) {
  if (l.ordered()) return reduceScattervOrdered(l, inv, outv, counts);  // see the header
  const char* in = static_cast<const char*>(inv);
  char* out = static_cast<char*>(outv);
  int n = l.size(), me = l.rank();
  size_t es = l.elemSize();
  Placement p = place(group);
  const std::vector<int>& mine = p.groups[p.groupOf[me]];
  int g = static_cast<int>(mine.size());
  std::vector<size_t> displ(n + 1, 0);
  for (int b = 0; b < n; ++b) displ[b + 1] = displ[b] + counts[b];

  // Phase 1: pack by handling member (then block order), ring-reduce-scatter inside.
  std::vector<std::vector<int>> handled(g);  // blocks per member index of my group
  for (int b = 0; b < n; ++b) handled[p.indexOf[b] % g].push_back(b);
  std::vector<size_t> insideCounts(g, 0);
  char* packed = l.scratch(displ[n] * es);
  size_t at = 0;
  for (int t = 0; t < g; ++t)
    for (int b : handled[t]) {
      l.copy(packed + at * es, in + displ[b] * es, counts[b] * es);
      at += counts[b];
      insideCounts[t] += counts[b];
    }
  int myIndex = p.indexOf[me];
  char* part = l.scratch(insideCounts[myIndex] * es);
  if (g > 1) {
    Links inside = l.sub(mine, kInsideChannel);
    reduceScattervRing(inside, packed, part, insideCounts);
  } else {
    l.copy(part, packed, insideCounts[myIndex] * es);
  }

  // Phase 2: partials to their owners; my own block's partial is the start of my sum.
  std::vector<RequestPtr> reqs;
  std::vector<std::pair<char*, size_t>> incoming;
  size_t off = 0;
  for (int b : handled[myIndex]) {
    if (b == me) l.copy(out, part + off * es, counts[b] * es);
    else if (counts[b]) reqs.push_back(l.isend(b, part + off * es, counts[b] * es, kAcrossChannel));
    off += counts[b];
  }
  size_t mineBytes = counts[me] * es;
  if (mineBytes) {
    for (int k = 0; k < static_cast<int>(p.groups.size()); ++k) {
      if (k == p.groupOf[me]) continue;
      char* slot = l.scratch(mineBytes);
      reqs.push_back(l.irecv(handler(p, k, me), slot, mineBytes, kAcrossChannel));
      incoming.push_back({slot, mineBytes});
    }
  }
  l.waitAll(reqs);
  for (auto& got : incoming) l.reduceLocal(out, out, got.first, got.second);
}

}  // namespace algo
}  // namespace hcomm
