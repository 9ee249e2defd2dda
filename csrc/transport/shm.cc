#include "transport/shm.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>

#include "common/param.h"
#include "transport/shm_segment.h"

namespace hcomm {

namespace {

void futexWait(std::atomic<uint32_t>* word, uint32_t expected, int us) {
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

void futexWakeAll(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

// A process that exited but was not reaped yet (a zombie) counts as dead.
bool processAlive(int64_t pid) {
  if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return false;
  std::string path = "/proc/" + std::to_string(pid) + "/stat", stat;
  FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return true;  // cannot tell: assume alive, the timeout still applies
  char buf[512] = {0};
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  const char* close = static_cast<const char*>(memrchr(buf, ')', n));  // state follows "(comm) "
  return !(close && close + 2 < buf + n && (close[2] == 'Z' || close[2] == 'X'));
}

}  // namespace

ShmTransport::Peer& ShmTransport::peerOf(int rank) {
  auto it = peers_.find(rank);
  if (it == peers_.end()) throw Error("shm transport: rank " + std::to_string(rank) + " is not on this host");
  return it->second;
}

void ShmTransport::ring(ShmSegment* seg) {
  seg->bell.fetch_add(1, std::memory_order_seq_cst);
  if (seg->sleepers.load(std::memory_order_seq_cst) != 0) futexWakeAll(&seg->bell);
}

RequestPtr ShmTransport::isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer);
  RequestPtr req = makeRequest(peer, tag, nbytes, true, fingerprint);
  if (!aborted_.empty()) {
    complete(*req, aborted_);
    return req;
  }
  OutMsg m;
  m.req = req;
  m.buf = static_cast<const char*>(buf);
  static const size_t rndvBytes = static_cast<size_t>(envInt("HCOMM_SHM_RNDV_BYTES", 64 << 10));
  m.rendezvous = p.cma && nbytes >= rndvBytes;
  if (m.rendezvous) hugePages_.sent(buf, nbytes);
  p.sending.push_back(m);
  progressSends(p);
  return req;
}

RequestPtr ShmTransport::irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                               uint64_t fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer);
  PostedRecv r = postedRecv(peer, tag, buf, nbytes, reduce, fingerprint);
  if (!aborted_.empty()) {
    complete(*r.req, aborted_);
    return r.req;
  }
  UnexpectedPtr u;
  if (p.match.matchEarly(peer, r, &u)) return r.req;
  if (!u) {  // posted: maybe its message is in the queue already
    progressRecvs(p);
    return r.req;
  }
  std::string why = mismatch(peer, tag, u->nbytes, u->fingerprint, *r.req);
  if (why.empty()) {
    pull(p, r, u->pid, u->addr, u->nbytes, u->seq);
  } else {  // release the sender, who waits for our ack, then fail
    p.in->acks[u->seq % kAcks].store(u->seq, std::memory_order_release);
    ring(p.seg);
    complete(*r.req, why);
  }
  return r.req;
}

bool ShmTransport::progressSends(Peer& p) {
  bool moved = false;
  while (!p.sending.empty()) {
    OutMsg& m = p.sending.front();
    uint64_t head = p.out->head.load(std::memory_order_relaxed);
    if (head - p.out->tail.load(std::memory_order_acquire) >= kSlots) break;  // queue full
    ShmSlot& s = p.out->slots[head % kSlots];
    s.tag = m.req->tag;
    s.total = m.req->nbytes;
    s.fingerprint = m.req->fingerprint;
    if (m.rendezvous) {
      m.seq = p.nextSeq++;
      s.kind = kRendezvous;
      s.offset = 0;
      s.len = 0;
      s.pid = getpid();
      s.addr = reinterpret_cast<uint64_t>(m.buf);
      s.seq = m.seq;
    } else {
      size_t len = std::min(kSlotBytes, m.req->nbytes - m.offset);
      s.kind = kData;
      s.offset = m.offset;
      s.len = static_cast<uint32_t>(len);
      if (len) std::memcpy(s.data, m.buf + m.offset, len);
      m.offset += len;
    }
    p.out->head.store(head + 1, std::memory_order_release);
    ring(p.seg);
    moved = true;
    if (m.rendezvous) {
      p.awaiting.push_back(m);
      p.sending.pop_front();
    } else if (m.offset >= m.req->nbytes) {
      complete(*m.req);
      p.sending.pop_front();
    }
  }
  while (!p.awaiting.empty()) {
    OutMsg& m = p.awaiting.front();
    if (p.out->acks[m.seq % kAcks].load(std::memory_order_acquire) != m.seq) break;
    complete(*m.req);
    p.awaiting.pop_front();
    moved = true;
  }
  return moved;
}

void ShmTransport::pull(Peer& p, const PostedRecv& r, int64_t pid, uint64_t addr, size_t nbytes, uint64_t seq) {
  std::string err;
  bool ok = true;
  if (!r.reducing) {
    ok = nbytes == 0 || cmaRead(pid, addr, r.dst, nbytes, &err);
  } else if (pid == getpid()) {
    r.deliver(0, reinterpret_cast<const void*>(addr), nbytes);
  } else {
    // Stage through a buffer small enough to stay in L2, so the reduction reads the
    // peer's bytes from cache: one trip through DRAM for the remote data. Half of a
    // 2 MiB L2: fewer process_vm_readv calls than 256 KiB pieces (measured 2-rank 64 MiB
    // halving-doubling, three runs each: 6.1/7.8 GB/s against 5.4/6.5 out of/in place).
    constexpr size_t kChunk = 1 << 20;
    if (scratch_.size() < kChunk) scratch_.resize(kChunk);
    for (size_t off = 0; ok && off < nbytes; off += kChunk) {
      size_t len = std::min(kChunk, nbytes - off);
      ok = cmaRead(pid, addr + off, scratch_.data(), len, &err);
      if (ok) r.deliver(off, scratch_.data(), len);
    }
  }
  // A sender that aborted may already have handed its buffer back to its caller, so
  // bytes pulled once its failure record is set are not to be trusted (and a failed
  // read is explained by that first cause, not by process_vm_readv's EFAULT).
  std::string cause = failureOf(p);
  p.in->acks[seq % kAcks].store(seq, std::memory_order_release);
  ring(p.seg);
  if (!cause.empty()) complete(*r.req, "rank " + std::to_string(p.rank) + " gave up after an error: " + cause);
  else complete(*r.req, ok ? "" : "shm receive from rank " + std::to_string(p.rank) + " failed: " + err);
}

std::string ShmTransport::failureOf(const Peer& p) const {
  if (!p.seg || p.seg == mine_ || !p.seg->failed.load(std::memory_order_acquire)) return "";
  return std::string(p.seg->failure, strnlen(p.seg->failure, sizeof p.seg->failure));
}

void ShmTransport::handleSlot(Peer& p, const ShmSlot& s) {
  if (s.kind == kRendezvous) {
    PostedRecv r;
    if (p.match.takePosted(s.tag, &r)) {
      std::string why = mismatch(p.rank, s.tag, s.total, s.fingerprint, *r.req);
      if (!why.empty()) {
        p.in->acks[s.seq % kAcks].store(s.seq, std::memory_order_release);  // release the sender
        ring(p.seg);
        complete(*r.req, why);
      } else {
        pull(p, r, s.pid, s.addr, s.total, s.seq);
      }
    } else {
      auto u = std::make_shared<Unexpected>();
      u->tag = s.tag;
      u->nbytes = s.total;
      u->rendezvous = true;
      u->pid = s.pid;
      u->addr = s.addr;
      u->seq = s.seq;
      u->fingerprint = s.fingerprint;
      u->complete = true;
      p.match.unexpected.push_back(u);
    }
    return;
  }
  if (s.offset == 0) {  // first chunk of a data message: find its receive
    p.inCurrent = p.match.takePosted(s.tag, &p.current);
    std::string why = p.inCurrent ? mismatch(p.rank, s.tag, s.total, s.fingerprint, *p.current.req) : "";
    if (!why.empty()) {
      complete(*p.current.req, why);
      p.inCurrent = false;
      p.current = PostedRecv();
      // The payload still has to be drained; keep it as an unmatched message.
    }
    if (!p.inCurrent) {
      p.streaming = std::make_shared<Unexpected>();
      p.streaming->tag = s.tag;
      p.streaming->nbytes = s.total;
      p.streaming->fingerprint = s.fingerprint;
      p.streaming->data.resize(s.total);
      p.match.unexpected.push_back(p.streaming);
    }
  }
  bool last = s.offset + s.len >= s.total;
  if (p.inCurrent) {
    p.current.deliver(s.offset, s.data, s.len);
    if (last) {
      complete(*p.current.req);
      p.current = PostedRecv();
      p.inCurrent = false;
    }
    return;
  }
  Unexpected& u = *p.streaming;
  if (s.len) std::memcpy(u.data.data() + s.offset, s.data, s.len);
  u.filled += s.len;
  if (!last) return;
  u.complete = true;
  if (u.bound) {  // its receive was posted while the chunks were arriving
    auto it = std::find(p.match.unexpected.begin(), p.match.unexpected.end(), p.streaming);
    if (it != p.match.unexpected.end()) p.match.unexpected.erase(it);
    u.bound->deliver(0, u.data.data(), u.nbytes);
    complete(*u.bound->req);
  }
  p.streaming.reset();
}

bool ShmTransport::progressRecvs(Peer& p) {
  bool moved = false;
  uint64_t tail = p.in->tail.load(std::memory_order_relaxed);
  while (tail != p.in->head.load(std::memory_order_acquire)) {
    handleSlot(p, p.in->slots[tail % kSlots]);
    ++tail;
    p.in->tail.store(tail, std::memory_order_release);
    ring(p.seg);  // the sender may be waiting for a free slot
    moved = true;
  }
  return moved;
}

bool ShmTransport::progress() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  bool moved = false;
  for (auto& kv : peers_) {
    if (kv.first == rank_ && localRanks_.size() > 1 && kv.second.sending.empty() &&
        kv.second.awaiting.empty() && kv.second.in->head.load(std::memory_order_relaxed) ==
                                          kv.second.in->tail.load(std::memory_order_relaxed))
      continue;
    moved |= progressRecvs(kv.second);
    moved |= progressSends(kv.second);
  }
  // What moved may complete a request another thread of this process sleeps on (the
  // progress thread's async receive, drained by a blocking call on the caller's thread,
  // or the reverse). Peers ring our bell; a thread of ours must too, or that sleeper
  // stays asleep for its whole timeout (up to 1 ms in Links::backoff).
  if (moved && mine_->sleepers.load(std::memory_order_seq_cst) != 0) {
    ring(mine_);
  }
  return moved;
}

std::string ShmTransport::goneWhy(const Peer& p) const {
  if (!p.seg || p.seg == mine_) return "";
  std::string cause = failureOf(p);
  if (!cause.empty()) return "rank " + std::to_string(p.rank) + " gave up after an error: " + cause;
  if (p.seg->pid != getpid() && !processAlive(p.seg->pid))
    return "rank " + std::to_string(p.rank) + " (pid " + std::to_string(p.seg->pid) + ") has exited";
  return "";
}

void ShmTransport::failDeadPeers() {
  // A peer process that died, or that aborted after an error, never answers: fail what
  // waits on it now rather than at the timeout, naming the first cause. Checked at most
  // every 100 ms, and only while sleeping.
  auto now = std::chrono::steady_clock::now();
  if (now - lastLivenessCheck_ < std::chrono::milliseconds(100)) return;
  lastLivenessCheck_ = now;
  std::lock_guard<std::recursive_mutex> lock(mu_);
  auto waiting = [](const Peer& p) {
    return !p.sending.empty() || !p.awaiting.empty() || !p.match.posted.empty() || p.inCurrent;
  };
  for (auto& kv : peers_) {
    Peer& p = kv.second;
    if (!waiting(p)) continue;
    std::string why = goneWhy(p);
    if (why.empty()) continue;
    // What an exited peer published before it left is still in our segment: a peer that
    // sent its last message and exited (closed early) must not lose it. Take it, then
    // fail only what it can no longer complete.
    if (failureOf(p).empty()) progressRecvs(p);
    if (waiting(p)) failPeer(p, why);
  }
}

std::string ShmTransport::peerFailure(int peer) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!aborted_.empty()) return aborted_;
  return goneWhy(peerOf(peer));
}

std::string ShmTransport::waitState(int peer, uint64_t tagBase) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  const Peer& p = peerOf(peer);
  auto tags = [&](const std::deque<OutMsg>& q) { return tagOffsets(q, tagBase, [](const OutMsg& m) { return m.req->tag; }); };
  return "shm to rank " + std::to_string(p.rank) + ": slots written " +
         std::to_string(p.out->head.load(std::memory_order_acquire)) + ", taken " +
         std::to_string(p.out->tail.load(std::memory_order_acquire)) + ", sends queued " + tags(p.sending) +
         ", awaiting ack " + tags(p.awaiting) + "; from it: slots written " +
         std::to_string(p.in->head.load(std::memory_order_acquire)) + ", taken " +
         std::to_string(p.in->tail.load(std::memory_order_acquire)) + ", " + p.match.describe(tagBase) +
         (p.inCurrent ? " (one arriving)" : "");
}

void ShmTransport::failPeer(Peer& p, const std::string& why) {
  for (auto& m : p.sending) complete(*m.req, why);
  for (auto& m : p.awaiting) complete(*m.req, why);
  if (p.inCurrent) complete(*p.current.req, why);
  p.match.failWaiting(why);
  p.sending.clear();
  p.awaiting.clear();
  p.inCurrent = false;
}

void ShmTransport::sleepFor(int us) {
  failDeadPeers();
  uint32_t v = mine_->bell.load(std::memory_order_seq_cst);
  // Counted as a sleeper before the last look: another thread of ours that moves our
  // request while we look (it holds the lock, our progress() finds nothing) sees us and
  // rings, so the futex wait below returns at once. Anything that changed between the
  // caller's last progress() and the bell read would otherwise be slept through.
  mine_->sleepers.fetch_add(1, std::memory_order_seq_cst);
  if (!progress()) futexWait(&mine_->bell, v, us);
  mine_->sleepers.fetch_sub(1, std::memory_order_seq_cst);
}

bool ShmTransport::probe(int peer, uint64_t tag, size_t* nbytes) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer);
  progressRecvs(p);
  const Unexpected* u = p.match.peekUnexpected(tag);
  if (u && nbytes) *nbytes = u->nbytes;
  return u != nullptr;
}

bool ShmTransport::stale(int peer, uint64_t lo, uint64_t hi, uint64_t* tag, uint64_t* fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  const Unexpected* u = peerOf(peer).match.waitingIn(lo, hi);
  if (!u) return false;
  *tag = u->tag;
  *fingerprint = u->fingerprint;
  return true;
}

void ShmTransport::abort(const std::string& why) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (mine_ && mine_->failed.load(std::memory_order_relaxed) == 0) {
    size_t n = std::min(why.size(), sizeof(mine_->failure) - 1);
    std::memcpy(mine_->failure, why.data(), n);
    mine_->failure[n] = '\0';
    mine_->failed.store(1, std::memory_order_release);
    for (auto& kv : peers_)
      if (kv.second.seg && kv.second.seg != mine_) ring(kv.second.seg);  // sleepers look again
  }
  aborted_ = why;
  for (auto& kv : peers_) failPeer(kv.second, why);
}

// ---------------------------------------------------------------- progress board

int ShmTransport::claimBoardSlot(uint32_t comm) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  // An unused slot, else a closed communicator's: a closed entry stays readable as long
  // as possible, since ranks that time out together close at different moments.
  int slot = -1;
  for (int i = 0; i < kBoardSlots; ++i) {
    uint64_t c = mine_->board[i].comm.load(std::memory_order_relaxed);
    if (c == 0) {
      slot = i;
      break;
    }
    if ((c & kClosed) && slot < 0) slot = i;
  }
  if (slot >= 0) {
    ShmProgress& e = mine_->board[slot];
    e.comm.store(0, std::memory_order_release);
    e.started.store(0, std::memory_order_relaxed);
    e.ended.store(0, std::memory_order_relaxed);
    e.comm.store(uint64_t(comm) + 1, std::memory_order_release);
  }
  return slot;
}

void ShmTransport::releaseBoardSlot(int slot) {
  if (slot >= 0 && slot < kBoardSlots) mine_->board[slot].comm.fetch_or(kClosed, std::memory_order_release);
}

void ShmTransport::noteStarted(int slot, uint64_t seq, int kind) {
  if (slot >= 0) mine_->board[slot].started.store((seq + 1) << 8 | uint64_t(kind & 0xff), std::memory_order_release);
}

void ShmTransport::noteEnded(int slot, uint64_t seq) {
  if (slot >= 0) mine_->board[slot].ended.store(seq + 1, std::memory_order_release);
}

bool ShmTransport::peerProgress(int rank, uint32_t comm, CallProgress* out) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  auto it = peers_.find(rank);
  if (it == peers_.end() || !it->second.seg) return false;
  *out = CallProgress();
  for (const ShmProgress& e : it->second.seg->board) {
    uint64_t c = e.comm.load(std::memory_order_acquire);
    if ((c & ~kClosed) != uint64_t(comm) + 1 || (out->found && (c & kClosed))) continue;  // an open entry wins
    uint64_t started = e.started.load(std::memory_order_acquire);
    uint64_t ended = e.ended.load(std::memory_order_acquire);
    out->entered = started >> 8;
    out->kind = static_cast<int>(started & 0xff);
    out->finished = ended;
    out->found = true;
  }
  return true;
}

}  // namespace hcomm
