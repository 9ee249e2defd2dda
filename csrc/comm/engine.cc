// The execution engine: turns (one call at a time per communicator, in call order), the
// progress thread, async point-to-point completion, and the reports a failed call
// gives (progress of the other ranks, stray messages of an earlier call).
#include <algorithm>
#include <sstream>
#include <thread>

#include "comm/engine.h"
#include "transport/tcp.h"

namespace hcomm {

std::string Communicator::describe(const CollectiveInfo& info, uint64_t seq, const std::string& ran) const {
  std::ostringstream s;
  if (info.tag >= 0) {  // point to point: not numbered (its seq is 0), named by peer and tag
    s << info.op << (info.op == "send" ? " to " : " from ")
      << (info.root >= 0 ? "rank " + std::to_string(info.root) : std::string("any rank")) << ", tag " << info.tag
      << " (" << info.count << " bytes";
    if (!ran.empty()) s << ", " << ran;
  } else {
    s << info.op << " #" << seq << " (" << dtypeName(info.dtype) << ", count " << info.count;
    if (info.root >= 0) s << ", root " << info.root;
    if (!ran.empty() && (info.algo.empty() || ran.rfind(info.algo, 0) == 0)) s << ", " << ran;  // "ring over shm"
    else if (!ran.empty()) s << ", " << ran << " (planned " << info.algo << ")";  // a native engine took it
    else if (!info.algo.empty()) s << ", " << info.algo;
  }
  s << ") on communicator " << std::hex << id_ << std::dec << " rank " << rank_ << "/" << size_;
  return s.str();
}

void Communicator::waitTurn() {
  std::unique_lock<std::mutex> lock(qmu_);
  qcv_.wait(lock, [&] { return queue_.empty() && !running_; });
  running_ = true;
}

void Communicator::endTurn() {
  {
    std::lock_guard<std::mutex> lock(qmu_);
    running_ = false;
  }
  qcv_.notify_all();
}

std::string Communicator::strayMessage(uint64_t tagBase) const {
  // A message left unreceived by an earlier call of this communicator means the ranks
  // disagreed about that call without any receive noticing (2 ranks that each thought
  // themselves the broadcast root only send). Messages from one peer arrive in order, so
  // by the end of a call that heard from that peer, such a message has been seen. Tags:
  // [63..40] communicator | [39] point to point | [38..8] call | [7..0] channel.
  uint64_t lo = tagBase & ~((1ull << 40) - 1), tag = 0, fp = 0;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_ || !routes_[r].transport->stale(routes_[r].peer, lo, tagBase, &tag, &fp)) continue;
    return "collective mismatch: rank " + std::to_string(r) + " sent " + describeFingerprint(fp) + " #" +
           std::to_string((tag >> 8) & 0x7fffffff) +
           ", which this rank's call of that number finished without receiving (the ranks disagree about it)";
  }
  return "";
}

std::vector<CallProgress> Communicator::gatherProgress(std::vector<char>* asked,
                                                      std::vector<std::string>* gone) const {
  // Same host: read each rank's progress board, no help needed from it. Ranks reached
  // over tcp: ask, and give the ranks that are inside hcomm (they progress tcp while they
  // wait) up to a second to answer. A rank that gave up meanwhile (it timed out too, took
  // its own answers and aborted: its notice arrives instead of an answer) is named with
  // its cause rather than as silent. Others (MPI between hosts): not visible.
  std::vector<CallProgress> seen(size_);
  asked->assign(size_, 0);
  gone->assign(size_, "");
  TcpTransport* tcp = world_->find<TcpTransport>();
  bool anyTcp = false;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_ || board_->peerProgress(routes_[r].peer, id_, &seen[r])) continue;
    if (tcp && routes_[r].transport == tcp) {
      (*asked)[r] = 1;
      anyTcp = true;
    }
  }
  if (!anyTcp) return seen;
  tcp->query(id_);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (bool all = false; !all && std::chrono::steady_clock::now() < deadline;) {
    tcp->progress();
    all = true;
    for (int r = 0; r < size_; ++r) {
      if ((*asked)[r] != 1) continue;
      if (tcp->answer(routes_[r].peer, id_, &seen[r])) {
        (*asked)[r] = 2;
      } else if (!((*gone)[r] = tcp->peerFailure(routes_[r].peer)).empty()) {
        (*asked)[r] = 3;
      } else {
        all = false;
      }
    }
    if (!all) tcp->sleepFor(500);
  }
  return seen;
}

std::string Communicator::progressReport(uint64_t seq) const {
  // Seq numbers are shown as users count calls (#seq); `entered`/`finished` hold seq + 1.
  std::vector<char> asked;  // 1: asked over tcp, no answer; 2: answered; 3: gave up (gone[r])
  std::vector<std::string> gone;
  std::vector<CallProgress> seen = gatherProgress(&asked, &gone);
  std::vector<std::string> behind, inside, ahead, unseen, silent;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    const CallProgress& e = seen[r];
    if (asked[r] == 3) {
      behind.push_back(gone[r]);
      continue;
    }
    if (asked[r] == 1) {
      silent.push_back(std::to_string(r));
      continue;
    }
    if (!e.found) {
      unseen.push_back(std::to_string(r));
      continue;
    }
    std::string who = "rank " + std::to_string(r);
    if (e.entered == 0) {
      behind.push_back(who + " did not reach #" + std::to_string(seq) + " (it has made no collective call yet)");
    } else if (e.entered - 1 < seq) {
      uint64_t last = e.entered - 1;
      behind.push_back(who + " did not reach #" + std::to_string(seq) + " (its last was " +
                       collKindName(static_cast<CollKind>(e.kind)) + " #" + std::to_string(last) + ", " +
                       (e.finished == e.entered ? "finished" : "still running") + ")");
    } else if (e.entered - 1 == seq) {
      inside.push_back(std::to_string(r));
    } else {
      ahead.push_back(who + " is already at " + std::string(collKindName(static_cast<CollKind>(e.kind))) + " #" +
                      std::to_string(e.entered - 1));
    }
  }
  std::string out;
  auto add = [&](const std::string& part) { out += (out.empty() ? "" : "; ") + part; };
  auto listed = [](const std::vector<std::string>& ranks) {
    std::string list;
    for (const auto& r : ranks) list += (list.empty() ? "" : ",") + r;
    return "rank" + std::string(ranks.size() > 1 ? "s " : " ") + list;
  };
  for (const auto& b : behind) add(b);
  for (const auto& a : ahead) add(a);
  if (!inside.empty()) add(listed(inside) + " reached #" + std::to_string(seq) + " too");
  if (!silent.empty()) add(listed(silent) + " on other hosts did not answer (not inside an hcomm call)");
  if (!unseen.empty()) add(listed(unseen) + ": progress not visible");
  return out.empty() ? "" : " [progress: " + out + "]";
}

void Communicator::workerLoop() {
  int idle = 0;
  while (true) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(qmu_);
      if (p2p_.empty())
        qcv_.wait(lock, [&] { return (stopping_ && queue_.empty()) || (!queue_.empty() && !running_) || !p2p_.empty(); });
      if (!queue_.empty() && !running_) {
        task = std::move(queue_.front());
        queue_.pop_front();
        running_ = true;
      } else if (stopping_ && queue_.empty() && p2p_.empty()) {
        return;
      }
    }
    if (task) {
      task();
      endTurn();
      continue;
    }
    // Only point-to-point calls are pending: drive them, backing off like a wait does.
    if (pollP2p()) {
      idle = 0;
    } else if (++idle < world_->backgroundPolicy.yields) {
      std::this_thread::yield();
    } else {
      for (const Route& r : routes_) r.transport->sleepFor(200);
    }
  }
}

WorkPtr Communicator::postP2p(CollectiveInfo info, RequestPtr req, void* buf, size_t nbytes, uint64_t tag) {
  PendingP2p p;
  p.work = std::make_shared<Work>();
  p.req = std::move(req);
  p.buf = buf;
  p.nbytes = nbytes;
  p.tag = tag;
  p.info = info;
  auto now = std::chrono::steady_clock::now();
  p.flightId = flight_->record(0, info.op, "uint8", nbytes, info.root, "async", now);
  if (info.root >= 0) flight_->ran(p.flightId, "over " + routes_[info.root].transport->via());
  flight_->started(p.flightId, now);
  p.deadline = now +
               std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeoutSec_));
  p.askGone = now + std::chrono::milliseconds(100);
  WorkPtr work = p.work;
  // An eager send, or a receive whose message had arrived (or a rendezvous the receive
  // just pulled), is done once posted: complete it here. Queued, it would wait for the
  // progress thread to wake, take the lock and poll, which on a loaded machine is a
  // scheduler hop (and the waiter's wake another); the torch backend added more on top.
  if (p.req && p.req->done.load(std::memory_order_acquire)) {
    finishP2p(p);
    return work;
  }
  {
    std::lock_guard<std::mutex> lock(qmu_);
    p2p_.push_back(std::move(p));
    if (!worker_.joinable()) worker_ = std::thread([this] { workerLoop(); });
  }
  qcv_.notify_all();
  return work;
}

void Communicator::finishP2p(PendingP2p& p) {
  if (p.work->source < 0) {
    p.work->source = p.info.root;
    p.work->received = p.nbytes;
  }
  // The record first: the Work's callbacks may run user code that reads it.
  flight_->ended(p.flightId, p.req->error, "",
                 p.work->source >= 0 && p.info.root < 0 ? routes_[p.work->source].transport->via() : "");
  p.work->finish(p.req->error.empty() ? "" : describe(p.info, 0) + ": " + p.req->error);
}

void Communicator::failP2p(PendingP2p& p, const std::string& why) {
  flight_->ended(p.flightId, why, "", "");  // first: the Work's callbacks may read it
  p.work->finish(why);
}

bool Communicator::matchAnySource(PendingP2p& p, std::chrono::steady_clock::time_point now) {
  for (int peer = 0; peer < size_; ++peer) {
    size_t n = 0;
    const Route& r = routes_[peer];
    if (!r.transport->probe(r.peer, p.tag, &n)) continue;
    if (n > p.nbytes) {
      failP2p(p, describe(p.info, 0) + ": rank " + std::to_string(peer) + " sent " + std::to_string(n) +
                     " bytes, more than the " + std::to_string(p.nbytes) + "-byte buffer");
      return true;
    }
    p.req = r.transport->irecv(r.peer, p.tag, p.buf, n, nullptr);
    p.work->source = peer;
    p.work->received = n;
    return false;
  }
  // Only probed, so no transport fails it when the senders die or the world is aborted
  // (see Links::waitProbing). Asked every 100 ms, not at every poll: this runs in the
  // progress thread's loop, and peerFailure reads /proc for each peer over shm.
  if (now < p.askGone) return false;
  p.askGone = now + std::chrono::milliseconds(100);
  std::string why = noSenderLeft(routes_, rank_, p.tag);
  if (why.empty()) return false;
  failP2p(p, describe(p.info, 0) + ": receive from any rank failed: " + why);
  return true;
}

bool Communicator::pollP2p() {
  std::deque<PendingP2p> pending;
  {
    std::lock_guard<std::mutex> lock(qmu_);
    pending.swap(p2p_);
  }
  for (const Route& r : routes_) r.transport->progress();
  bool moved = false;
  auto now = std::chrono::steady_clock::now();
  std::deque<PendingP2p> still;
  for (auto& p : pending) {
    if (!p.req && matchAnySource(p, now)) {
      moved = true;
      continue;
    }
    if (p.req && p.req->done.load(std::memory_order_acquire)) {
      finishP2p(p);
      moved = true;
    } else if (now > p.deadline) {
      std::string why = describe(p.info, 0) + ": timed out waiting for rank " +
                        (p.info.root >= 0 ? std::to_string(p.info.root) : std::string("any")) + " (HCOMM_TIMEOUT)";
      abortWorld(*world_, why);
      failP2p(p, why);
      moved = true;
    } else {
      still.push_back(std::move(p));
    }
  }
  std::lock_guard<std::mutex> lock(qmu_);
  for (auto it = still.rbegin(); it != still.rend(); ++it) p2p_.push_front(std::move(*it));
  return moved;
}

}  // namespace hcomm
