#include "transport/tcp.h"

#include <linux/sockios.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <thread>

namespace hcomm {

namespace {
constexpr uint64_t kMsgMagic = 0x68636f6d6d544d31ull;  // "hcommTM1"
// An abort notice: the payload is why the sender gave up (at most kMaxNotice bytes), so
// a rank waiting on it fails with the first cause rather than "connection closed".
constexpr uint64_t kAbortMagic = 0x68636f6d6d544142ull;  // "hcommTAB"
constexpr size_t kMaxNotice = 448;
// Header-only progress frames (no payload), both carrying the sender's own progress on
// one communicator: finished << 24 | comm in `tag`, kind << 56 | entered in `fingerprint`
// (entered and finished are seq + 1: 40 and 48 bits are plenty; all ones: no progress).
// A query also asks for an answer. Because a query tells where its sender is, a rank
// that times out, reports and leaves is still known to the ranks that report later.
constexpr uint64_t kQueryMagic = 0x68636f6d6d545051ull;   // "hcommTPQ"
constexpr uint64_t kAnswerMagic = 0x68636f6d6d545041ull;  // "hcommTPA"
constexpr uint32_t kHelloMagic = 0x68634f4b;
constexpr size_t kStage = 256 << 10;

struct Hello {
  uint32_t magic;
  int32_t rank;
  char token[32];
};

Hello makeHello(int rank, const std::string& token) {
  Hello h;
  std::memset(&h, 0, sizeof h);
  h.magic = kHelloMagic;
  h.rank = rank;
  // A fixed-width field, compared in full: no terminating NUL needed when it is full.
  std::memcpy(h.token, token.data(), std::min(token.size(), sizeof h.token));
  return h;
}

// A connection accepted on the listener whose hello has not all arrived.
struct PendingHello {
  int fd;
  Clock::time_point deadline;  // dropped when this passes before the hello is whole
  Hello hello;
  size_t got = 0;  // bytes of hello received so far
};

int pollMs(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count() + 1;
  return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1000));
}

// Reads what has arrived of p's hello. Returns false when the connection is to be
// dropped (closed or a socket error). Never reads past the hello: the bytes after it
// are the peer's first messages, which progress() reads.
bool readHello(PendingHello& p) {
  while (p.got < sizeof(Hello)) {
    ssize_t r = ::recv(p.fd, reinterpret_cast<char*>(&p.hello) + p.got, sizeof(Hello) - p.got, MSG_DONTWAIT);
    if (r == 0) return false;
    if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    p.got += static_cast<size_t>(r);
  }
  return true;
}
}  // namespace

TcpTransport::TcpTransport(int rank, const std::string& bindIp, const std::string& token, double timeoutSec)
    : rank_(rank), ip_(bindIp), token_(token), timeoutSec_(timeoutSec) {
  listenFd_ = listenOn(ip_, 0, &port_);
}

TcpTransport::~TcpTransport() {
  if (aborted_.empty()) closeGracefully();
  for (auto& kv : peers_)
    if (kv.second.fd >= 0) close(kv.second.fd);
  if (listenFd_ >= 0) close(listenFd_);
}

void TcpTransport::closeGracefully() {
  // close() on a socket with unread bytes sends a reset, and a reset throws away what
  // this side's kernel still holds unsent: a send that completed (it reached the kernel)
  // would never reach a slower peer. So: finish queued frames, send FIN after them, and
  // until every byte is acknowledged (SIOCOUTQ 0) read and drop whatever still arrives,
  // so the final close finds nothing unread. Bounded by the timeout; a dead peer's
  // connection errors at once and is let go.
  auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeoutSec_));
  std::vector<Peer*> open;
  for (auto& kv : peers_) {
    Peer& p = kv.second;
    if (p.fd < 0 || !p.broken.empty()) continue;
    bool moved = false;
    while (!p.sending.empty() && p.broken.empty() && Clock::now() < deadline) {
      if (writeFront(p, &moved)) continue;
      struct pollfd f = {p.fd, POLLOUT, 0};
      poll(&f, 1, pollMs(deadline));
    }
    if (p.broken.empty() && p.sending.empty()) {
      shutdown(p.fd, SHUT_WR);
      open.push_back(&p);
    }
  }
  char sink[64 << 10];
  while (!open.empty() && Clock::now() < deadline) {
    std::vector<Peer*> still;
    for (Peer* p : open) {
      ssize_t r;
      while ((r = ::recv(p->fd, sink, sizeof sink, MSG_DONTWAIT)) > 0) {
      }
      bool gone = r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
      int unsent = 0;
      if (!gone && ioctl(p->fd, SIOCOUTQ, &unsent) == 0 && unsent > 0) still.push_back(p);
    }
    open.swap(still);
    if (!open.empty()) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

std::string TcpTransport::address() const { return ip_ + ":" + std::to_string(port_); }

void TcpTransport::acceptPeers(const std::vector<int>& from, Clock::time_point deadline) {
  constexpr double kHelloSec = 10.0;   // a rank sends its hello right after connecting
  constexpr size_t kMaxPending = 512;  // a flood of strangers drops its oldest first
  std::set<int> waiting(from.begin(), from.end());
  std::vector<PendingHello> pending;
  std::string failure;
  setNonBlocking(listenFd_);
  auto drop = [](PendingHello& p) { close(p.fd); p.fd = -1; };
  // A whole hello arrived: the connection becomes rank h.rank's, or is closed unanswered.
  auto admit = [&](PendingHello& p) {
    const Hello& h = p.hello;
    if (h.magic != kHelloMagic || std::string(h.token, strnlen(h.token, sizeof h.token)) != token_ ||
        !waiting.count(h.rank)) {  // out of range, not a peer over tcp, or already connected
      drop(p);
      return;
    }
    peers_[h.rank].fd = p.fd;
    p.fd = -1;  // owned by peers_ now
    waiting.erase(h.rank);
  };
  while (!waiting.empty() && Clock::now() < deadline) {
    std::vector<pollfd> polled{{listenFd_, POLLIN, 0}};
    auto wake = deadline;
    for (const auto& p : pending) {
      polled.push_back({p.fd, POLLIN, 0});
      wake = std::min(wake, p.deadline);
    }
    if (poll(polled.data(), polled.size(), pollMs(wake)) < 0 && errno != EINTR) {
      failure = std::string("poll: ") + strerror(errno);
      break;
    }
    auto now = Clock::now();
    for (size_t i = 1; i < polled.size(); ++i) {
      PendingHello& p = pending[i - 1];
      if (polled[i].revents && !readHello(p)) drop(p);
      else if (p.got == sizeof(Hello)) admit(p);
      else if (now >= p.deadline) drop(p);
    }
    pending.erase(std::remove_if(pending.begin(), pending.end(), [](const PendingHello& p) { return p.fd < 0; }),
                  pending.end());
    if (!polled[0].revents) continue;
    for (;;) {
      int fd = accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        // Out of descriptors: make room by dropping the oldest stranger, else the
        // listener stays readable and this loop spins until deadlines free some.
        if ((errno == EMFILE || errno == ENFILE) && !pending.empty()) {
          close(pending.front().fd);
          pending.erase(pending.begin());
          continue;
        }
        break;  // EAGAIN: none left (or the peer already gave up)
      }
      if (pending.size() >= kMaxPending) {
        close(pending.front().fd);
        pending.erase(pending.begin());
      }
      tuneSocket(fd);
      PendingHello p;
      p.fd = fd;
      p.deadline = std::min(deadline, Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                          std::chrono::duration<double>(kHelloSec)));
      pending.push_back(p);
    }
  }
  for (auto& p : pending) close(p.fd);
  if (waiting.empty()) return;
  std::string missing;
  for (int r : waiting) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
  std::string what = "tcp transport: ranks [" + missing + "] never connected to rank " + std::to_string(rank_);
  if (!failure.empty()) throw Error(what + " (" + failure + ")");
  throw TimeoutError(what);
}

void TcpTransport::connect(const std::vector<int>& peers, const std::vector<std::string>& addrs) {
  auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeoutSec_));
  std::vector<int> lower, higher;
  for (int r : peers) {
    peers_[r].rank = r;
    (r < rank_ ? lower : higher).push_back(r);
  }
  for (int r : lower) {
    int fd = connectTo(parseHostPort(addrs.at(r)), deadline);
    Hello h = makeHello(rank_, token_);
    sendAll(fd, &h, sizeof h, deadline);
    peers_[r].fd = fd;
  }
  acceptPeers(higher, deadline);
  for (auto& kv : peers_) setNonBlocking(kv.second.fd);
  reach_ = peers;
  // Every peer is in: nothing is accepted again, and a connection arriving from now on
  // is refused by the kernel instead of waiting unread in the backlog.
  close(listenFd_);
  listenFd_ = -1;
}

TcpTransport::Peer& TcpTransport::peerOf(int rank) {
  auto it = peers_.find(rank);
  if (it == peers_.end() || it->second.fd < 0)
    throw Error("tcp transport: no connection to rank " + std::to_string(rank));
  return it->second;
}

void TcpTransport::fail(Peer& p, const std::string& why) {
  p.broken = "connection to rank " + std::to_string(p.rank) + " failed: " + why;
  failWaiting(p, p.broken);
  p.inPayload = false;
}

RequestPtr TcpTransport::isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer);
  RequestPtr req = makeRequest(peer, tag, nbytes, true, fingerprint);
  if (!aborted_.empty() || !p.broken.empty()) {
    complete(*req, aborted_.empty() ? p.broken : aborted_);
    return req;
  }
  OutMsg m;
  m.req = req;
  m.hdr = {kMsgMagic, tag, nbytes, fingerprint};
  m.buf = static_cast<const char*>(buf);
  p.sending.push_back(m);
  flush(p);
  return req;
}

RequestPtr TcpTransport::irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                               uint64_t fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer);
  PostedRecv r = postedRecv(peer, tag, buf, nbytes, reduce, fingerprint);
  if (!aborted_.empty()) {
    complete(*r.req, aborted_);
    return r.req;
  }
  if (!p.broken.empty()) {
    // A message that fully arrived before the peer closed can still be received (a
    // peer may send its last message and exit before we ask for it).
    const Unexpected* u = p.match.peekUnexpected(tag);
    if (!u || !u->complete) {
      complete(*r.req, p.broken);
      return r.req;
    }
  }
  UnexpectedPtr rendezvous;  // never set: TCP messages carry their payload
  if (!p.match.matchEarly(peer, r, &rendezvous)) drain(p);
  return r.req;
}

bool TcpTransport::writeFront(Peer& p, bool* moved) {
  OutMsg& m = p.sending.front();
  size_t total = sizeof(Header) + m.hdr.nbytes;
  struct iovec iov[2];
  int n = 0;
  if (m.sent < sizeof(Header)) {
    iov[n++] = {reinterpret_cast<char*>(&m.hdr) + m.sent, sizeof(Header) - m.sent};
    if (m.hdr.nbytes) iov[n++] = {const_cast<char*>(m.buf), m.hdr.nbytes};
  } else {
    size_t off = m.sent - sizeof(Header);
    iov[n++] = {const_cast<char*>(m.buf) + off, m.hdr.nbytes - off};
  }
  struct msghdr mh;
  std::memset(&mh, 0, sizeof mh);
  mh.msg_iov = iov;
  mh.msg_iovlen = n;
  ssize_t w = sendmsg(p.fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (w < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      fail(p, strerror(errno));
      *moved = true;
    }
    return false;
  }
  *moved = true;
  m.sent += static_cast<size_t>(w);
  if (m.sent < total) return false;
  complete(*m.req);
  p.sending.pop_front();
  return true;
}

bool TcpTransport::flush(Peer& p) {
  bool moved = false;
  while (!p.sending.empty() && p.broken.empty() && writeFront(p, &moved)) {
  }
  return moved;
}

void TcpTransport::startPayload(Peer& p) {
  p.inPayload = true;
  p.got = 0;
  p.staged = 0;
  bool notice = p.hdr.magic == kAbortMagic;
  p.toPosted = !notice && p.match.takePosted(p.hdr.tag, &p.current);
  std::string why = p.toPosted ? mismatch(p.rank, p.hdr.tag, p.hdr.nbytes, p.hdr.fingerprint, *p.current.req) : "";
  if (!why.empty()) {
    complete(*p.current.req, why);
    p.toPosted = false;  // drain the payload into an unmatched message
  }
  if (!p.toPosted) {
    p.streaming = std::make_shared<Unexpected>();
    p.streaming->tag = p.hdr.tag;
    p.streaming->nbytes = p.hdr.nbytes;
    p.streaming->fingerprint = p.hdr.fingerprint;
    p.streaming->data.resize(p.hdr.nbytes);
    if (!notice) p.match.unexpected.push_back(p.streaming);
  } else if (p.current.reducing && p.stage.size() < kStage) {
    p.stage.resize(kStage);
  }
}

void TcpTransport::finishPayload(Peer& p) {
  p.inPayload = false;
  p.hdrGot = 0;
  if (p.hdr.magic == kAbortMagic) {
    std::string cause(p.streaming->data.begin(), p.streaming->data.end());
    p.streaming.reset();
    fail(p, "rank " + std::to_string(p.rank) + " gave up after an error: " + cause);
    return;
  }
  if (p.toPosted) {
    complete(*p.current.req);
    p.current = PostedRecv();
    return;
  }
  Unexpected& u = *p.streaming;
  u.complete = true;
  if (u.bound) {
    auto it = std::find(p.match.unexpected.begin(), p.match.unexpected.end(), p.streaming);
    if (it != p.match.unexpected.end()) p.match.unexpected.erase(it);
    u.bound->deliver(0, u.data.data(), u.nbytes);
    complete(*u.bound->req);
  }
  p.streaming.reset();
}

bool TcpTransport::drain(Peer& p) {
  bool moved = false;
  while (p.broken.empty()) {
    char* dst;
    size_t want;
    if (!p.inPayload) {
      dst = reinterpret_cast<char*>(&p.hdr) + p.hdrGot;
      want = sizeof(Header) - p.hdrGot;
    } else if (p.toPosted && p.current.reducing) {
      dst = p.stage.data() + p.staged;
      want = std::min(kStage - p.staged, p.hdr.nbytes - p.got - p.staged);
    } else {
      dst = (p.toPosted ? p.current.dst : p.streaming->data.data()) + p.got;
      want = p.hdr.nbytes - p.got;
    }
    ssize_t r = want ? ::recv(p.fd, dst, want, MSG_DONTWAIT) : 0;
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
      fail(p, strerror(errno));
      return true;
    }
    if (r == 0 && want) {
      fail(p, "closed by the peer (did rank " + std::to_string(p.rank) + " exit?)");
      return true;
    }
    moved = true;
    if (!p.inPayload) {
      p.hdrGot += static_cast<size_t>(r);
      if (p.hdrGot < sizeof(Header)) continue;
      if (p.hdr.magic == kQueryMagic || p.hdr.magic == kAnswerMagic) {
        handleControl(p);
        continue;
      }
      if (p.hdr.magic != kMsgMagic && !(p.hdr.magic == kAbortMagic && p.hdr.nbytes <= kMaxNotice)) {
        fail(p, "garbage on the connection (bad message header)");
        return true;
      }
      startPayload(p);
    } else if (p.toPosted && p.current.reducing) {
      p.staged += static_cast<size_t>(r);
      if (p.staged == kStage || p.got + p.staged == p.hdr.nbytes) {
        p.current.deliver(p.got, p.stage.data(), p.staged);
        p.got += p.staged;
        p.staged = 0;
      }
    } else {
      p.got += static_cast<size_t>(r);
    }
    if (p.inPayload && p.got == p.hdr.nbytes) finishPayload(p);
  }
  return moved;
}

bool TcpTransport::progress() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  bool moved = false;
  for (auto& kv : peers_) {
    if (kv.second.fd < 0 || !kv.second.broken.empty()) continue;
    moved |= flush(kv.second);
    moved |= drain(kv.second);
  }
  return moved;
}

void TcpTransport::sleepFor(int us) {
  std::vector<struct pollfd> fds;
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    for (auto& kv : peers_) {
      if (kv.second.fd < 0 || !kv.second.broken.empty()) continue;
      short ev = POLLIN | (kv.second.sending.empty() ? 0 : POLLOUT);
      fds.push_back({kv.second.fd, ev, 0});
    }
  }
  if (fds.empty()) {
    usleep(static_cast<useconds_t>(us));
    return;
  }
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};  // microseconds, not poll's milliseconds
  ppoll(fds.data(), fds.size(), &ts, nullptr);
}

bool TcpTransport::probe(int peer, uint64_t tag, size_t* nbytes) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer);
  drain(p);
  const Unexpected* u = p.match.peekUnexpected(tag);
  if (u && nbytes) *nbytes = u->nbytes;
  return u != nullptr;
}

bool TcpTransport::stale(int peer, uint64_t lo, uint64_t hi, uint64_t* tag, uint64_t* fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  const Unexpected* u = peerOf(peer).match.waitingIn(lo, hi);
  if (!u) return false;
  *tag = u->tag;
  *fingerprint = u->fingerprint;
  return true;
}

std::string TcpTransport::peerFailure(int peer) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!aborted_.empty()) return aborted_;
  auto it = peers_.find(peer);
  if (it == peers_.end() || it->second.fd < 0) return "";
  drain(it->second);  // reads up to a close or an abort notice, which sets `broken`
  return it->second.broken;
}

std::string TcpTransport::waitState(int peer, uint64_t tagBase) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  auto it = peers_.find(peer);
  if (it == peers_.end()) return "";
  const Peer& p = it->second;
  std::string s = "tcp to rank " + std::to_string(p.rank) + ": sends queued " +
                  tagOffsets(p.sending, tagBase, [](const OutMsg& m) { return m.req->tag; });
  if (!p.sending.empty()) s += " (first " + std::to_string(p.sending.front().sent) + " bytes out)";
  s += "; from it: " + p.match.describe(tagBase);
  if (p.inPayload) s += " (one arriving, " + std::to_string(p.got) + " of " + std::to_string(p.hdr.nbytes) + " bytes)";
  if (!p.broken.empty()) s += "; connection: " + p.broken;
  return s;
}

void TcpTransport::abort(const std::string& why) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  bool first = aborted_.empty();
  aborted_ = why;
  for (auto& kv : peers_) {
    Peer& p = kv.second;
    if (first) finishHalfSent(p);
    bool midMessage = !p.sending.empty() && p.sending.front().sent > 0;
    failWaiting(p, why);
    if (first && p.fd >= 0 && p.broken.empty()) tellAbort(p, why, midMessage);
  }
}

void TcpTransport::setProgressSource(ProgressSource source) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  progressSource_ = std::move(source);
}

void TcpTransport::sendControl(Peer& p, uint64_t magic, uint64_t tag, uint64_t fingerprint) {
  OutMsg m;
  m.req = std::make_shared<Request>();
  m.hdr = {magic, tag, 0, fingerprint};
  m.buf = nullptr;
  p.sending.push_back(m);  // behind whatever is queued: frames never interleave
  flush(p);
}

void TcpTransport::sendProgress(Peer& p, uint64_t magic, uint32_t comm) {
  CallProgress mine;
  bool found = progressSource_ && progressSource_(comm, &mine);
  uint64_t tag = (found ? mine.finished : 0) << 24 | (comm & 0xffffff);
  uint64_t fp = found ? uint64_t(mine.kind & 0xff) << 56 | (mine.entered & ((1ull << 48) - 1)) : ~0ull;
  sendControl(p, magic, tag, fp);
}

void TcpTransport::query(uint32_t comm) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  for (auto& kv : peers_)
    if (kv.second.fd >= 0 && kv.second.broken.empty()) sendProgress(kv.second, kQueryMagic, comm);
}

bool TcpTransport::answer(int rank, uint32_t comm, CallProgress* out) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  auto it = answers_.find({rank, comm});
  if (it == answers_.end()) return false;
  *out = it->second;
  return true;
}

void TcpTransport::handleControl(Peer& p) {
  p.hdrGot = 0;
  uint32_t comm = static_cast<uint32_t>(p.hdr.tag & 0xffffff);
  if (p.hdr.magic == kQueryMagic) sendProgress(p, kAnswerMagic, comm);
  CallProgress got;
  got.found = p.hdr.fingerprint != ~0ull;
  if (got.found) {
    got.entered = p.hdr.fingerprint & ((1ull << 48) - 1);
    got.kind = static_cast<int>(p.hdr.fingerprint >> 56);
    got.finished = p.hdr.tag >> 24;
  }
  answers_[{p.rank, comm}] = got;
}

void TcpTransport::finishHalfSent(Peer& p) {
  // A frame cut off in the middle would make the notice unreadable. Its buffer is still
  // the caller's (this call has not returned), so its bytes are good: finish it if the
  // peer takes them within a moment.
  auto deadline = Clock::now() + std::chrono::milliseconds(200);
  bool moved = false;
  while (p.fd >= 0 && p.broken.empty() && !p.sending.empty() && p.sending.front().sent > 0 &&
         !writeFront(p, &moved) && p.broken.empty() && Clock::now() < deadline) {
    struct pollfd f = {p.fd, POLLOUT, 0};
    poll(&f, 1, 10);
  }
}

void TcpTransport::tellAbort(Peer& p, const std::string& why, bool midMessage) {
  // Best effort, never blocking: the notice goes out only on a clean message boundary;
  // otherwise (or if it does not fit in the socket buffer) the connection is shut down,
  // which the peer sees at once as a closed connection.
  std::string text = why.substr(0, kMaxNotice);
  Header h{kAbortMagic, 0, text.size(), 0};
  std::string frame(reinterpret_cast<const char*>(&h), sizeof h);
  frame += text;
  ssize_t n = midMessage ? -1 : ::send(p.fd, frame.data(), frame.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n != static_cast<ssize_t>(frame.size())) shutdown(p.fd, SHUT_RDWR);
}

void TcpTransport::failWaiting(Peer& p, const std::string& why) {
  for (auto& m : p.sending) complete(*m.req, why);
  if (p.inPayload && p.toPosted) complete(*p.current.req, why);
  p.match.failWaiting(why);
  p.sending.clear();
}

}  // namespace hcomm
