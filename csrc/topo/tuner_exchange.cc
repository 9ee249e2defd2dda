// The models of the exchange-shaped algorithms: the hierarchical reduce-scatter
// (algo/reduce_scatter_hierarchical.cc) and alltoall, pairwise (algo/pairwise.cc) and
// Bruck (algo/alltoall_bruck.cc). Each follows the cost comment of its file.
#include <algorithm>
#include <map>

#include "common/types.h"
#include "topo/tuner_model.h"

namespace hcomm {
namespace tuning {

namespace {

// Ranks by group of `level` (first appearance), and each rank's index in its group.
void groupsOf(const std::vector<int>& level, std::vector<std::vector<int>>* groups, std::vector<int>* indexOf) {
  std::map<int, size_t> index;
  indexOf->assign(level.size(), 0);
  for (int r = 0; r < static_cast<int>(level.size()); ++r) {
    auto it = index.emplace(level[r], groups->size());
    if (it.second) groups->emplace_back();
    (*indexOf)[r] = static_cast<int>((*groups)[it.first->second].size());
    (*groups)[it.first->second].push_back(r);
  }
}

}  // namespace

double hierarchicalReduceScatterSeconds(const CommShape& s, double bytes) {
  std::vector<std::vector<int>> groups;
  std::vector<int> indexOf, groupOf(s.n);
  std::vector<int> level = s.levels()[0];
  groupsOf(level, &groups, &indexOf);
  for (size_t k = 0; k < groups.size(); ++k)
    for (int r : groups[k]) groupOf[r] = static_cast<int>(k);
  const std::vector<int>* largest = &groups[0];
  for (const auto& g : groups)
    if (g.size() > largest->size()) largest = &g;
  // The input is first repacked by handling member: one local pass over S.
  double g = static_cast<double>(largest->size()), gamma = gammaOf(s);
  double t = bytes * localBeta(s);
  if (g > 1) {  // ring inside the largest group over the whole buffer
    // while a group of one (2 + 1) waits: the rings get the CPUs it leaves
    std::vector<int> inside;
    for (const auto& grp : groups)
      if (grp.size() > 1) inside.insert(inside.end(), grp.begin(), grp.end());
    CommShape phase = s.duringPhase(inside);
    std::vector<std::pair<int, int>> ring;
    for (int i = 0; i < static_cast<int>(g); ++i) ring.push_back({i, (i + 1) % static_cast<int>(g)});
    StepCost st = step(Net{phase, *largest, 1}, ring);
    t += (g - 1) * (st.alpha + bytes / g * st.perByte) + (g - 1) / g * bytes * gammaOf(phase);
  }
  // Every handler sends its partial of block b to b at once (one message per edge).
  std::vector<std::pair<int, int>> edges;
  for (int b = 0; b < s.n; ++b)
    for (size_t k = 0; k < groups.size(); ++k)
      if (static_cast<int>(k) != groupOf[b])
        edges.push_back({groups[k][indexOf[b] % groups[k].size()], b});
  if (!edges.empty()) {
    StepCost st = step(Net{s, allRanks(s), 1}, edges);
    double block = bytes / s.n;
    t += st.alpha + block * st.perByte + (groups.size() - 1.0) * block * gamma;
  }
  return t;
}

}  // namespace tuning

using namespace tuning;

Decision tuneAlltoall(const CommShape& s, size_t bytes, bool even, const std::string& forced,
                      const std::string& why) {
  checkForced("alltoall", alltoallAlgorithms(), forced);
  Net net{s, allRanks(s), 1};
  double block = static_cast<double>(bytes) / std::max(1, s.n);
  double copyBeta = localBeta(s);  // a local pass, priced as shm
  double pairwise = 0, bruck = 2 * bytes * copyBeta;                  // Bruck: rotate in, place out
  for (int k = 1; k < s.n; ++k) {  // pairwise: step k sends block me+k
    std::vector<std::pair<int, int>> edges;
    for (int i = 0; i < s.n; ++i) edges.push_back({i, (i + k) % s.n});
    StepCost st = step(net, edges);
    pairwise += st.alpha + block * st.perByte;
  }
  for (int k = 1; k < s.n; k <<= 1) {  // Bruck: the positions with bit k, packed and unpacked
    int moved = 0;
    for (int i = 1; i < s.n; ++i) moved += (i & k) ? 1 : 0;
    std::vector<std::pair<int, int>> edges;
    for (int i = 0; i < s.n; ++i) edges.push_back({i, (i + k) % s.n});
    StepCost st = step(net, edges);
    bruck += st.alpha + moved * block * (st.perByte + 2 * copyBeta);
  }
  Decision d;
  d.candidates = {Candidate{"pairwise", pairwise, 0}, Candidate{"bruck", bruck, 0}};
  d.candidates[1].applicable = even;
  choose(d, forced, why);
  return d;
}

}  // namespace hcomm
