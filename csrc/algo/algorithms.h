// The collective algorithms, one per file; each file's header gives its cost.
// Pointers are raw bytes, counts are elements of links.dtype(). Every function assumes
// the communicator already handled size 1, count 0, validation, and the pre/post steps
// of AVG and PREMUL_SUM (so the op here is SUM, PROD, MIN or MAX).
#pragma once
#include <cstddef>
#include <functional>
#include <vector>

#include "algo/links.h"

namespace hcomm {
namespace algo {

// allreduce
void allreduceRing(Links& l, const void* in, void* out, size_t count, size_t segBytes);
void allreduceTree(Links& l, const void* in, void* out, size_t count, size_t segBytes);
void allreduceHalvingDoubling(Links& l, const void* in, void* out, size_t count);
// hierarchical: levels[k][r] is rank r's group at level k (0 innermost, e.g. host then
// rack); `top` is the flat allreduce run among one rank per group at the top.
using FlatAllreduce = std::function<void(Links&, const void* in, void* out, size_t count)>;
void allreduceHierarchical(Links& l, const void* in, void* out, size_t count,
                           const std::vector<std::vector<int>>& levels, const FlatAllreduce& top);

// ring reduce-scatter / allgather with per-rank counts (the v variants)
void reduceScattervRing(Links& l, const void* in, void* out, const std::vector<size_t>& counts);
void allgathervRing(Links& l, const void* in, void* out, const std::vector<size_t>& counts);
// reduce_scatter_hierarchical.cc: group[r] is rank r's group (its host); reduce inside
// the groups, then only group partials cross them.
void reduceScattervHierarchical(Links& l, const void* in, void* out, const std::vector<size_t>& counts,
                                const std::vector<int>& group);

// rooted, binomial trees pipelined in segments
void broadcastBinomial(Links& l, void* buf, size_t count, int root, size_t segBytes);

// hierarchical broadcast and allgather(v) over the same levels as allreduceHierarchical:
// binomial among group leaders level by level, then binomial inside each group (segBytes
// its segment); allgather gathers into the leaders and rings among them at the top.
void broadcastHierarchical(Links& l, void* buf, size_t count, int root, const std::vector<std::vector<int>>& levels,
                           size_t segBytes);
void allgathervHierarchical(Links& l, const void* in, void* out, const std::vector<size_t>& counts,
                            const std::vector<std::vector<int>>& levels, size_t segBytes);
void reduceBinomial(Links& l, const void* in, void* out, size_t count, int root, size_t segBytes);

// linear (root talks to every rank directly)
void gatherLinear(Links& l, const void* in, void* out, size_t count, int root);
void scatterLinear(Links& l, const void* in, void* out, size_t count, int root);
// binomial tree (binomial.cc): ceil(log2 n) steps, a rank forwarding its subtree's blocks
void gatherBinomial(Links& l, const void* in, void* out, size_t count, int root);
void scatterBinomial(Links& l, const void* in, void* out, size_t count, int root);

// pairwise exchange; displacements in elements
void alltoallvPairwise(Links& l, const void* in, const std::vector<size_t>& sendCounts,
                       const std::vector<size_t>& sendDispls, void* out,
                       const std::vector<size_t>& recvCounts, const std::vector<size_t>& recvDispls);

// alltoall_bruck.cc: equal blocks of `count` elements, ceil(log2 n) steps (small messages).
void alltoallBruck(Links& l, const void* in, void* out, size_t count);

void barrierDissemination(Links& l);

// Ordered reductions (ordered.cc; Links::ordered()): the rank-order fold in the
// accumulation type, rounded once, whatever the algorithm.
// The owner's side of the fold: `own` is this rank's contribution; every other rank
// sends `count` elements on `channel`.
// `acc`: room for the running partial (count * l.accSize() bytes), or null to allocate it.
void foldFromAll(Links& l, const void* own, void* out, size_t count, int channel, char* acc = nullptr);
// The same fold over contributions already here, inputs[k] being rank k's.
void foldLocal(Links& l, const std::vector<const char*>& inputs, void* out, size_t count);
// Direct reduce-scatter: block b goes straight to rank b, which folds it; out: counts[me].
void reduceScattervOrdered(Links& l, const void* in, void* out, const std::vector<size_t>& counts);
// How an ordered allreduce spreads the reduced blocks (an allgatherv: in = this rank's block).
using OrderedSpread =
    std::function<void(Links&, const void* in, void* out, const std::vector<size_t>& counts)>;
void allreduceOrdered(Links& l, const void* in, void* out, size_t count, const OrderedSpread& spread);
// Small messages: Bruck-allgather every input, each rank folds all n locally.
void allreduceGatherFold(Links& l, const void* in, void* out, size_t count);
// Every rank but `root` sends its `count` elements to it (the sends are appended); the root folds.
void rootFold(Links& l, const void* in, void* out, size_t count, int root, int channel,
              std::vector<RequestPtr>& sends);
void reduceOrdered(Links& l, const void* in, void* out, size_t count, int root);
// Bruck allgather(v): ceil(log2 n) steps, (n-1)/n of the bytes per rank.
void allgathervBruck(Links& l, const void* in, void* out, const std::vector<size_t>& counts);

}  // namespace algo
}  // namespace hcomm
