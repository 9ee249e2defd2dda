// Small blocking-socket helpers with deadlines, used by the bootstrap and by the TCP
// transport's connection set-up. Addresses are IPv4 "ip:port" strings.
#pragma once
#include <chrono>
#include <string>

namespace hcomm {

using Clock = std::chrono::steady_clock;

struct HostPort {
  std::string host;
  int port = 0;
  std::string str() const { return host + ":" + std::to_string(port); }
};

HostPort parseHostPort(const std::string& s);  // throws Error naming the bad string
// The IPv4 address to use: HCOMM_SOCKET_IFNAME's address if set, else the source address
// of the route to `towards` (when given), else the first up non-loopback interface,
// else 127.0.0.1.
std::string chooseLocalIp(const std::string& towards = "");
int listenOn(const std::string& ip, int port, int* boundPort);  // returns the fd
int connectTo(const HostPort& to, Clock::time_point deadline);   // retries until deadline
// Accepts one connection, or returns -1 when the deadline passes.
int acceptBefore(int listenFd, Clock::time_point deadline);
void sendAll(int fd, const void* buf, size_t n, Clock::time_point deadline);
void recvAll(int fd, void* buf, size_t n, Clock::time_point deadline);
void setNonBlocking(int fd);
void tuneSocket(int fd);  // TCP_NODELAY and large buffers

}  // namespace hcomm
