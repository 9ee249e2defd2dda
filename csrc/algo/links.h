// What an algorithm sees of its communicator: ranks 0..size-1, point-to-point steps
// addressed by communicator rank, the collective's element type and op, and waiting.
//
// Step primitives (the vocabulary NCCL's ring/tree code is written in):
//   isend(peer, buf)                      send
//   irecv(peer, buf)                      recv
//   irecvReduce(peer, dst, src)           recvReduce: dst = src op incoming
// A channel number keeps independent streams between one pair apart (two trees, the
// chunks of a pipelined ring). Waiting spins, then yields, then sleeps in the transport;
// every wait honours the collective's deadline and names the ranks not heard from.
#pragma once
#include <array>
#include <chrono>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "common/types.h"
#include "reduce/memory.h"
#include "transport/transport.h"

namespace hcomm {

struct Route {
  Transport* transport = nullptr;
  int peer = -1;  // the rank as the transport knows it
};

// Why rank `r` can send nothing more on `tag`: its transport's peerFailure (it exited,
// gave up, its connection broke, or this world was aborted), but only once nothing it sent
// before it went is still waiting there to be received; "" while a message may come.
std::string goneWhy(const Route& r, uint64_t tag);
// For a receive from any of `routes` (a communicator's, `self` its own rank): why no
// rank is left that could send on `tag`, the distinct causes joined by "; "; "" while one
// could. Its own rank counts only when it is alone (then only this world's abort ends
// the wait; with others, the abort reaches each one's peerFailure). Not counting it means
// that with every other rank gone the wait ends although another thread of this rank
// could still send to it: an any-source receive is not how a process talks to itself.
std::string noSenderLeft(const std::vector<Route>& routes, int self, uint64_t tag);

struct WaitPolicy {
  int spins = 2000;   // busy polls before yielding
  int spinUs = 50;    // ... and at most this long: see Links::backoff
  int yields = 200;   // sched_yield polls before sleeping
  int sleepUs = 1000; // one sleep in the transport
};

class Links {
 public:
  // fingerprint: the collective's signature, sent with and checked against every message.
  // routes[r]: how to reach rank r; shared, because a Links is made for every call.
  Links(int rank, int size, std::shared_ptr<const std::vector<Route>> routes, uint64_t tagBase, uint64_t fingerprint,
        DataType dtype, ReduceOp op, std::chrono::steady_clock::time_point deadline, WaitPolicy policy,
        std::function<std::string()> describe, const Memory& memory = hostMemory());

  int rank() const { return rank_; }
  int size() const { return size_; }
  DataType dtype() const { return dtype_; }
  ReduceOp op() const { return op_; }
  size_t elemSize() const { return elemSize_; }
  // The memory the collective's buffers live in (host or a device); every local copy,
  // reduction and scratch buffer goes through it.
  const Memory& memory() const { return *mem_; }

  RequestPtr isend(int peer, const void* buf, size_t bytes, int channel = 0);
  RequestPtr irecv(int peer, void* buf, size_t bytes, int channel = 0);
  // streamed: dst is not read again before it would have left the cache (reduceStreamed).
  RequestPtr irecvReduce(int peer, void* dst, const void* src, size_t bytes, int channel = 0, bool streamed = false);
  // Any-source receive: waits for a message with `channel` from any rank; returns it.
  int recvAny(void* buf, size_t bytes, int channel, size_t* got);

  void wait(const RequestPtr& r);
  void waitAll(const std::vector<RequestPtr>& rs) { waitAll(rs.data(), rs.size()); }
  void waitAll(std::initializer_list<RequestPtr> rs) { waitAll(rs.begin(), rs.size()); }  // no allocation
  // Returns once at least one of `rs` is done (or all are empty).
  void waitAny(const std::vector<RequestPtr>& rs);

  void send(int peer, const void* buf, size_t bytes, int channel = 0) { wait(isend(peer, buf, bytes, channel)); }
  void recv(int peer, void* buf, size_t bytes, int channel = 0) { wait(irecv(peer, buf, bytes, channel)); }
  // A view of a subset of these ranks (given in this Links' numbering, this rank among
  // them) as ranks 0..k-1, with its own channel range so that its messages never match
  // the parent's: lets hierarchical algorithms reuse the flat ones on sub-groups.
  Links sub(const std::vector<int>& ranks, int channelBase) const;
  // dst = a op b on this rank (bytes of the collective's dtype).
  void reduceLocal(void* dst, const void* a, const void* b, size_t bytes) const;
  // dst = src on this rank (overlap allowed), in the collective's memory.
  void copy(void* dst, const void* src, size_t bytes) const { mem_->copy(dst, src, bytes); }
  // A buffer in the collective's memory that lives until the collective ends.
  char* scratch(size_t bytes);

  // Ordered reductions (algo/ordered.cc). When set, every algorithm returns for each
  // element the fold of the ranks' contributions in rank order 0..n-1, carried in the
  // accumulation type and rounded once: the communicator sets it for float16/bfloat16
  // SUM/PROD (float32 accumulation) and, with HCOMM_DETERMINISTIC=1, for every floating
  // SUM/PROD. With two ranks every algorithm already computes one a op b, which IEEE
  // makes commutative, so the algorithms take their ordinary path there.
  void setOrdered(bool on) { ordered_ = on; }
  bool ordered() const { return ordered_ && size_ > 2; }
  // The fold's partials are float32 while the dtype is 16 bits.
  bool wide() const { return ordered_ && (dtype_ == DataType::F16 || dtype_ == DataType::BF16); }
  size_t accSize() const { return wide() ? 4 : elemSize_; }
  // Whether a fold must take the contributions in rank order (HCOMM_DETERMINISTIC=1, the
  // default) or may take them as they arrive: without the mode a 16-bit result only has
  // to be the float32 sum rounded once, in any order (ordered.cc, foldFromAll).
  void setRankOrder(bool on) { rankOrder_ = on; }
  bool rankOrder() const { return rankOrder_; }
  // Returns one of `peers` whose next message on `channel` has arrived (the first in
  // `peers` that has), waiting as wait() does until one has. Host transports only: the
  // device ones cannot probe.
  int nextArrival(const std::vector<int>& peers, int channel);
  // One fold step on this rank (Memory::accumulate): dst = [a op] b, b in the dtype.
  void accumulateLocal(void* dst, bool dstWide, const void* a, bool aWide, const void* b, size_t count) const {
    mem_->accumulate(dtype_, op_, dst, dstWide, a, aWide, b, count);
  }
  // The same step with b arriving from `peer` (ReduceSpec::accumulate).
  RequestPtr irecvAccumulate(int peer, void* dst, bool dstWide, const void* a, bool aWide, size_t bytes,
                             int channel);

  // What ran the call, for its flight-record entry and its errors: a native engine that
  // took the whole collective says so (ranNatively("native nccl"): engine()); otherwise
  // the planned algorithm ran over the transports of its routes, over() ("cuda_ipc",
  // "shm + staging/tcp"). The plan alone cannot tell: NCCL and HCCL decide at run time,
  // from their measured price, whether they take a call.
  void ranNatively(const char* engine) { engine_ = engine; }
  const char* engine() const { return engine_; }
  std::string over() const;
  // The transport the route to `peer` goes over (Transport::via).
  std::string via(int peer) const;

 private:
  bool poll();           // progress every transport once
  void waitAll(const RequestPtr* rs, size_t n);
  void backoff(int& idle, const RequestPtr* rs, size_t n);
  void check(const RequestPtr& r) const;
  // Throws as check() does when one of `peers` will send nothing more on `channel`
  // (Transport::peerFailure) and nothing from it waits there.
  void failIfGone(const std::vector<int>& peers, int channel) const;
  // The wait of nextArrival and recvAny: `arrived()` probes (a rank >= 0 ends the wait),
  // `ask()` checks for failures nothing else reports (see nextArrival). Defined in links.cc.
  template <class Probe, class Ask>
  int waitProbing(Probe arrived, Ask ask);
  [[noreturn]] void timeout(const RequestPtr* rs, size_t n) const;
  // What the transports hold for the peers of the unfinished requests (waitState).
  std::string waitStates(const RequestPtr* rs, size_t n) const;
  const Route& route(int peer) const;

  int rank_, size_;
  std::shared_ptr<const std::vector<Route>> routes_;
  std::array<Transport*, 4> transports_{};  // distinct, for progress (shm, tcp, mpi, a device one)
  int nTransports_ = 0;
  uint64_t tagBase_;
  uint64_t fingerprint_;
  DataType dtype_;
  ReduceOp op_;
  size_t elemSize_;
  std::chrono::steady_clock::time_point deadline_;
  WaitPolicy policy_;
  std::chrono::steady_clock::time_point spinStart_;  // when the current spin began
  std::function<std::string()> describe_;
  const Memory* mem_;
  std::vector<std::shared_ptr<char>> scratch_;
  bool ordered_ = false;
  const char* engine_ = nullptr;  // set by ranNatively
  bool rankOrder_ = true;
};

// Splits `count` elements into n near-equal blocks: block b starts at blockStart(b).
struct Blocks {
  size_t count, n;
  size_t start(size_t b) const { return b * (count / n) + std::min(b, count % n); }
  size_t size(size_t b) const { return count / n + (b < count % n ? 1 : 0); }
};

}  // namespace hcomm
