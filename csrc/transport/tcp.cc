#include "transport/tcp.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace hcomm {

namespace {
constexpr uint64_t kMsgMagic = 0x68636f6d6d544d31ull;  // "hcommTM1"
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
  std::strncpy(h.token, token.c_str(), sizeof h.token);
  return h;
}
}  // namespace

TcpTransport::TcpTransport(int rank, const std::string& bindIp, const std::string& token, double timeoutSec)
    : rank_(rank), ip_(bindIp), token_(token), timeoutSec_(timeoutSec) {
  listenFd_ = listenOn(ip_, 0, &port_);
}

TcpTransport::~TcpTransport() {
  for (auto& kv : peers_)
    if (kv.second.fd >= 0) close(kv.second.fd);
  if (listenFd_ >= 0) close(listenFd_);
}

std::string TcpTransport::address() const { return ip_ + ":" + std::to_string(port_); }

void TcpTransport::acceptPeers(const std::vector<int>& from, Clock::time_point deadline) {
  size_t want = from.size(), have = 0;
  while (have < want) {
    int fd = acceptBefore(listenFd_, deadline);
    if (fd < 0) {
      std::string missing;
      for (int r : from)
        if (peers_[r].fd < 0) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      throw TimeoutError("tcp transport: ranks [" + missing + "] never connected to rank " + std::to_string(rank_));
    }
    Hello h;
    // A stranger or a stalled connection gets at most two seconds, then is dropped.
    try {
      recvAll(fd, &h, sizeof h, std::min(deadline, Clock::now() + std::chrono::seconds(2)));
    } catch (const Error&) {
      close(fd);
      continue;
    }
    bool known = std::find(from.begin(), from.end(), h.rank) != from.end();
    if (h.magic != kHelloMagic || std::string(h.token, strnlen(h.token, sizeof h.token)) != token_ || !known ||
        peers_[h.rank].fd >= 0) {
      close(fd);
      continue;
    }
    peers_[h.rank].fd = fd;
    ++have;
  }
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

bool TcpTransport::flush(Peer& p) {
  bool moved = false;
  while (!p.sending.empty()) {
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
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
      fail(p, strerror(errno));
      return true;
    }
    moved = true;
    m.sent += static_cast<size_t>(w);
    if (m.sent < total) break;
    complete(*m.req);
    p.sending.pop_front();
  }
  return moved;
}

void TcpTransport::startPayload(Peer& p) {
  p.inPayload = true;
  p.got = 0;
  p.staged = 0;
  p.toPosted = p.match.takePosted(p.hdr.tag, &p.current);
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
    p.match.unexpected.push_back(p.streaming);
  } else if (p.current.reducing && p.stage.size() < kStage) {
    p.stage.resize(kStage);
  }
}

void TcpTransport::finishPayload(Peer& p) {
  p.inPayload = false;
  p.hdrGot = 0;
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
      if (p.hdr.magic != kMsgMagic) {
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
  poll(fds.data(), fds.size(), std::max(1, us / 1000));
}

bool TcpTransport::probe(int peer, uint64_t tag, size_t* nbytes) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer);
  drain(p);
  const Unexpected* u = p.match.peekUnexpected(tag);
  if (u && nbytes) *nbytes = u->nbytes;
  return u != nullptr;
}

void TcpTransport::abort(const std::string& why) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  aborted_ = why;
  for (auto& kv : peers_) failWaiting(kv.second, why);
}

void TcpTransport::failWaiting(Peer& p, const std::string& why) {
  for (auto& m : p.sending) complete(*m.req, why);
  if (p.inPayload && p.toPosted) complete(*p.current.req, why);
  p.match.failWaiting(why);
  p.sending.clear();
}

}  // namespace hcomm
