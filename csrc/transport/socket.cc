#include "transport/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "common/param.h"
#include "common/types.h"

namespace hcomm {

namespace {

int msLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1000));
}

sockaddr_in toSockaddr(const std::string& ip, int port) {
  sockaddr_in a;
  std::memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1) throw Error("not an IPv4 address: '" + ip + "'");
  return a;
}

std::string ifaceIp(const std::string& ifname) {
  struct ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string found;
  for (auto* i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
    bool loop = (i->ifa_flags & IFF_LOOPBACK) != 0, up = (i->ifa_flags & IFF_UP) != 0;
    if (ifname.empty() ? (loop || !up) : ifname != i->ifa_name) continue;
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof buf);
    found = buf;
    break;
  }
  freeifaddrs(list);
  return found;
}

}  // namespace

HostPort parseHostPort(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0) throw Error("expected 'host:port', got '" + s + "'");
  HostPort hp;
  hp.host = s.substr(0, colon);
  try {
    hp.port = std::stoi(s.substr(colon + 1));
  } catch (...) {
    throw Error("bad port in '" + s + "'");
  }
  if (hp.port <= 0 || hp.port > 65535) throw Error("port out of range in '" + s + "'");
  return hp;
}

std::string chooseLocalIp(const std::string& towards) {
  std::string ifname = envStr("HCOMM_SOCKET_IFNAME");
  if (!ifname.empty()) {
    std::string ip = ifaceIp(ifname);
    if (ip.empty()) throw Error("HCOMM_SOCKET_IFNAME=" + ifname + ": no IPv4 address on that interface");
    return ip;
  }
  if (!towards.empty()) {  // the kernel's route to `towards` names our address (no packet sent)
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a = toSockaddr(towards, 9);
    sockaddr_in me;
    socklen_t len = sizeof me;
    std::string ip;
    if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&me), &len) == 0) {
      char buf[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &me.sin_addr, buf, sizeof buf);
      ip = buf;
    }
    if (fd >= 0) close(fd);
    if (!ip.empty()) return ip;
  }
  std::string ip = ifaceIp("");
  return ip.empty() ? "127.0.0.1" : ip;
}

int listenOn(const std::string& ip, int port, int* boundPort) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw Error(std::string("socket: ") + strerror(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a = toSockaddr(ip, port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 1024) != 0) {
    int e = errno;
    close(fd);
    throw Error("cannot listen on " + ip + ":" + std::to_string(port) + ": " + strerror(e));
  }
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  if (boundPort) *boundPort = ntohs(a.sin_port);
  return fd;
}

int connectTo(const HostPort& to, Clock::time_point deadline) {
  sockaddr_in a = toSockaddr(to.host, to.port);
  std::string last;
  auto backoff = std::chrono::milliseconds(1);
  while (true) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw Error(std::string("socket: ") + strerror(errno));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
      tuneSocket(fd);
      return fd;
    }
    last = strerror(errno);
    close(fd);
    if (Clock::now() + backoff > deadline)
      throw TimeoutError("cannot connect to " + to.str() + ": " + last);
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(100));
  }
}

int acceptBefore(int listenFd, Clock::time_point deadline) {
  while (Clock::now() < deadline) {
    struct pollfd p = {listenFd, POLLIN, 0};
    int r = poll(&p, 1, msLeft(deadline));
    if (r < 0 && errno != EINTR) throw Error(std::string("poll: ") + strerror(errno));
    if (r <= 0) continue;
    int fd = accept4(listenFd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) {
      tuneSocket(fd);
      return fd;
    }
  }
  return -1;
}

void sendAll(int fd, const void* buf, size_t n, Clock::time_point deadline) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      p += w;
      n -= static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
      throw Error(std::string("send: ") + strerror(errno));
    if (Clock::now() > deadline) throw TimeoutError("send timed out");
    struct pollfd pf = {fd, POLLOUT, 0};
    poll(&pf, 1, msLeft(deadline));
  }
}

void recvAll(int fd, void* buf, size_t n, Clock::time_point deadline) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, MSG_DONTWAIT);
    if (r > 0) {
      p += r;
      n -= static_cast<size_t>(r);
      continue;
    }
    if (r == 0) throw Error("connection closed by peer");
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
      throw Error(std::string("recv: ") + strerror(errno));
    if (Clock::now() > deadline) throw TimeoutError("receive timed out");
    struct pollfd pf = {fd, POLLIN, 0};
    poll(&pf, 1, msLeft(deadline));
  }
}

void setNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

void tuneSocket(int fd) {
  int one = 1, buf = 4 << 20;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
}

}  // namespace hcomm
