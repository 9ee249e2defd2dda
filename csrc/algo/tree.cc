// Double binary tree allreduce (as NCCL's tree): two binary trees over the same ranks,
// built so that the inner ranks of one are leaves of the other; each tree carries half
// of the data, reduced up to its root then broadcast down, pipelined in segments.
//
// Tree 0 is a binary heap over ranks (parent of r is (r-1)/2); tree 1 is the same heap
// over mirrored ranks n-1-r, so every rank sends and receives about the same volume.
//
// Cost, n ranks, S bytes, k segments of s = S/2k per tree, depth d = floor(log2 n): the
// two trees advance side by side (every receive posted without blocking, whichever
// tree's message lands first is handled first, as ring.cc's chunks), and within a tree
// segment j+1 climbs while segment j comes down. A parent of two folds child[0]'s
// segment, then child[1]'s into it (a second receive, posted once the first is done:
// the sum's order stays in + child[0] + child[1]); child[0]'s next segment arrives
// meanwhile. Each rank sends about 2S and receives about 2S (inner in one tree, a leaf
// in the other): up S/2 per tree it is not the root of, down S from the tree it is
// inner in. One segment climbs d hops (a second receive at each parent of two) and
// comes down d; after it the segments follow at the pace of the busiest link or NIC
// carrying every transfer of one segment of both trees, both ways:
//   T ~ 2d*alpha + d*alpha' + (2d + k - 1)*s*beta_busiest + 2s*k*gamma
// (3 hosts x 1: each host sends 3s and receives 3s per pair of segments: 1.5 S*beta).
// Until round 7 (docs/tuner.md) a rank took segment j of tree 0, then of tree 1, each
// receive blocking: the trees took turns, at least 2d S*beta.
// The tuner prices the paths hop by hop (topo/tuner_allreduce.cc, treeModel).
// Wins for small-to-medium messages on many ranks: latency grows with log n, not n.
//
// Ordered reductions (16-bit SUM/PROD on 3+ ranks, HCOMM_DETERMINISTIC=1; ordered.cc):
// partials folded up a tree are in tree order and rounded per hop, so each tree's root
// (rank 0, rank n-1) takes its half straight from every rank and folds it in rank
// order, then the broadcast down the trees runs as above, both trees side by side:
//   T ~ (n-1)*(alpha + S/2*beta) + S/2*gamma*n*e + (d + k - 1)*(alpha + s*beta_busiest)
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

// How many segments child[0]'s receives may run ahead of what this rank passed up: two
// lets child[0]'s segment j+1 arrive while child[1]'s segment j does.
constexpr size_t kAhead = 2;

bool finished(const RequestPtr& r) { return !r || r->done.load(std::memory_order_acquire); }

// Clears a finished request, surfacing its failure (Links::wait on a done request).
bool settle(Links& l, RequestPtr& r) {
  if (!r || !finished(r)) return false;
  l.wait(r);
  r = nullptr;
  return true;
}

// One tree's progress on this rank; the two trees advance independently, so neither
// waits for the other's segment (docs/tuner.md, round 7). Up: child[0]'s segment j folds
// into out from in, child[1]'s into that (the sum's order: in, child[0], child[1], as
// before), then out goes to the parent. Down: segment j comes from the parent into out
// and goes on to both children.
struct TreeRun {
  TreeNode node;
  int upChannel = 0, downChannel = 1;
  size_t base = 0, count = 0, segElems = 1, es = 1, nSeg = 0;  // elements [base, base + count)
  RequestPtr recv[2];               // a child's receive in flight
  size_t folded[2] = {0, 0};        // segments folded in from each child
  size_t sent = 0;                  // segments passed up (at the root: reduced)
  RequestPtr down;                  // the parent's segment in flight
  size_t passedDown = 0;            // segments received from the parent and forwarded

  Segment segment(size_t k) const {
    size_t b = k * segElems, e = std::min(b + segElems, count);
    return Segment{(base + b) * es, (e - b) * es};
  }
  bool done() const { return passedDown == nSeg; }
  // The requests whose completion would let this tree move on.
  void blockers(std::vector<RequestPtr>& out) const {
    for (const RequestPtr& r : {recv[0], recv[1], down})
      if (r) out.push_back(r);
  }
};

// One pass of the way up; returns whether anything moved.
bool stepUp(Links& l, TreeRun& t, const char* in, char* out, std::vector<RequestPtr>& sends) {
  bool moved = false;
  const TreeNode& nd = t.node;
  for (int c = 0; c < 2; ++c) {
    if (nd.child[c] < 0) continue;
    if (settle(l, t.recv[c])) {
      ++t.folded[c];
      moved = true;
    }
    size_t next = t.folded[c];
    // child[1]'s segment folds into what child[0]'s left there, so it waits for it.
    bool ready = next < t.nSeg && (c == 0 ? next < t.sent + kAhead : next < t.folded[0]);
    if (!t.recv[c] && ready) {
      Segment s = t.segment(next);
      t.recv[c] = l.irecvReduce(nd.child[c], out + s.off, (c == 0 ? in : out) + s.off, s.len, t.upChannel);
      moved = true;
    }
  }
  int last = nd.child[1] >= 0 ? 1 : nd.child[0] >= 0 ? 0 : -1;  // the child folded last
  while (t.sent < t.nSeg && (last < 0 || t.folded[last] > t.sent)) {
    Segment s = t.segment(t.sent);
    const char* acc = (last < 0 ? in : out) + s.off;
    if (nd.parent >= 0) sends.push_back(l.isend(nd.parent, acc, s.len, t.upChannel));
    else if (acc != out + s.off) l.copy(out + s.off, acc, s.len);  // a root without children (n == 1)
    ++t.sent;
    moved = true;
  }
  return moved;
}

// One pass of the way down; returns whether anything moved.
bool stepDown(Links& l, TreeRun& t, char* out, std::vector<RequestPtr>& sends) {
  const TreeNode& nd = t.node;
  auto forward = [&] {
    Segment s = t.segment(t.passedDown++);
    for (int c = 0; c < 2; ++c)
      if (nd.child[c] >= 0) sends.push_back(l.isend(nd.child[c], out + s.off, s.len, t.downChannel));
  };
  bool moved = false;
  if (nd.parent < 0) {  // the root: a segment goes down once it is reduced
    while (t.passedDown < t.sent) forward(), moved = true;
    return moved;
  }
  if (settle(l, t.down)) forward(), moved = true;
  // Segment j comes down into the memory its way up was sent from, while that send may
  // not be marked done yet: safe, as before round 7, because the root's result for j
  // exists only once the parent has taken this rank's part of it. (Waiting for the send
  // to be marked done as well adds a dependent completion to every segment.)
  if (!t.down && t.passedDown < t.sent) {
    Segment s = t.segment(t.passedDown);
    t.down = l.irecv(nd.parent, out + s.off, s.len, t.downChannel);
    moved = true;
  }
  return moved;
}

}  // namespace

void allreduceTree(Links& l, const void* inv, void* outv, size_t count, size_t segBytes) {
  const char* in = static_cast<const char*>(inv);
  char* out = static_cast<char*>(outv);
  int n = l.size();
  size_t es = l.elemSize(), segElems = std::max<size_t>(1, segBytes / es);
  TreeRun runs[2];
  for (int t = 0; t < 2; ++t) {
    TreeRun& r = runs[t];
    r.node = heapNode(l.rank(), n, t == 1);
    r.upChannel = 2 * t;
    r.downChannel = 2 * t + 1;
    r.base = t ? count / 2 : 0;
    r.count = t ? count - count / 2 : count / 2;  // elements carried by each tree
    r.segElems = segElems;
    r.es = es;
    r.nSeg = (r.count + segElems - 1) / segElems;
  }
  std::vector<RequestPtr> sends;
  if (l.ordered()) {  // see the header: each tree's root folds its half straight from every rank
    for (bool folding : {false, true})  // every send is posted before a root starts folding
      for (int t = 0; t < 2; ++t) {
        int root = t ? n - 1 : 0;
        if ((l.rank() == root) == folding) rootFold(l, in + runs[t].base * es, out + runs[t].base * es, runs[t].count, root, 2 * t, sends);
      }
    l.waitAll(sends);  // the broadcast below may overwrite `in` (in place)
    sends.clear();
    for (TreeRun& r : runs) {  // the way up is done; only the broadcast is left
      r.sent = r.nSeg;
      // nothing comes up the tree: without this stepUp would post receives from the
      // children that no message ever matches
      for (int c = 0; c < 2; ++c)
        if (r.node.child[c] >= 0) r.folded[c] = r.nSeg;
    }
  }
  // As ring.cc's chunks: advance every tree whose request is done, wait only when nothing
  // moved. A rank that blocked on one tree's receive would hold the other tree's segments
  // behind it, and through the ranks that are inner in one tree and leaves in the other
  // the two trees would take turns (round 6: 2d*S*beta instead of about 2*S*beta).
  std::vector<RequestPtr> pending;
  while (!runs[0].done() || !runs[1].done()) {
    bool moved = false;
    for (TreeRun& r : runs) {
      while (stepUp(l, r, in, out, sends)) moved = true;
      while (stepDown(l, r, out, sends)) moved = true;
    }
    if (moved) continue;
    pending.clear();
    for (const TreeRun& r : runs) r.blockers(pending);
    if (pending.empty()) throw Error("tree allreduce: segments left but nothing in flight on rank " + std::to_string(l.rank()));
    l.waitAny(pending);
  }
  l.waitAll(sends);
}

}  // namespace algo
}  // namespace hcomm
