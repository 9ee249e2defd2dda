// The tuner's building blocks, shared by its files (not part of the tuner's API):
//   tuner_steps.cc       one step's cost on the topology (link classes, NIC load), segment
//                        lists, choosing among candidates
//   tuner_allreduce.cc   allreduce: ring, tree, halving-doubling, hierarchical, ordered folds
//   tuner_collectives.cc broadcast, allgather, reduce_scatter, reduce, gather/scatter
//   tuner_exchange.cc    hierarchical reduce_scatter, alltoall (pairwise, Bruck)
//   tuner.cc             CommShape (the communicator's view of the topology) and the cache
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "topo/tuner.h"

namespace hcomm {
namespace tuning {

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
  // The part of alpha that is a late wake-up (CommShape::lateWake): paid once per wait,
  // so a step whose messages all travel at once pays it once.
  double wake = 0;
};

LinkClass classOf(const CommShape& s, int a, int b);
// A link class's wire as the model prices it: shared memory is a copy by the receiving
// rank's CPU, so its probed beta (one pair, a CPU each) grows by 1 / cpuShare; a NIC's
// link is left as probed.
LinkCost wireLink(const CommShape& s, LinkClass k);
// tcp and rack: the socket calls' CPU per byte on the sending / receiving rank at its
// CPU share (LinkCost::sendCpu / recvCpu over cpuShare); 0 for in-host classes.
double socketSendCpu(const CommShape& s, LinkClass k);
double socketRecvCpu(const CommShape& s, LinkClass k);
// One transfer alone over class k: its wire, or the socket calls at either end when
// they are slower (CPU-bound links). step() instead sums each rank's calls of a step.
LinkCost pricedLink(const CommShape& s, LinkClass k);
LinkCost linkOf(const CommShape& s, int a, int b);
// One local pass over a byte (a copy, priced as shared memory) at the rank's CPU share.
double localBeta(const CommShape& s);
// The reduction kernel per byte at the rank's CPU share.
double gammaOf(const CommShape& s);
StepCost step(const Net& net, const std::vector<std::pair<int, int>>& edges);
const std::vector<size_t>& ringSegments();
const std::vector<size_t>& treeSegments();
// Pipelined work overlaps the wire (B) with reductions (G) once several chunks are in
// flight, when something else (a NIC, the kernel's socket path) moves the bytes.
double overlap(double b, double g, double inFlight);
// 0..n-1: every rank of the shape, in rank order.
std::vector<int> allRanks(const CommShape& s);

// The reduction kernel's bytes per byte of payload: a float32 partial doubles them.
double foldGamma(const CommShape& s, Fold f);
double orderedReduceScatterSeconds(const Net& net, double bytes, Fold f);
double bruckAllgatherSeconds(const Net& net, double total);
double ringAllgatherSeconds(const Net& net, double bytes);
double hierarchicalAllgatherSeconds(const CommShape& s, const std::vector<std::vector<int>>& levels,
                                    const std::vector<int>& members, size_t depth, double bytes, double seg);
double binomialSeconds(const Net& net, double bytes, int root, double seg);
// tuner_exchange.cc: reduce_scatter_hierarchical.cc over the innermost level, S = bytes.
double hierarchicalReduceScatterSeconds(const CommShape& s, double bytes);

// Members of `members` grouped by levels[depth] (first appearance order), or the first
// level at or after depth that splits them (returns levels.size() when none does).
size_t splitAt(const std::vector<std::vector<int>>& levels, const std::vector<int>& members, size_t depth,
               std::vector<std::vector<int>>* groups);
// The best segment of treeSegments() for a pipelined tree cost.
Candidate bestSegment(const std::string& name, const std::function<double(double)>& seconds);
void checkForced(const std::string& collective, const std::vector<std::string>& names, const std::string& forced);
// The smallest applicable prediction, unless `forced` names a candidate.
void choose(Decision& d, const std::string& forced, const std::string& why);
// Whether some level of the hierarchy groups ranks here (else hierarchical is the flat algorithm).
bool hierarchyApplies(const CommShape& s);

}  // namespace tuning
}  // namespace hcomm
