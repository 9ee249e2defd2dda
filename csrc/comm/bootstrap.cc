#include "comm/bootstrap.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <random>
#include <thread>

#include "common/types.h"
#include "transport/socket.h"

namespace hcomm {

namespace {

constexpr uint32_t kHelloMagic = 0x68634253;   // "hcBS"
constexpr uint32_t kMaxRecord = 1 << 16;       // a record bigger than this is an attack or a bug

struct Hello {
  uint32_t magic;
  int32_t rank;
  int32_t size;
  uint32_t recordLen;
  char token[32];
};

Clock::time_point after(double sec) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(sec));
}

void sendString(int fd, const std::string& s, Clock::time_point deadline) {
  uint32_t len = static_cast<uint32_t>(s.size());
  sendAll(fd, &len, sizeof len, deadline);
  sendAll(fd, s.data(), s.size(), deadline);
}

std::string recvString(int fd, Clock::time_point deadline, uint32_t maxLen) {
  uint32_t len = 0;
  recvAll(fd, &len, sizeof len, deadline);
  if (len > maxLen) throw Error("bootstrap: oversized message (" + std::to_string(len) + " bytes)");
  std::string s(len, '\0');
  recvAll(fd, &s[0], len, deadline);
  return s;
}

// A connection the root has accepted but not yet heard a whole hello + record from.
struct Pending {
  int fd;
  Clock::time_point deadline;  // dropped when this passes before the record is complete
  Hello hello;
  size_t got = 0;  // bytes of hello, then of hello + record, received so far
  std::string record;
};

int pollMs(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count() + 1;
  return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1000));
}

// Reads what has arrived on p. Returns false when the connection is to be dropped:
// closed, a socket error, or a hello without the job token / with absurd fields.
// Nothing read here is interpreted beyond the fixed Hello fields and a byte string.
bool readPending(Pending& p, const std::string& token) {
  for (;;) {
    char* dst;
    size_t want;
    if (p.got < sizeof(Hello)) {
      dst = reinterpret_cast<char*>(&p.hello) + p.got;
      want = sizeof(Hello) - p.got;
    } else {
      size_t have = p.got - sizeof(Hello);
      if (have == p.record.size()) return true;  // complete
      dst = &p.record[have];
      want = p.record.size() - have;
    }
    ssize_t r = ::recv(p.fd, dst, want, MSG_DONTWAIT);
    if (r == 0) return false;
    if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    p.got += static_cast<size_t>(r);
    if (p.got == sizeof(Hello)) {
      const Hello& h = p.hello;
      if (h.magic != kHelloMagic || std::string(h.token, 32) != token || h.recordLen > kMaxRecord ||
          h.size <= 0 || h.size > (1 << 20))
        return false;
      p.record.assign(h.recordLen, '\0');
    }
  }
}

bool complete(const Pending& p) { return p.got >= sizeof(Hello) && p.got - sizeof(Hello) == p.record.size(); }

// Serves one rendezvous: collects `size` ranks' records and sends them all back.
// Every accepted connection is served at once through poll(), so a stranger that
// connects and stalls (or trickles a partial header) costs the job nothing: it is
// dropped when its own deadline passes, while the ranks behind it are heard. Without
// the token, with a bad header, or past its deadline, a connection is closed unread.
void serveRoot(int listenFd, std::string token, double timeoutSec) {
  constexpr double kHelloSec = 10.0;   // a rank sends its hello right after connecting
  constexpr size_t kMaxPending = 512;  // a flood of strangers drops its oldest first
  auto deadline = after(timeoutSec);
  setNonBlocking(listenFd);
  int size = -1;
  std::vector<int> fds;
  std::vector<std::string> records;
  std::vector<Pending> pending;
  std::string error;
  int have = 0;
  auto drop = [](Pending& p) { close(p.fd); p.fd = -1; };
  // A complete hello from a rank that knows the token: joins, or is told why not.
  auto join = [&](Pending& p) {
    const Hello& h = p.hello;
    if (size < 0) {
      size = h.size;
      fds.assign(size, -1);
      records.assign(size, "");
    }
    if (h.size != size || h.rank < 0 || h.rank >= size || fds[h.rank] >= 0) {
      std::string why = h.size != size
                            ? "rank " + std::to_string(h.rank) + " says the world has " + std::to_string(h.size) +
                                  " ranks but others say " + std::to_string(size)
                            : "rank " + std::to_string(h.rank) + " is out of range or joined twice";
      try { sendString(p.fd, "E" + why, after(1.0)); } catch (const Error&) {}
      drop(p);
      if (h.size != size) error = why;
      return;
    }
    fds[h.rank] = p.fd;
    records[h.rank] = std::move(p.record);
    p.fd = -1;  // owned by fds now
    ++have;
  };
  while ((size < 0 || have < size) && Clock::now() < deadline) {
    std::vector<pollfd> polled{{listenFd, POLLIN, 0}};
    auto wake = deadline;
    for (const auto& p : pending) {
      polled.push_back({p.fd, POLLIN, 0});
      wake = std::min(wake, p.deadline);
    }
    int n = poll(polled.data(), polled.size(), pollMs(wake));
    if (n < 0 && errno != EINTR) break;
    auto now = Clock::now();
    for (size_t i = 1; i < polled.size(); ++i) {
      Pending& p = pending[i - 1];
      if (polled[i].revents && !readPending(p, token)) drop(p);
      else if (complete(p)) join(p);
      else if (now >= p.deadline) drop(p);
    }
    pending.erase(std::remove_if(pending.begin(), pending.end(), [](const Pending& p) { return p.fd < 0; }),
                  pending.end());
    if (polled[0].revents) {
      for (;;) {
        int fd = accept4(listenFd, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) break;  // EAGAIN: none left (or the peer already gave up)
        if (pending.size() >= kMaxPending) {
          close(pending.front().fd);
          pending.erase(pending.begin());
        }
        Pending p;
        p.fd = fd;
        p.deadline = std::min(deadline, after(kHelloSec));
        pending.push_back(std::move(p));
      }
    }
  }
  for (auto& p : pending) close(p.fd);
  if (error.empty() && (size < 0 || have < size)) {
    std::string missing;
    for (int r = 0; r < size; ++r)
      if (fds[r] < 0) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    error = size < 0 ? "no rank joined" : "ranks [" + missing + "] never joined the bootstrap root";
  }
  std::string table = error.empty() ? "T" : "E" + error;
  if (error.empty())
    for (const auto& r : records) table += std::to_string(r.size()) + ":" + r;
  for (int fd : fds) {
    if (fd < 0) continue;
    try { sendString(fd, table, after(timeoutSec)); } catch (const Error&) {}
    close(fd);
  }
  close(listenFd);
}

UniqueId startRoot(const std::string& host, int port, const std::string& token, double timeoutSec) {
  UniqueId id;
  id.host = host;
  id.token = token;
  int fd = listenOn(host, port, &id.port);
  // Detached: it owns its socket and ends after one rendezvous or the timeout.
  std::thread(serveRoot, fd, token, timeoutSec).detach();
  return id;
}

}  // namespace

std::string UniqueId::str() const { return "hcomm1:" + host + ":" + std::to_string(port) + ":" + token; }

UniqueId UniqueId::parse(const std::string& s) {
  // hcomm1:<ip>:<port>:<token>
  auto bad = [&]() { return Error("malformed hcomm unique id '" + s + "' (expected hcomm1:<ip>:<port>:<32 hex>)"); };
  if (s.rfind("hcomm1:", 0) != 0) throw bad();
  auto last = s.rfind(':');
  auto mid = s.rfind(':', last - 1);
  if (last == std::string::npos || mid == std::string::npos || mid <= 6) throw bad();
  UniqueId id;
  id.host = s.substr(7, mid - 7);
  try {
    id.port = std::stoi(s.substr(mid + 1, last - mid - 1));
  } catch (...) {
    throw bad();
  }
  id.token = s.substr(last + 1);
  if (id.token.size() != 32 || id.port <= 0 || id.port > 65535) throw bad();
  return id;
}

std::string randomToken() {
  std::random_device rd;
  static const char* hex = "0123456789abcdef";
  std::string t(32, '0');
  for (auto& c : t) c = hex[rd() % 16];
  return t;
}

UniqueId newUniqueId(double timeoutSec) { return startRoot(chooseLocalIp(), 0, randomToken(), timeoutSec); }

UniqueId startRootAt(const std::string& host, int port, const std::string& token, double timeoutSec) {
  return startRoot(host, port, token, timeoutSec);
}

std::vector<std::string> rendezvous(const UniqueId& id, int rank, int size, const std::string& record,
                                    double timeoutSec) {
  auto deadline = after(timeoutSec);
  int fd = connectTo(HostPort{id.host, id.port}, deadline);
  std::string table;
  try {
    Hello h;
    std::memset(&h, 0, sizeof h);
    h.magic = kHelloMagic;
    h.rank = rank;
    h.size = size;
    h.recordLen = static_cast<uint32_t>(record.size());
    std::memcpy(h.token, id.token.data(), 32);
    sendAll(fd, &h, sizeof h, deadline);
    sendAll(fd, record.data(), record.size(), deadline);
    table = recvString(fd, deadline, 1u << 30);
  } catch (const TimeoutError& e) {
    close(fd);
    throw TimeoutError(std::string("bootstrap: not every rank joined the root at ") + id.host + ":" +
                       std::to_string(id.port) + " in time: " + e.what());
  } catch (const Error& e) {
    close(fd);
    throw Error(std::string("bootstrap with the root at ") + id.host + ":" + std::to_string(id.port) +
                " failed: " + e.what());
  }
  close(fd);
  if (table.empty() || table[0] != 'T') throw Error("bootstrap refused: " + table.substr(table.empty() ? 0 : 1));
  std::vector<std::string> records;
  size_t pos = 1;
  while (pos < table.size()) {
    size_t colon = table.find(':', pos);
    size_t len = std::stoul(table.substr(pos, colon - pos));
    records.push_back(table.substr(colon + 1, len));
    pos = colon + 1 + len;
  }
  if (static_cast<int>(records.size()) != size)
    throw Error("bootstrap returned " + std::to_string(records.size()) + " records for " + std::to_string(size) + " ranks");
  return records;
}

}  // namespace hcomm
