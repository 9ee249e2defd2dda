// The socket path's CPU cost per byte, on loopback (socket_cpu.h says why and what).
#include "topo/socket_cpu.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/types.h"

namespace hcomm {

namespace {

using Clock = std::chrono::steady_clock;

// A file descriptor closed when it goes out of scope (every error path throws).
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

[[noreturn]] void fail(const char* what) {
  throw Error(std::string("socket CPU probe: ") + what + ": " + std::strerror(errno));
}

// A connected pair over 127.0.0.1 (the namespace's own loopback), both ends non-blocking.
void loopbackPair(Fd& listener, Fd& client, Fd& server) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (listener.fd < 0 || client.fd < 0) fail("socket");
  if (::bind(listener.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) fail("bind 127.0.0.1");
  if (::listen(listener.fd, 1) != 0 || ::getsockname(listener.fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    fail("listen");
  if (::connect(client.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) fail("connect 127.0.0.1");
  server.fd = ::accept(listener.fd, nullptr, nullptr);
  if (server.fd < 0) fail("accept");
  int one = 1;  // as the tcp transport sets it: no batching delay on a partial segment
  ::setsockopt(client.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// One sweep: `bytes` from src into the socket and out into dst, the time inside the
// send calls and inside the receive calls summed apart.
SocketCpu sweep(int tx, int rx, const char* src, char* dst, size_t bytes) {
  constexpr size_t kChunk = 256u << 10;  // the tcp transport's writes are of this order
  double sendS = 0, recvS = 0;
  size_t sent = 0, got = 0;
  while (got < bytes) {
    if (sent < bytes) {
      auto t0 = Clock::now();
      ssize_t w = ::send(tx, src + sent, std::min(kChunk, bytes - sent), MSG_DONTWAIT | MSG_NOSIGNAL);
      sendS += std::chrono::duration<double>(Clock::now() - t0).count();
      if (w > 0) sent += static_cast<size_t>(w);
      else if (errno != EAGAIN && errno != EWOULDBLOCK) fail("send");
    }
    auto t0 = Clock::now();
    ssize_t r = ::recv(rx, dst + got, bytes - got, MSG_DONTWAIT);
    recvS += std::chrono::duration<double>(Clock::now() - t0).count();
    if (r > 0) got += static_cast<size_t>(r);
    else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) fail("recv");
  }
  return {sendS / bytes, recvS / bytes};
}

}  // namespace

SocketCpu measureSocketCpu(size_t bytes, int sweeps) {
  if (bytes == 0 || sweeps < 1) throw Error("socket CPU probe: bytes and sweeps must be positive");
  Fd listener(::socket(AF_INET, SOCK_STREAM, 0)), client(::socket(AF_INET, SOCK_STREAM, 0)), server(-1);
  loopbackPair(listener, client, server);
  // Fresh buffers larger than the caches, touched once first: the copies read and write
  // memory as a collective's large buffers do.
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  SocketCpu best{std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity()};
  for (int i = 0; i < sweeps; ++i) {
    SocketCpu s = sweep(client.fd, server.fd, src.data(), dst.data(), bytes);
    best.send = std::min(best.send, s.send);  // load only ever adds time: keep the least
    best.recv = std::min(best.recv, s.recv);
  }
  return best;
}

void measureSocketCpuAtInit(Topology& t, const InitChannel& ch) {
  bool crossesHosts = false;
  for (int a = 0; a < t.size() && !crossesHosts; ++a)
    for (int b = a + 1; b < t.size() && !crossesHosts; ++b) crossesHosts = t.between(a, b) != LinkClass::SHM &&
                                                                              t.between(a, b) != LinkClass::NVLINK;
  if (!crossesHosts) return;
  int first = ch.rank;  // the lowest rank on my machine measures for it
  for (int r = 0; r < ch.rank; ++r)
    if (t.ranks[r].hostname == t.ranks[ch.rank].hostname) {
      first = r;
      break;
    }
  double cost[2] = {0, 0};
  if (first == ch.rank) {
    try {
      SocketCpu s = measureSocketCpu();
      cost[0] = s.send;
      cost[1] = s.recv;
    } catch (const Error&) {
      // no loopback here: this machine says nothing, the others still agree
    }
  }
  ch.maxAll(cost, 2);
  if (cost[0] <= 0 || cost[1] <= 0) return;
  for (LinkClass c : {LinkClass::TCP, LinkClass::RACK}) {
    t.links[static_cast<int>(c)].sendCpu = cost[0];
    t.links[static_cast<int>(c)].recvCpu = cost[1];
  }
}

}  // namespace hcomm
