// The models of the other collectives: broadcast, allgather(v), reduce_scatter(v),
// reduce, gather and scatter. Each follows the cost comment of its algorithm file.
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

// Bruck allgather of `total` bytes: ceil(log2 m) steps, rank i sending to i - have,
// into a fresh rotated buffer that is then copied out in rank order: two local passes
// over `total` (the copy and the new buffer's first touch), which lose to the ring's
// extra steps for large messages (measured 4 ranks, 64 MiB float16: 330-380 ms against
// the ring's 150 ms).
double bruckAllgatherSeconds(const Net& net, double total) {
  int m = net.size();
  double t = 2 * total * localBeta(net.s);
  for (int have = 1; have < m; have *= 2) {
    std::vector<std::pair<int, int>> edges;
    for (int i = 0; i < m; ++i) edges.push_back({i, (i - have + m) % m});
    StepCost st = step(net, edges);
    t += st.alpha + std::min(have, m - have) * total / m * st.perByte;
  }
  return t;
}

// binomial.cc's tree over net.members (index 0..m-1), rooted at index `root`, pipelined
// in segments of `seg`: the first segment reaches the deepest leaf after the path's
// hops; the others follow at the pace of the busiest sender or host NIC (a node sends
// every segment to each of its children; a host's NIC carries every crossing hop; a
// node's CPU makes the socket calls of its crossing hops, sending and receiving).
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
  auto cost = [&](int a, int b) { return linkOf(s, net.members[a], net.members[b]); };
  for (int v = 1; v < m; ++v) {  // v in tree order: a parent's v is below its children's
    int r = (v + root) % m, p = parent[r];
    LinkCost c = cost(p, r);
    pathTime[r] = pathTime[p] + c.alpha + segBytes * c.beta * net.share;
    path = std::max(path, pathTime[r]);
    alphaMax = std::max(alphaMax, c.alpha);
    int hp = s.host[net.members[p]], hr = s.host[net.members[r]];
    if (hp != hr) {  // the NICs carry the wire's bytes; each end's CPU its socket calls
      LinkClass k = classOf(s, net.members[p], net.members[r]);
      hostOut[hp] += wireLink(s, k).beta * net.share;
      hostIn[hr] += wireLink(s, k).beta * net.share;
      nodeBytes[p] += socketSendCpu(s, k);
      nodeBytes[r] += socketRecvCpu(s, k);
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

// hierarchical.cc's allgatherv over members holding block[i] bytes each (equal at the
// bottom; at the leaders' level each leader holds its group's packed blocks, so groups of
// unequal size give unequal blocks): gather into each group's leader, leaders allgather
// one level up (ring at the top), the leader unpacks (one local copy) and broadcasts
// inside. A ring step carries every block at once (each rank forwards one), so each of
// its steps lasts as long as the largest block: 2 + 1 moves 2S/3 across, not S/2.
static double allgatherBlocksSeconds(const CommShape& s, const std::vector<std::vector<int>>& levels,
                                     const std::vector<int>& members, const std::vector<double>& block, size_t depth,
                                     double seg) {
  double bytes = 0, largest = 0;
  std::map<int, double> blockOf;
  for (size_t i = 0; i < members.size(); ++i) {
    bytes += block[i];
    largest = std::max(largest, block[i]);
    blockOf[members[i]] = block[i];
  }
  double m = static_cast<double>(members.size());
  std::vector<std::vector<int>> groups;
  depth = splitAt(levels, members, depth, &groups);
  if (depth == levels.size()) return ringAllgatherSeconds(Net{s, members, 1}, m * largest);
  bool equal = true;
  for (const auto& g : groups) equal &= g.size() == groups[0].size();
  std::vector<int> firsts;
  for (const auto& g : groups) firsts.push_back(g[0]);
  std::vector<std::vector<int>> upper;
  if (equal && splitAt(levels, firsts, depth + 1, &upper) == levels.size()) {
    // Peer rings: rank i of every group rings with its peers (the g rings share each
    // NIC), then a ring inside each group passes h blocks a step (the largest block
    // paces both).
    double h = static_cast<double>(groups.size()), g = static_cast<double>(groups[0].size());
    double across = ringAllgatherSeconds(Net{s, firsts, static_cast<int>(g)}, h * largest);
    std::vector<std::pair<int, int>> ring;
    for (int i = 0; i < static_cast<int>(g); ++i) ring.push_back({i, (i + 1) % static_cast<int>(g)});
    StepCost st = step(Net{s, groups[0], 1}, ring);
    return across + (g - 1) * (h * st.alpha + h * largest * st.perByte);
  }
  std::vector<int> leaders;
  std::vector<double> packed;  // each leader's block one level up: its group's blocks
  double gather = 0, inside = 0;
  for (const auto& g : groups) {  // the leader receives every member's block (shm at the host level)
    leaders.push_back(g[0]);
    double others = 0;
    for (size_t i = 1; i < g.size(); ++i) others += blockOf[g[i]];
    packed.push_back(others + blockOf[g[0]]);
    for (size_t i = 1; i < g.size(); ++i) {
      LinkCost c = linkOf(s, g[0], g[i]);
      gather = std::max(gather, c.alpha + others * c.beta);
    }
    inside = std::max(inside, binomialSeconds(Net{s, g, 1}, bytes, 0, seg));
  }
  double unpack = bytes * localBeta(s);  // one local copy
  return gather + allgatherBlocksSeconds(s, levels, leaders, packed, depth + 1, seg) + unpack + inside;
}

double hierarchicalAllgatherSeconds(const CommShape& s, const std::vector<std::vector<int>>& levels,
                                    const std::vector<int>& members, size_t depth, double bytes, double seg) {
  std::vector<double> block(members.size(), bytes / std::max<size_t>(1, members.size()));
  return allgatherBlocksSeconds(s, levels, members, block, depth, seg);
}

}  // namespace tuning

using namespace tuning;

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
  if (fold != Fold::PLAIN && s.n > 2) {  // ring.cc (and hierarchical) run the direct reduce-scatter then
    d.candidates = {Candidate{"ring", direct, 0}, Candidate{"direct", direct, 0}, Candidate{"hierarchical", direct, 0}};
  } else {
    // ring.cc: n-1 steps, each passing a block on and reducing the one received.
    std::vector<std::pair<int, int>> edges;
    for (int i = 0; i < s.n; ++i) edges.push_back({i, (i + 1) % s.n});
    StepCost st = step(net, edges);
    double ring = (s.n - 1) * (st.alpha + b / s.n * st.perByte) + (s.n - 1.0) / s.n * b * gammaOf(s);
    d.candidates = {Candidate{"ring", ring, 0}, Candidate{"direct", direct, 0},
                    Candidate{"hierarchical", hierarchicalReduceScatterSeconds(s, b), 0}};
  }
  d.candidates[2].applicable = hierarchyApplies(s);
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
      LinkCost c = linkOf(s, i, root);
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
      return binomialSeconds(net, b, root, seg) + levels * b * gammaOf(s);
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
  auto link = [&](int a, int c) { return linkOf(s, a, c); };
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
  double copy = s.n * b * localBeta(s);
  Decision d;
  d.candidates = {Candidate{"linear", linear, 0}, Candidate{"binomial", levels * alpha + atRoot + copy, 0}};
  choose(d, forced, why);
  return d;
}

}  // namespace hcomm
