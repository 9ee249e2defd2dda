// Matching of incoming messages to posted receives, shared by the transports.
//
// Per peer, receives wait in `posted` (in the order they were posted) and messages that
// arrived before their receive wait in `unexpected`. A message is matched by (peer,
// tag), the first of each list winning, which gives MPI's non-overtaking order.
#pragma once
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "common/fingerprint.h"
#include "reduce/memory.h"
#include "reduce/reduce.h"
#include "transport/transport.h"

namespace hcomm {

struct PostedRecv {
  RequestPtr req;
  char* dst = nullptr;
  size_t nbytes = 0;
  bool reducing = false;
  ReduceSpec spec;

  // Copies or reduces `len` payload bytes that belong at `offset` of the message.
  void deliver(size_t offset, const void* data, size_t len) const {
    if (len == 0) return;
    if (!reducing) {
      std::memcpy(dst + offset, data, len);
      return;
    }
    size_t es = dtypeSize(spec.dtype);
    if (spec.accumulate.on) return accumulate(offset, data, len, es);
    const char* src = static_cast<const char*>(spec.src) + offset;
    if (spec.streamed && src != dst + offset)
      reduceStreamed(spec.dtype, spec.op, dst + offset, src, data, len / es);
    else
      reduce(spec.dtype, spec.op, dst + offset, src, data, len / es);
  }

 private:
  void accumulate(size_t offset, const void* data, size_t len, size_t es) const {
    const ReduceSpec::Accumulate& a = spec.accumulate;
    size_t n = offset / es;  // elements before this piece
    char* d = dst + n * (a.dstWide ? 4 : es);
    const char* s = spec.src ? static_cast<const char*>(spec.src) + n * (a.srcWide ? 4 : es) : nullptr;
    const Memory& mem = spec.memory ? *spec.memory : hostMemory();
    mem.accumulate(spec.dtype, spec.op, d, a.dstWide, s, a.srcWide, data, len / es);
  }
};

// A receive as every transport's irecv records it.
inline PostedRecv postedRecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                             uint64_t fingerprint);

// A message that arrived before its receive was posted.
struct Unexpected {
  uint64_t tag = 0;
  size_t nbytes = 0;
  size_t filled = 0;        // payload bytes received so far (data messages)
  std::vector<char> data;   // the payload, for data messages
  bool complete = false;
  // Rendezvous descriptor (shared memory): the payload stays in the sender's memory.
  bool rendezvous = false;
  int64_t pid = 0;
  uint64_t addr = 0;
  uint64_t seq = 0;
  uint64_t fingerprint = 0;
  // Set when a receive matched this message while its payload was still arriving.
  std::unique_ptr<PostedRecv> bound;
};
using UnexpectedPtr = std::shared_ptr<Unexpected>;

// "[a,b,..]": the tags of `items` (tagOf(item)) as offsets from `tagBase`, for the
// wait states said after a timeout.
template <class Items, class TagOf>
std::string tagOffsets(const Items& items, uint64_t tagBase, TagOf tagOf) {
  std::string out;
  for (const auto& x : items) out += (out.empty() ? "" : ",") + std::to_string(static_cast<int64_t>(tagOf(x) - tagBase));
  return "[" + out + "]";
}

struct PeerMatch {
  std::deque<PostedRecv> posted;
  std::deque<UnexpectedPtr> unexpected;

  bool takePosted(uint64_t tag, PostedRecv* out) {
    for (auto it = posted.begin(); it != posted.end(); ++it) {
      if (it->req->tag == tag) {
        *out = *it;
        posted.erase(it);
        return true;
      }
    }
    return false;
  }

  // The first message waiting unreceived with a tag in [lo, hi), or null.
  const Unexpected* waitingIn(uint64_t lo, uint64_t hi) const {
    for (const auto& u : unexpected)
      if (u->tag >= lo && u->tag < hi && !u->bound) return u.get();
    return nullptr;
  }

  UnexpectedPtr takeUnexpected(uint64_t tag) {
    for (auto it = unexpected.begin(); it != unexpected.end(); ++it) {
      if ((*it)->tag == tag && !(*it)->bound) {
        UnexpectedPtr u = *it;
        unexpected.erase(it);
        return u;
      }
    }
    return nullptr;
  }

  // A new receive meets the messages that came before it. Returns true when the receive
  // is dealt with: completed (with data or an error) or bound to a message still
  // arriving. Returns false with *rendezvous set when it matched a rendezvous descriptor
  // (the transport pulls the payload), and false with it null when nothing matched (the
  // receive now waits in `posted`).
  bool matchEarly(int peer, const PostedRecv& r, UnexpectedPtr* rendezvous);

  // Fails every receive waiting on this peer (posted, or bound to a partial message).
  void failWaiting(const std::string& why);

  // "receives posted [..], unreceived [..]": the tags as offsets from `tagBase`
  // (Transport::waitState, said after a timeout).
  std::string describe(uint64_t tagBase) const {
    return "receives posted " + tagOffsets(posted, tagBase, [](const PostedRecv& r) { return r.req->tag; }) +
           ", unreceived " + tagOffsets(unexpected, tagBase, [](const UnexpectedPtr& u) { return u->tag; });
  }

  const Unexpected* peekUnexpected(uint64_t tag) const {
    for (const auto& u : unexpected)
      if (u->tag == tag && !u->bound) return u.get();
    return nullptr;
  }
};

inline std::string sizeMismatch(int peer, uint64_t tag, size_t sent, size_t expected) {
  return "message size mismatch: rank " + std::to_string(peer) + " sent " + std::to_string(sent) +
         " bytes (tag " + std::to_string(tag) + ") but this rank expected " +
         std::to_string(expected) + " bytes: the ranks called the collective with different counts";
}

// Why a message (size, fingerprint) cannot land in receive r; empty when it can.
inline std::string mismatch(int peer, uint64_t tag, size_t sent, uint64_t sentFp, const Request& r) {
  if (sentFp && r.fingerprint && sentFp != r.fingerprint) return fingerprintMismatch(peer, sentFp, r.fingerprint);
  if (sent != r.nbytes) return sizeMismatch(peer, tag, sent, r.nbytes);
  return "";
}

inline bool PeerMatch::matchEarly(int peer, const PostedRecv& r, UnexpectedPtr* rendezvous) {
  *rendezvous = nullptr;
  UnexpectedPtr u = takeUnexpected(r.req->tag);
  if (!u) {
    posted.push_back(r);
    return false;
  }
  if (u->rendezvous) {
    *rendezvous = u;
    return false;
  }
  std::string why = mismatch(peer, r.req->tag, u->nbytes, u->fingerprint, *r.req);
  if (!why.empty()) {
    complete(*r.req, why);
  } else if (u->complete) {
    r.deliver(0, u->data.data(), u->nbytes);
    complete(*r.req);
  } else {  // still arriving: finish when its last byte lands
    u->bound.reset(new PostedRecv(r));
    unexpected.push_front(u);
  }
  return true;
}

inline void PeerMatch::failWaiting(const std::string& why) {
  for (auto& r : posted) complete(*r.req, why);
  for (auto& u : unexpected)
    if (u->bound) complete(*u->bound->req, why);
  posted.clear();
}

inline RequestPtr makeRequest(int peer, uint64_t tag, size_t nbytes, bool isSend, uint64_t fingerprint = 0) {
  auto r = std::make_shared<Request>();
  r->fingerprint = fingerprint;
  r->peer = peer;
  r->tag = tag;
  r->nbytes = nbytes;
  r->isSend = isSend;
  return r;
}

inline PostedRecv postedRecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                             uint64_t fingerprint) {
  PostedRecv r;
  r.req = makeRequest(peer, tag, nbytes, false, fingerprint);
  r.dst = static_cast<char*>(buf);
  r.nbytes = nbytes;
  if (reduce) {
    r.reducing = true;
    r.spec = *reduce;
  }
  return r;
}

}  // namespace hcomm
