// Ring: ranks pass blocks to their right neighbour r -> r+1 (mod n).
//
// allreduce = reduce-scatter (n-1 steps: receive a block, add this rank's share, pass
// it on) + allgather (n-1 steps: pass the finished blocks round). The buffer is cut
// into chunks of n segments that travel the ring independently, several at a time,
// so one chunk's allgather overlaps the next chunk's reduce-scatter.
//
// Cost, n ranks, S bytes: 2(n-1) steps per chunk; each rank sends and receives
// 2(n-1)/n * S bytes and reduces (n-1)/n * S;
//   T ~ 2(n-1)*alpha + 2(n-1)/n * S * beta + (n-1)/n * S * gamma.
// Wins for large messages: bandwidth-optimal for any n, but latency grows with n.
//
// Ordered reductions (16-bit SUM/PROD on 3+ ranks, HCOMM_DETERMINISTIC=1; ordered.cc):
// a ring partial would be rounded at every hop and summed in ring order, so the
// reduce-scatter becomes the direct one (each block's owner folds all contributions in
// rank order, in float32 for 16-bit dtypes) and the allgather stays the ring's. Same
// bytes on the wire; the n-1 receives of the fold are taken one at a time:
//   T ~ (n-1)*alpha + (n-1)/n*S*beta + S*gamma*e   +   (n-1)*(alpha + S/n*beta)
// with e = 2 for 16-bit dtypes (float32 partials), 1 otherwise.
#include <algorithm>
#include <cstring>

#include "algo/algorithms.h"

namespace hcomm {
namespace algo {

namespace {

size_t mod(long long a, long long n) { return static_cast<size_t>(((a % n) + n) % n); }

// One chunk of a pipelined ring allreduce, advanced step by step.
struct RingChunk {
  size_t begin = 0;   // first element of the chunk
  Blocks blocks{0, 1};
  int step = 0;       // 0 .. 2(n-1)-1
  RequestPtr send, recv;
};

void postStep(Links& l, RingChunk& c, const char* in, char* out, int channel) {
  int n = l.size(), r = l.rank(), s = c.step;
  size_t es = l.elemSize();
  int right = (r + 1) % n, left = (r - 1 + n) % n;
  bool reduceScatter = s < n - 1;
  size_t sendBlock = reduceScatter ? mod(r - s, n) : mod(r + 1 - (s - (n - 1)), n);
  size_t recvBlock = reduceScatter ? mod(r - s - 1, n) : mod(r - (s - (n - 1)), n);
  size_t sOff = (c.begin + c.blocks.start(sendBlock)) * es, sLen = c.blocks.size(sendBlock) * es;
  size_t rOff = (c.begin + c.blocks.start(recvBlock)) * es, rLen = c.blocks.size(recvBlock) * es;
  const char* sendFrom = (s == 0 ? in : out) + sOff;  // step 0 sends this rank's own data
  c.send = sLen ? l.isend(right, sendFrom, sLen, channel) : nullptr;
  if (!rLen) c.recv = nullptr;
  else if (reduceScatter) c.recv = l.irecvReduce(left, out + rOff, in + rOff, rLen, channel);
  else c.recv = l.irecv(left, out + rOff, rLen, channel);
}

bool finished(const RequestPtr& r) { return !r || r->done.load(std::memory_order_acquire); }

}  // namespace

void allreduceRing(Links& l, const void* inv, void* outv, size_t count, size_t segBytes) {
  if (l.ordered()) return allreduceOrdered(l, inv, outv, count, allgathervRing);  // see the header
  const char* in = static_cast<const char*>(inv);
  char* out = static_cast<char*>(outv);
  int n = l.size();
  size_t es = l.elemSize();
  size_t chunkElems = std::max<size_t>(n, (segBytes / es) * n);
  size_t nChunks = (count + chunkElems - 1) / chunkElems;
  constexpr size_t kInFlight = 4;  // chunks travelling at once (channels)
  std::vector<RingChunk> active;
  size_t next = 0, finishedChunks = 0;
  const int lastStep = 2 * (n - 1);
  while (finishedChunks < nChunks) {
    // Chunk k+kInFlight reuses chunk k's channel, so it may start only once chunk k has
    // finished here: every rank then posts each channel's messages in chunk order.
    bool moved = false;
    while (next < nChunks && (active.empty() || next < active.front().begin / chunkElems + kInFlight)) {
      RingChunk c;
      c.begin = next * chunkElems;
      c.blocks = Blocks{std::min(chunkElems, count - c.begin), static_cast<size_t>(n)};
      postStep(l, c, in, out, static_cast<int>(next % kInFlight));
      active.push_back(c);
      ++next;
      moved = true;
    }
    std::vector<RequestPtr> pending;
    for (auto it = active.begin(); it != active.end();) {
      // A step posted here may be complete at once (an eager send, a message that was
      // already waiting), so a chunk advances as far as it can before anyone waits.
      while (finished(it->send) && finished(it->recv) && it->step < lastStep) {
        if (it->send) l.wait(it->send);  // surfaces a failed request
        if (it->recv) l.wait(it->recv);
        moved = true;
        if (++it->step < lastStep) postStep(l, *it, in, out, static_cast<int>((it->begin / chunkElems) % kInFlight));
      }
      if (it->step == lastStep) {
        ++finishedChunks;
        it = active.erase(it);
        continue;
      }
      for (const RequestPtr& q : {it->send, it->recv})
        if (!finished(q)) pending.push_back(q);  // waitAny must wait for a new completion
      ++it;
    }
    // Wait only when nothing moved in this pass: a chunk left behind with its step done,
    // or a chunk that could start, would otherwise sit out the wait, and with every rank
    // waiting on a message that such a chunk of its neighbour's would have sent, the ring
    // stopped until the timeout (seen as an intermittent test_allreduce[3] hang).
    if (!moved && !pending.empty()) l.waitAny(pending);
  }
}

void reduceScattervRing(Links& l, const void* inv, void* outv, const std::vector<size_t>& counts) {
  // Block b ends, fully reduced, on rank b: at step s rank r passes block r-s-1 on and
  // receives block r-s-2; partial sums alternate between two scratch blocks.
  if (l.ordered()) return reduceScattervOrdered(l, inv, outv, counts);  // see the header
  const char* in = static_cast<const char*>(inv);
  char* out = static_cast<char*>(outv);
  int n = l.size(), r = l.rank();
  size_t es = l.elemSize();
  std::vector<size_t> displ(n + 1, 0);
  size_t maxCount = 0;
  for (int b = 0; b < n; ++b) {
    displ[b + 1] = displ[b] + counts[b];
    maxCount = std::max(maxCount, counts[b]);
  }
  char* tmp[2] = {l.scratch(maxCount * es), l.scratch(maxCount * es)};
  const char* prev = nullptr;  // where the block this rank passes on lives
  int right = (r + 1) % n, left = (r - 1 + n) % n;
  for (int s = 0; s < n - 1; ++s) {
    size_t sb = mod(r - s - 1, n), rb = mod(r - s - 2, n);
    const char* sendFrom = s == 0 ? in + displ[sb] * es : prev;
    char* dst = (s == n - 2) ? out : tmp[s % 2];
    RequestPtr sq = counts[sb] ? l.isend(right, sendFrom, counts[sb] * es) : nullptr;
    RequestPtr rq = counts[rb] ? l.irecvReduce(left, dst, in + displ[rb] * es, counts[rb] * es) : nullptr;
    l.waitAll({sq, rq});
    prev = dst;
  }
}

void allgathervRing(Links& l, const void* inv, void* outv, const std::vector<size_t>& counts) {
  char* out = static_cast<char*>(outv);
  int n = l.size(), r = l.rank();
  size_t es = l.elemSize();
  std::vector<size_t> displ(n + 1, 0);
  for (int b = 0; b < n; ++b) displ[b + 1] = displ[b] + counts[b];
  if (inv != out + displ[r] * es && counts[r]) l.copy(out + displ[r] * es, inv, counts[r] * es);
  int right = (r + 1) % n, left = (r - 1 + n) % n;
  for (int s = 0; s < n - 1; ++s) {
    size_t sb = mod(r - s, n), rb = mod(r - s - 1, n);
    RequestPtr sq = counts[sb] ? l.isend(right, out + displ[sb] * es, counts[sb] * es) : nullptr;
    RequestPtr rq = counts[rb] ? l.irecv(left, out + displ[rb] * es, counts[rb] * es) : nullptr;
    l.waitAll({sq, rq});
  }
}

}  // namespace algo
}  // namespace hcomm
