// shrink(): the survivors of a failure agree on who is left and build a new communicator.
//
// The transports of a failed world are aborted (and a tcp link that carried an abort
// notice is gone), so agreement runs over the rescue listeners every rank opened at init
// (World::rescueFd). A rank whose process died has no listener: connecting to it is
// refused at once, on any host. That is the failure detector; nothing waits for a dead
// rank. The protocol, in rounds:
//
//   leader = the lowest communicator rank not excluded and not known dead
//   followers connect to the leader's listener and send a hello (token, communicator,
//   their exclude list); the leader waits until every candidate has said hello or is
//   known dead (its listener refuses a probe, or its hello connection broke: it died
//   during the agreement), then answers everyone with the membership and a unique id
//   for the new world, which every member then creates.
//   A follower whose leader is refused or whose connection breaks marks the leader dead
//   and starts the next round with the next leader (possibly itself).
//
// Never hangs: one deadline (the communicator's timeout) bounds the whole call. A
// candidate that is alive (its listener answers) but never says hello is not declared
// dead: the leader raises naming it, and tells the followers, who raise with the same
// words; a follower whose leader never answers raises naming the leader. A member that
// dies after the decision makes the new world's creation fail, naming it, within the
// same deadline; the survivors can call shrink() again on this communicator.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "comm/bootstrap.h"
#include "comm/engine.h"
#include "common/log.h"
#include "transport/socket.h"

namespace hcomm {

namespace {

constexpr uint32_t kHelloMagic = 0x6873686b;     // "hshk"
constexpr uint32_t kDecisionMagic = 0x68736463;  // "hsdc"
constexpr size_t kMaxText = 1 << 16;

struct Joining {
  uint32_t magic;
  int32_t worldRank;
  uint32_t comm;
  uint32_t attempt;   // the how-many-th shrink of this communicator: a hello left over from
                      // an earlier call (its sender gone on) is not taken for a new one
  uint32_t nExclude;  // world ranks follow
  char token[32];
};

struct Verdict {  // the leader's answer
  uint32_t magic;
  uint32_t ok;        // 0: the text is the error every member raises
  uint32_t nMembers;  // world ranks follow, then the text (the new world's unique id)
  uint32_t textLen;
};

Clock::time_point after(double sec, Clock::time_point cap) {
  auto t = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(sec));
  return std::min(t, cap);
}

// One connection attempt. Returns the fd; -2 when refused (nobody listens: the process is
// gone); -1 when no answer before `deadline` (alive or unreachable: cannot tell).
int tryConnect(const std::string& addr, Clock::time_point deadline) {
  HostPort hp = parseHostPort(addr);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(hp.port));
  if (inet_pton(AF_INET, hp.host.c_str(), &a.sin_addr) != 1) throw Error("shrink: bad rescue address " + addr);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) throw Error(std::string("shrink: socket: ") + strerror(errno));
  int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  if (rc != 0 && errno != EINPROGRESS) {
    int e = errno;
    ::close(fd);
    return e == ECONNREFUSED ? -2 : -1;
  }
  if (rc != 0) {
    struct pollfd pf = {fd, POLLOUT, 0};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    int n = poll(&pf, 1, static_cast<int>(std::max<long long>(0, left)));
    int err = 0;
    socklen_t len = sizeof err;
    if (n <= 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
      ::close(fd);
      return err == ECONNREFUSED ? -2 : -1;
    }
  }
  return fd;
}

// The bytes that arrived on `fd` so far say nothing, but a hang-up or an error says the
// peer is gone (a follower that died while waiting for the decision).
bool hungUp(int fd) {
  struct pollfd pf = {fd, POLLIN, 0};
  if (poll(&pf, 1, 0) <= 0) return false;
  char c;
  ssize_t r = ::recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
  return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

std::string rankList(const std::set<int>& ranks) {
  std::string s;
  for (int r : ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return "[" + s + "]";
}

void sendDecision(int fd, bool ok, const std::vector<int>& members, const std::string& text,
                  Clock::time_point deadline) {
  Verdict d{kDecisionMagic, ok ? 1u : 0u, static_cast<uint32_t>(members.size()),
             static_cast<uint32_t>(std::min(text.size(), kMaxText))};
  std::string frame(reinterpret_cast<const char*>(&d), sizeof d);
  for (int m : members) frame.append(reinterpret_cast<const char*>(&m), sizeof m);
  frame.append(text.data(), d.textLen);
  try {
    sendAll(fd, frame.data(), frame.size(), deadline);
  } catch (const std::exception&) {
    // A follower that died after its hello: the new world's creation names it.
  }
}

}  // namespace

// The agreement of one shrink() call, in communicator ranks (world ranks on the wire).
class Shrinker {
 public:
  Shrinker(World& w, const std::vector<int>& worldRanks, int me, uint32_t comm, uint32_t attempt,
           std::set<int> exclude, Clock::time_point deadline)
      : w_(w), worldRanks_(worldRanks), me_(me), comm_(comm), attempt_(attempt), exclude_(std::move(exclude)),
        deadline_(deadline) {}

  // The members (communicator ranks, ascending) and the new world's unique id.
  std::pair<std::vector<int>, std::string> agree() {
    while (true) {
      int leader = -1;
      for (int r = 0; r < static_cast<int>(worldRanks_.size()) && leader < 0; ++r)
        if (!exclude_.count(r) && !dead_.count(r)) leader = r;
      if (leader == me_) return lead();
      auto got = follow(leader);
      if (!got.first.empty()) return got;
      dead_.insert(leader);  // refused or hung up: the next round has another leader
    }
  }

 private:
  std::pair<std::vector<int>, std::string> lead();
  std::pair<std::vector<int>, std::string> follow(int leader);
  void admit(int fd, std::map<int, int>* joined);
  void probe(const std::set<int>& silent);

  World& w_;
  const std::vector<int>& worldRanks_;
  int me_;
  uint32_t comm_, attempt_;
  std::set<int> exclude_, dead_;
  Clock::time_point deadline_;
};

std::pair<std::vector<int>, std::string> Shrinker::follow(int leader) {
  int fd = -1;
  while (fd == -1 && Clock::now() < deadline_) {  // -1: no answer yet; retry until refused or the deadline
    fd = tryConnect(w_.rescueAddrs[worldRanks_[leader]], after(1.0, deadline_));
    if (fd == -2) return {};
    if (fd == -1) std::this_thread::sleep_for(std::chrono::milliseconds(50));  // e.g. unreachable: no spin
  }
  if (fd < 0)
    throw TimeoutError("shrink: could not hear from rank " + std::to_string(leader) +
                       " (the leader of the agreement) within the timeout");
  std::string hello(sizeof(Joining), '\0');
  Joining h{kHelloMagic, w_.rank, comm_, attempt_, static_cast<uint32_t>(exclude_.size()), {}};
  std::memcpy(h.token, w_.token.data(), std::min(w_.token.size(), sizeof h.token));
  std::memcpy(&hello[0], &h, sizeof h);
  for (int r : exclude_) {
    int wr = worldRanks_[r];
    hello.append(reinterpret_cast<const char*>(&wr), sizeof wr);
  }
  Verdict d{};
  std::vector<int> members;
  std::string text;
  try {
    sendAll(fd, hello.data(), hello.size(), deadline_);
    recvAll(fd, &d, sizeof d, deadline_);
    if (d.magic != kDecisionMagic || d.textLen > kMaxText || d.nMembers > worldRanks_.size())
      throw Error("malformed decision");
    std::vector<int> world(d.nMembers);
    recvAll(fd, world.data(), world.size() * sizeof(int), deadline_);
    text.resize(d.textLen);
    recvAll(fd, &text[0], text.size(), deadline_);
    for (int wr : world) members.push_back(int(std::find(worldRanks_.begin(), worldRanks_.end(), wr) - worldRanks_.begin()));
  } catch (const TimeoutError&) {
    ::close(fd);
    throw TimeoutError("shrink: could not hear from rank " + std::to_string(leader) +
                       " (the leader of the agreement) within the timeout");
  } catch (const std::exception&) {
    ::close(fd);
    return {};  // the leader died during the agreement
  }
  ::close(fd);
  if (!d.ok) throw Error(text);
  if (std::find(members.begin(), members.end(), me_) == members.end())
    throw Error("shrink: this rank (" + std::to_string(me_) + ") was excluded by another rank's exclude=");
  return {members, text};
}

void Shrinker::admit(int fd, std::map<int, int>* joined) {
  // A probe (another leader checking we are alive) closes without a word: dropped.
  try {
    Joining h;
    recvAll(fd, &h, sizeof h, after(2.0, deadline_));
    std::string token(h.token, strnlen(h.token, sizeof h.token));
    auto it = std::find(worldRanks_.begin(), worldRanks_.end(), h.worldRank);
    if (h.magic != kHelloMagic || token != w_.token || h.comm != comm_ || h.attempt != attempt_ || it == worldRanks_.end() ||
        h.nExclude > worldRanks_.size())
      throw Error("not a hello for this shrink");
    std::vector<int> ex(h.nExclude);
    recvAll(fd, ex.data(), ex.size() * sizeof(int), after(2.0, deadline_));
    for (int wr : ex) {
      auto e = std::find(worldRanks_.begin(), worldRanks_.end(), wr);
      if (e != worldRanks_.end()) exclude_.insert(int(e - worldRanks_.begin()));
    }
    int r = int(it - worldRanks_.begin());
    if (joined->count(r)) ::close((*joined)[r]);
    (*joined)[r] = fd;
  } catch (const std::exception&) {
    ::close(fd);
  }
}

void Shrinker::probe(const std::set<int>& silent) {
  for (int r : silent) {
    int fd = tryConnect(w_.rescueAddrs[worldRanks_[r]], after(0.2, deadline_));
    if (fd == -2) dead_.insert(r);
    else if (fd >= 0) ::close(fd);  // alive: it may still be on its way
  }
}

std::pair<std::vector<int>, std::string> Shrinker::lead() {
  std::map<int, int> joined;  // communicator rank -> hello connection
  auto nextProbe = Clock::now();
  auto waitingFor = [&] {
    std::set<int> out;
    for (int r = 0; r < static_cast<int>(worldRanks_.size()); ++r)
      if (r != me_ && !exclude_.count(r) && !dead_.count(r) && !joined.count(r)) out.insert(r);
    return out;
  };
  // Stop waiting a little before the deadline, so that followers (who wait until the
  // deadline itself) receive the verdict naming the silent ranks rather than time out.
  double total = std::chrono::duration<double>(deadline_ - Clock::now()).count();
  auto stopAt = deadline_ - std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(std::min(1.0, 0.2 * total)));
  for (std::set<int> silent = waitingFor(); !silent.empty() && Clock::now() < stopAt; silent = waitingFor()) {
    struct pollfd pf = {w_.rescueFd, POLLIN, 0};
    if (poll(&pf, 1, 50) > 0) {
      int fd = accept4(w_.rescueFd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) admit(fd, &joined);
    }
    for (auto it = joined.begin(); it != joined.end();) {  // died during the agreement
      if (!hungUp(it->second)) {
        ++it;
        continue;
      }
      ::close(it->second);
      dead_.insert(it->first);
      it = joined.erase(it);
    }
    if (Clock::now() >= nextProbe) {
      probe(silent);
      nextProbe = Clock::now() + std::chrono::milliseconds(200);
    }
  }
  std::set<int> silent = waitingFor();
  std::vector<int> members, world;
  std::string text;
  bool ok = silent.empty();
  if (ok) {
    // The leader is always a member: a follower's exclude= naming it is not honoured.
    for (int r = 0; r < static_cast<int>(worldRanks_.size()); ++r)
      if (r == me_ || (!exclude_.count(r) && joined.count(r))) members.push_back(r);
    for (int r : members) world.push_back(worldRanks_[r]);
    double left = std::chrono::duration<double>(deadline_ - Clock::now()).count();
    text = members.size() > 1 ? newUniqueId(std::max(left, 1.0)).str() : "";
  } else {
    text = "shrink: could not hear from ranks " + rankList(silent) +
           " within the timeout (alive, but they did not call shrink); dead: " + rankList(dead_);
  }
  for (auto& kv : joined) {
    sendDecision(kv.second, ok, world, text, deadline_);
    ::close(kv.second);
  }
  if (!ok) throw TimeoutError(text);
  return {members, text};
}

std::shared_ptr<Communicator> Communicator::shrink(const std::vector<int>& exclude) {
  if (closed_) throw Error("shrink: communicator is closed");
  std::set<int> ex;
  for (int r : exclude) {
    if (r < 0 || r >= size_)
      throw Error("shrink: exclude rank " + std::to_string(r) + " is out of range for a communicator of " +
                  std::to_string(size_) + " ranks");
    if (r == rank_) throw Error("shrink: this rank (" + std::to_string(r) + ") is in exclude=; excluded ranks do not call");
    ex.insert(r);
  }
  {  // queued async work first, so the old world is quiet (it may still fail: that is fine)
    std::unique_lock<std::mutex> lock(qmu_);
    qcv_.wait(lock, [&] { return queue_.empty() && !running_; });
  }
  auto deadline = after(timeoutSec_, Clock::time_point::max());
  std::pair<std::vector<int>, std::string> agreed;
  {
    std::lock_guard<std::mutex> lock(world_->rescueMu);
    if (size_ > 1 && world_->rescueFd < 0) throw Error("shrink: this world has no rescue listener");
    if (size_ == 1) agreed = {{0}, ""};
    else agreed = Shrinker(*world_, worldRanks_, rank_, id_, ++shrinks_, ex, deadline).agree();
  }
  const std::vector<int>& members = agreed.first;
  int newRank = int(std::find(members.begin(), members.end(), rank_) - members.begin());
  std::vector<int> fileRanks;
  for (int r : members) fileRanks.push_back(world_->fileRanks[worldRanks_[r]]);
  logLine(LogLevel::INFO, world_->rank, "shrink: communicator " + std::to_string(id_) + " keeps " +
                                            std::to_string(members.size()) + " of " + std::to_string(size_) +
                                            " ranks; this rank becomes " + std::to_string(newRank));
  double left = std::chrono::duration<double>(deadline - Clock::now()).count();
  auto fresh = createWorld(newRank, static_cast<int>(members.size()), agreed.second, std::max(left, 1.0), fileRanks);
  fresh->setTimeout(timeoutSec_);  // creation had what was left; calls get the full timeout again
  return fresh;
}

}  // namespace hcomm
