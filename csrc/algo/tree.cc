// Double binary tree allreduce (as NCCL's tree): two binary trees over the same ranks,
// built so that the inner ranks of one are leaves of the other; each tree carries half
// of the data, reduced up to its root then broadcast down, pipelined in segments.
//
// Tree 0 is a binary heap over ranks (parent of r is (r-1)/2); tree 1 is the same heap
// over mirrored ranks n-1-r, so every rank sends and receives about the same volume.
//
// Cost, n ranks, S bytes, k segments of s = S/2k per tree, depth d = floor(log2 n): a
// rank handles segment j of tree 0, then of tree 1, blocking on each receive, and only
// then segment j+1, so the trees do not pipeline past each other: rank n-1 (deepest leaf
// of tree 0, root of tree 1) sends tree 0's segment j+1 only once tree 1 reduced segment
// j, which waited for rank 0 (root of tree 0, deepest leaf of tree 1) to reduce tree 0's
// segment j. Each segment costs both paths up (2d hops) and both down (2d hops); a parent
// of two waits for them in turn (two receives), and sends to both at once (one NIC).
// One segment: 3d hops (tree 0's broadcast overlaps tree 1's way up; traced: 3 hops on
// 3 ranks, 6 on 4) plus a second receive at each parent of two on the paths up;
//   T ~ (4d*k - d)*(alpha + s*beta) + S*gamma,  at least 2d S*beta for large S
// (3 hosts x 1: 3 S*beta, both broadcast hops sharing their parent's NIC).
// The tuner prices these paths hop by hop (topo/tuner_allreduce.cc, treeModel).
// Wins for small-to-medium messages on many ranks: latency grows with log n, not n
// (bytes grow with it too: the segments do not overlap across depths).
//
// Ordered reductions (16-bit SUM/PROD on 3+ ranks, HCOMM_DETERMINISTIC=1; ordered.cc):
// partials folded up a tree are in tree order and rounded per hop, so each tree's root
// (rank 0, rank n-1) takes its half straight from every rank and folds it in rank
// order, then the broadcast down the trees runs as above:
//   T ~ (n-1)*(alpha + S/2*beta) + S/2*gamma*n*e + 2d*k*(alpha + s*beta)
// (e = 2 for 16-bit dtypes). The roots take in (n-1)*S/2: for small messages.
#include <algorithm>
#include <cstring>

#include "algo/algorithms.h"

namespace hcomm {
namespace algo {

namespace {

struct TreeNode {
  int parent = -1;
  int child[2] = {-1, -1};
};

TreeNode heapNode(int rank, int n, bool mirrored) {
  auto pos = [&](int r) { return mirrored ? n - 1 - r : r; };  // rank <-> heap position
  int p = pos(rank);
  TreeNode t;
  if (p > 0) t.parent = pos((p - 1) / 2);
  for (int c = 0; c < 2; ++c)
    if (2 * p + 1 + c < n) t.child[c] = pos(2 * p + 1 + c);
  return t;
}

struct Segment {
  size_t off, len;  // bytes
};

// Reduce phase for one segment of one tree: fold the children into `out`, pass it up.
void reduceUp(Links& l, const TreeNode& t, const char* in, char* out, Segment s, int channel,
              std::vector<RequestPtr>& sends) {
  const char* acc = in + s.off;
  for (int c = 0; c < 2; ++c) {
    if (t.child[c] < 0) continue;
    l.wait(l.irecvReduce(t.child[c], out + s.off, acc, s.len, channel));
    acc = out + s.off;
  }
  if (t.parent >= 0) {
    sends.push_back(l.isend(t.parent, acc, s.len, channel));
  } else if (acc != out + s.off) {
    l.copy(out + s.off, acc, s.len);  // a root without children (n == 1)
  }
}

void broadcastDown(Links& l, const TreeNode& t, char* out, Segment s, int channel,
                   std::vector<RequestPtr>& sends) {
  if (t.parent >= 0) l.wait(l.irecv(t.parent, out + s.off, s.len, channel));
  for (int c = 0; c < 2; ++c)
    if (t.child[c] >= 0) sends.push_back(l.isend(t.child[c], out + s.off, s.len, channel));
}

}  // namespace

void allreduceTree(Links& l, const void* inv, void* outv, size_t count, size_t segBytes) {
  const char* in = static_cast<const char*>(inv);
  char* out = static_cast<char*>(outv);
  int n = l.size();
  size_t es = l.elemSize();
  TreeNode trees[2] = {heapNode(l.rank(), n, false), heapNode(l.rank(), n, true)};
  size_t half[2] = {count / 2, count - count / 2};  // elements carried by each tree
  size_t base[2] = {0, count / 2};
  size_t segElems = std::max<size_t>(1, segBytes / es);
  size_t nSeg = (std::max(half[0], half[1]) + segElems - 1) / segElems;
  auto segment = [&](int t, size_t k) {
    size_t b = std::min(k * segElems, half[t]), e = std::min(b + segElems, half[t]);
    return Segment{(base[t] + b) * es, (e - b) * es};
  };
  std::vector<RequestPtr> sends;
  if (l.ordered()) {  // see the header: each tree's root folds its half straight from every rank
    for (bool folding : {false, true})  // every send is posted before a root starts folding
      for (int t = 0; t < 2; ++t) {
        int root = t ? n - 1 : 0;
        if ((l.rank() == root) == folding) rootFold(l, in + base[t] * es, out + base[t] * es, half[t], root, 2 * t, sends);
      }
    l.waitAll(sends);  // the broadcast below may overwrite `in` (in place)
    sends.clear();
  } else {
    for (size_t k = 0; k < nSeg; ++k)
      for (int t = 0; t < 2; ++t)
        if (segment(t, k).len) reduceUp(l, trees[t], in, out, segment(t, k), 2 * t, sends);
  }
  for (size_t k = 0; k < nSeg; ++k)
    for (int t = 0; t < 2; ++t)
      if (segment(t, k).len) broadcastDown(l, trees[t], out, segment(t, k), 2 * t + 1, sends);
  l.waitAll(sends);
}

}  // namespace algo
}  // namespace hcomm
