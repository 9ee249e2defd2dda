// Point-to-point transport: the only interface the algorithms see.
//
// A transport moves tagged messages between ranks of one job. isend/irecv post an
// operation and return a Request; progress() advances every outstanding operation of
// this transport; the caller (algo/links.h) spins, yields, then blocks in sleepFor().
// Messages from one peer with one tag are matched in the order they were posted
// (MPI's non-overtaking rule), so collectives may reuse a tag between a pair.
//
// irecv can reduce instead of copy: with a ReduceSpec, the payload is combined
// element-wise with `src` into `dst` (dst = src op payload) as it arrives, so the
// shared-memory transport can reduce straight from the sender's buffer with no
// staging copy. Ownership: buffers belong to the caller and must stay valid until the
// request completes. A transport is shared by every communicator split from the one
// that made it, so all its methods are thread-safe.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "common/types.h"

namespace hcomm {

class Memory;  // reduce/memory.h

struct Request {
  int peer = -1;
  uint64_t tag = 0;
  size_t nbytes = 0;
  bool isSend = false;
  uint64_t fingerprint = 0;  // the collective's signature (common/fingerprint.h); 0: unchecked
  std::atomic<bool> done{false};
  std::string error;  // set before done when the operation failed

  bool failed() const { return done.load(std::memory_order_acquire) && !error.empty(); }
};
using RequestPtr = std::shared_ptr<Request>;

// How far a rank got on one communicator: the last collective it entered and the last it
// finished (seq + 1; 0: none yet). Read after a timeout to say who did not reach what.
struct CallProgress {
  bool found = false;     // the rank has published progress for this communicator
  uint64_t entered = 0;
  int kind = 0;           // CollKind of the entered call
  uint64_t finished = 0;
};

struct ReduceSpec {
  const void* src = nullptr;  // combined with the payload; may equal dst
  DataType dtype = DataType::F32;
  ReduceOp op = ReduceOp::SUM;
  bool streamed = false;  // the result is not read again soon: reduceStreamed (reduce.h)
  // The memory src and dst live in (reduce/memory.h); null means host memory.
  const Memory* memory = nullptr;
  // A step of a fold in the accumulation type (Memory::accumulate): dst and/or src hold
  // float32 partials of a 16-bit dtype (their offsets scale by 4 / dtype size), src may
  // be null (dst = the payload converted). The payload always holds `dtype`.
  struct Accumulate {
    bool on = false, srcWide = false, dstWide = false;
  } accumulate;
};

// What a call's buffers are: host memory, or memory of this rank's CUDA device.
enum class MemKind { HOST, DEVICE };

class Transport {
 public:
  virtual ~Transport() = default;
  virtual const char* name() const = 0;
  // How a route through this transport is named where a call says what ran (flight
  // record, errors): the name, or for a transport that rides another one both
  // ("staging/tcp").
  virtual std::string via() const { return name(); }
  // Can this transport carry buffers of kind `mem` to and from `peer` (world rank)? A
  // world picks the route to a peer as the first transport of a preference order that
  // can (comm/world.h). False by default: a transport outside a world's list (NCCL's,
  // which runs whole collectives) is never a route.
  virtual bool canConnect(int peer, MemKind mem) const {
    (void)peer, (void)mem;
    return false;
  }
  // `fingerprint` travels with the message; a receive whose own fingerprint differs
  // fails with both signatures (0 on either side: not compared).
  virtual RequestPtr isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint = 0) = 0;
  virtual RequestPtr irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce = nullptr,
                           uint64_t fingerprint = 0) = 0;
  // Advances every outstanding operation; true when anything moved.
  virtual bool progress() = 0;
  // Blocks for at most `us` microseconds or until something may have arrived.
  virtual void sleepFor(int us) = 0;
  // Is a message with `tag` from `peer` waiting to be received? (any-source receive)
  virtual bool probe(int peer, uint64_t tag, size_t* nbytes) = 0;
  // Fails every outstanding request with `why` (abort after an error or a timeout).
  virtual void abort(const std::string& why) = 0;
  // Why no further message can come from `peer`: it exited, it gave up after an error,
  // its connection broke, or this transport was aborted; "" while one still may (and by
  // default: then only the caller's timeout ends the wait). What the peer sent before it
  // went is not lost: probe() still finds it. For a waiter that has no posted receive
  // (Links::nextArrival only probes), which the failures above never reach otherwise.
  virtual std::string peerFailure(int peer) {
    (void)peer;
    return "";
  }
  // A message from `peer` that arrived with a tag in [lo, hi) and was never received:
  // sent for an earlier collective that this rank finished without asking for it, so the
  // ranks disagreed about that call (e.g. each thought itself the broadcast root). Its
  // tag and fingerprint in *tag / *fingerprint. False when none, or when the transport
  // cannot tell.
  virtual bool stale(int peer, uint64_t lo, uint64_t hi, uint64_t* tag, uint64_t* fingerprint) {
    (void)peer, (void)lo, (void)hi, (void)tag, (void)fingerprint;
    return false;
  }
  // What this transport holds for `peer`, said after a timeout so that a hang can be
  // told apart from a lost message: queue positions, sends not yet delivered, receives
  // posted and messages waiting unreceived (tags as offsets from `tagBase`). "" when
  // the transport has nothing to say.
  virtual std::string waitState(int peer, uint64_t tagBase) {
    (void)peer, (void)tagBase;
    return "";
  }
};

// Completes a request, successfully when why is empty.
inline void complete(Request& r, const std::string& why = "") {
  r.error = why;
  r.done.store(true, std::memory_order_release);
}

}  // namespace hcomm
