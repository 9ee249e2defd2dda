#include "algo/links.h"

#include <sched.h>

#include <algorithm>

#include "reduce/reduce.h"

namespace hcomm {

Links::Links(int rank, int size, std::shared_ptr<const std::vector<Route>> routes, uint64_t tagBase,
             uint64_t fingerprint, DataType dtype, ReduceOp op, std::chrono::steady_clock::time_point deadline,
             WaitPolicy policy, std::function<std::string()> describe, const Memory& memory)
    : rank_(rank), size_(size), routes_(std::move(routes)), tagBase_(tagBase), fingerprint_(fingerprint),
      dtype_(dtype), op_(op),
      elemSize_(dtypeSize(dtype)), deadline_(deadline), policy_(policy), describe_(std::move(describe)),
      mem_(&memory) {
  for (const Route& r : *routes_) {
    if (!r.transport || std::find(transports_.begin(), transports_.begin() + nTransports_, r.transport) !=
                            transports_.begin() + nTransports_)
      continue;
    if (nTransports_ == static_cast<int>(transports_.size())) throw Error("Links: more transports than expected");
    transports_[nTransports_++] = r.transport;
  }
}

namespace {

// Is `v` one of the `sep`-separated parts of `list`?
bool listed(const std::string& list, const std::string& v, const std::string& sep = " + ") {
  for (size_t at = 0; at <= list.size();) {
    size_t end = list.find(sep, at);
    if (end == std::string::npos) end = list.size();
    if (list.compare(at, end - at, v) == 0) return true;
    at = end + sep.size();
  }
  return false;
}

}  // namespace

std::string Links::over() const {
  // Distinct transports in rank order; looked up in the string itself rather than a set,
  // so that the usual one transport (recorded at every call) costs no allocation.
  std::string out;
  for (int r = 0; r < size_; ++r) {
    const Route& x = (*routes_)[r];
    if (r == rank_ || !x.transport) continue;
    std::string v = x.transport->via();
    if (listed(out, v)) continue;
    if (!out.empty()) out += " + ";
    out += v;
  }
  return out;
}

std::string Links::via(int peer) const {
  const Route& r = route(peer);
  return peer == rank_ || !r.transport ? "self" : r.transport->via();
}

const Route& Links::route(int peer) const {
  if (peer < 0 || peer >= size_)
    throw Error("Links: rank " + std::to_string(peer) + " is out of range for " + std::to_string(size_) + " ranks");
  return (*routes_)[peer];
}

RequestPtr Links::isend(int peer, const void* buf, size_t bytes, int channel) {
  const Route& r = route(peer);
  return r.transport->isend(r.peer, tagBase_ + channel, buf, bytes, fingerprint_);
}

RequestPtr Links::irecv(int peer, void* buf, size_t bytes, int channel) {
  const Route& r = route(peer);
  return r.transport->irecv(r.peer, tagBase_ + channel, buf, bytes, nullptr, fingerprint_);
}

RequestPtr Links::irecvReduce(int peer, void* dst, const void* src, size_t bytes, int channel, bool streamed) {
  const Route& r = route(peer);
  ReduceSpec spec;
  spec.src = src;
  spec.dtype = dtype_;
  spec.op = op_;
  spec.streamed = streamed;
  spec.memory = mem_;
  return r.transport->irecv(r.peer, tagBase_ + channel, dst, bytes, &spec, fingerprint_);
}

RequestPtr Links::irecvAccumulate(int peer, void* dst, bool dstWide, const void* a, bool aWide, size_t bytes,
                                  int channel) {
  const Route& r = route(peer);
  ReduceSpec spec;
  spec.src = a;
  spec.dtype = dtype_;
  spec.op = op_;
  spec.memory = mem_;
  spec.accumulate.on = true;
  spec.accumulate.srcWide = aWide;
  spec.accumulate.dstWide = dstWide;
  return r.transport->irecv(r.peer, tagBase_ + channel, dst, bytes, &spec, fingerprint_);
}

// Both probing waits below post no receive, so the failures that end a posted receive
// at once (a peer that exited, this world aborted by another call's error) never reach
// them. Without asking the transports they lasted until the deadline, and every call
// queued behind an aborted one waited a whole timeout more (issue 22: the survivors of a
// kill sat in queued ZeRO reduce-scatters, or in a receive from any source). Asked once
// the spinning is over, after 100 ms of waiting and every 100 ms then: the spin loop of
// a short wait (the 16-bit fold's usual one) is the same as without the check.
template <class Probe, class Ask>
int Links::waitProbing(Probe arrived, Ask ask) {
  constexpr auto kEvery = std::chrono::milliseconds(100);
  int idle = 0;
  auto next = std::chrono::steady_clock::now() + kEvery;
  while (true) {
    int p = arrived();
    if (p >= 0) return p;
    if (poll()) continue;
    if (idle >= policy_.spins) {
      auto now = std::chrono::steady_clock::now();
      if (now >= next) {
        ask();
        next = now + kEvery;
      }
    }
    backoff(idle, nullptr, 0);
  }
}

int Links::recvAny(void* buf, size_t bytes, int channel, size_t* got) {
  const uint64_t tag = tagBase_ + channel;
  size_t n = 0;
  auto arrived = [&] {
    for (int p = 0; p < size_; ++p) {
      const Route& r = route(p);
      if (r.transport->probe(r.peer, tag, &n)) return p;
    }
    return -1;
  };
  auto ask = [&] {
    std::string why = noSenderLeft(*routes_, rank_, tag);
    if (!why.empty()) throw Error(describe_() + ": receive from any rank failed: " + why);
  };
  int p = waitProbing(arrived, ask);
  if (n > bytes)
    throw Error("recv from any source: rank " + std::to_string(p) + " sent " + std::to_string(n) +
                " bytes, more than the " + std::to_string(bytes) + "-byte buffer");
  if (got) *got = n;
  const Route& r = route(p);
  wait(r.transport->irecv(r.peer, tag, buf, n, nullptr));
  return p;
}

int Links::nextArrival(const std::vector<int>& peers, int channel) {
  auto arrived = [&] {
    for (int p : peers) {
      const Route& r = route(p);
      if (r.transport->probe(r.peer, tagBase_ + channel, nullptr)) return p;
    }
    return -1;
  };
  return waitProbing(arrived, [&] { failIfGone(peers, channel); });
}

void Links::failIfGone(const std::vector<int>& peers, int channel) const {
  for (int p : peers) {
    const Route& r = route(p);
    // What it sent before it went still counts: the caller's next probe takes it.
    std::string why = goneWhy(r, tagBase_ + channel);
    if (!why.empty())
      throw Error(describe_() + ": receive from rank " + std::to_string(r.peer) + " failed: " + why);
  }
}

std::string goneWhy(const Route& r, uint64_t tag) {
  if (!r.transport) return "";
  std::string why = r.transport->peerFailure(r.peer);
  if (why.empty() || r.transport->probe(r.peer, tag, nullptr)) return "";
  return why;
}

std::string noSenderLeft(const std::vector<Route>& routes, int self, uint64_t tag) {
  const bool alone = routes.size() == 1;
  std::string all;
  for (size_t p = 0; p < routes.size(); ++p) {
    if (static_cast<int>(p) == self && !alone) continue;
    std::string why = goneWhy(routes[p], tag);
    if (why.empty()) return "";  // this one may still send
    // An abort gives every rank the same cause: say it once.
    if (!listed(all, why, "; ")) all += (all.empty() ? "" : "; ") + why;
  }
  return all;
}

bool Links::poll() {
  bool moved = false;
  for (int i = 0; i < nTransports_; ++i) moved |= transports_[i]->progress();
  return moved;
}

void Links::backoff(int& idle, const RequestPtr* rs, size_t n) {
  ++idle;
  if (idle < policy_.spins) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    // The spin is capped in time as well as in polls: 20000 polls take about 1 ms here,
    // and when the peer shares our core (two ranks on one core of a loaded machine, which
    // a count of our own ranks against the cores cannot see) it runs only once we yield,
    // so every message cost a whole spin (allreduce of 8 B: 1.09 ms a call with both
    // ranks pinned to one core, 37 us with a 50 us cap; hcomm-bench, see docs/environment.md).
    if (idle == 1) {
      spinStart_ = std::chrono::steady_clock::now();
    } else if ((idle & 63) == 0) {
      auto now = std::chrono::steady_clock::now();
      if (now > deadline_) timeout(rs, n);
      if (now - spinStart_ > std::chrono::microseconds(policy_.spinUs)) idle = policy_.spins;  // on to yielding
    }
    return;
  }
  if (std::chrono::steady_clock::now() > deadline_) timeout(rs, n);
  if (idle < policy_.spins + policy_.yields) {
    sched_yield();
    return;
  }
  // A sleep in one transport is deaf to the others (a futex wait does not see a socket,
  // a poll does not see the futex), so with several the sleeps are cut short: a message
  // on shm is noticed within 100 us while this rank also waits on tcp.
  int us = nTransports_ > 1 ? std::min(100, policy_.sleepUs) : policy_.sleepUs;
  for (int i = 0; i < nTransports_; ++i) transports_[i]->sleepFor(std::max(1, us));
}

void Links::check(const RequestPtr& r) const {
  if (!r->error.empty())
    throw Error(describe_() + ": " + (r->isSend ? "send to" : "receive from") + " rank " +
                std::to_string(r->peer) + " failed: " + r->error);
}

void Links::timeout(const RequestPtr* rs, size_t n) const {
  std::string waiting;
  for (size_t i = 0; i < n; ++i) {
    const RequestPtr& r = rs[i];
    if (!r || r->done.load(std::memory_order_acquire)) continue;
    waiting += (waiting.empty() ? "" : ", ") + std::string(r->isSend ? "send to " : "receive from ") +
               "rank " + std::to_string(r->peer);
  }
  throw TimeoutError(describe_() + ": timed out waiting for " + (waiting.empty() ? "peers" : waiting) +
                     " (HCOMM_TIMEOUT)", waitStates(rs, n));
}

std::string Links::waitStates(const RequestPtr* rs, size_t n) const {
  // Each peer a request still waits on, once: what its transport holds for it.
  std::vector<int> seen;
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    const RequestPtr& r = rs[i];
    if (!r || r->done.load(std::memory_order_acquire)) continue;
    for (int p = 0; p < size_; ++p) {
      const Route& x = (*routes_)[p];
      if (!x.transport || x.peer != r->peer || std::find(seen.begin(), seen.end(), p) != seen.end()) continue;
      seen.push_back(p);
      std::string st = x.transport->waitState(x.peer, tagBase_);
      if (!st.empty()) out += " {" + st + "}";
    }
  }
  return out;
}

void Links::wait(const RequestPtr& r) { waitAll(&r, 1); }

void Links::waitAll(const RequestPtr* rs, size_t n) {
  int idle = 0;
  while (true) {
    bool all = true;
    for (size_t i = 0; i < n; ++i) {
      const RequestPtr& r = rs[i];
      if (!r) continue;
      if (r->done.load(std::memory_order_acquire)) check(r);  // a failure ends the wait at once
      else all = false;
    }
    if (all) return;
    if (poll()) idle = 0;
    else backoff(idle, rs, n);
  }
}

void Links::waitAny(const std::vector<RequestPtr>& rs) {
  int idle = 0;
  while (true) {
    bool any = false, pending = false;
    for (const auto& r : rs) {
      if (!r) continue;
      pending = true;
      if (r->done.load(std::memory_order_acquire)) {
        check(r);
        any = true;
      }
    }
    if (any || !pending) return;
    if (poll()) idle = 0;
    else backoff(idle, rs.data(), rs.size());
  }
}

Links Links::sub(const std::vector<int>& ranks, int channelBase) const {
  auto routes = std::make_shared<std::vector<Route>>();
  int me = -1;
  for (size_t i = 0; i < ranks.size(); ++i) {
    routes->push_back(route(ranks[i]));
    if (ranks[i] == rank_) me = static_cast<int>(i);
  }
  if (me < 0) throw Error("Links::sub: this rank is not in the subset");
  Links l(me, static_cast<int>(ranks.size()), std::move(routes), tagBase_ + channelBase, fingerprint_, dtype_, op_,
          deadline_, policy_, describe_, *mem_);
  l.ordered_ = ordered_;
  l.rankOrder_ = rankOrder_;
  // Waiting in a sub-group still progresses every transport of the whole call: a
  // transport with flow control (cuda_ipc's credits and introductions) needs this rank
  // to answer peers outside the sub-group, or they wait on it while it waits on them.
  l.transports_ = transports_;
  l.nTransports_ = nTransports_;
  return l;
}

void Links::reduceLocal(void* dst, const void* a, const void* b, size_t bytes) const {
  mem_->reduce(dtype_, op_, dst, a, b, bytes / elemSize_);
}

char* Links::scratch(size_t bytes) {
  scratch_.push_back(mem_->alloc(bytes));
  return scratch_.back().get();
}

}  // namespace hcomm
