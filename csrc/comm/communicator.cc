#include "comm/communicator.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <sstream>
#include <thread>

#include "algo/algorithms.h"
#include "algo/native_mpi.h"
#include "comm/bootstrap.h"
#include "common/log.h"
#include "common/param.h"
#include "reduce/reduce.h"
#include "topo/host.h"
#include "topo/topology.h"
#include "topo/tuner.h"
#include "transport/mpi.h"
#include "transport/shm.h"
#include "transport/socket.h"
#include "transport/tcp.h"

namespace hcomm {

namespace {

// Tag layout: [63..40] communicator id | [39] point-to-point | [38..8] call number or
// user tag | [7..0] channel.
constexpr uint64_t kP2pBit = 1ull << 39;
constexpr int64_t kMaxUserTag = (1ll << 31) - 1;

uint64_t collTag(uint32_t id, uint64_t seq) { return (uint64_t(id) << 40) | ((seq & 0x7fffffffull) << 8); }
uint64_t p2pTag(uint32_t id, int64_t tag) { return (uint64_t(id) << 40) | kP2pBit | (uint64_t(tag) << 8); }

std::vector<std::string> splitLines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

WaitPolicy waitPolicy(int ranksOnMachine) {
  // More ranks than cores: a spinning rank steals the core its peer needs, so yield
  // almost at once. Otherwise spin a while: a wake-up from sleep costs microseconds.
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  bool oversubscribed = ranksOnMachine > static_cast<int>(cores);
  WaitPolicy p;
  p.spins = static_cast<int>(envInt("HCOMM_SPIN_ITERS", oversubscribed ? 16 : 20000));
  p.yields = static_cast<int>(envInt("HCOMM_YIELD_ITERS", oversubscribed ? 5000 : 200));
  p.sleepUs = static_cast<int>(envInt("HCOMM_SLEEP_US", 1000));
  return p;
}

size_t segmentBytes(const char* name, size_t dflt) { return static_cast<size_t>(envInt(name, static_cast<int64_t>(dflt))); }

// HCOMM_ALGO: "ring" (every collective that has it) or "allreduce:ring;broadcast:tree".
std::string algoFromEnv(const std::string& collective) {
  std::string spec = envStr("HCOMM_ALGO");
  if (spec.empty()) return "";
  std::string any;
  std::istringstream in(spec);
  std::string item;
  while (std::getline(in, item, ';')) {
    auto colon = item.find(':');
    if (colon == std::string::npos) any = item;
    else if (item.substr(0, colon) == collective) return item.substr(colon + 1);
  }
  return any;
}

// HCOMM_TRANSPORT (documented in transport/mpi.h): which levels go over MPI.
void transportChoice(World& w) {
  std::istringstream in(envStr("HCOMM_TRANSPORT", "auto"));
  std::string item;
  while (std::getline(in, item, ',')) {
    auto colon = item.find(':');
    std::string level = colon == std::string::npos ? "" : item.substr(0, colon);
    std::string value = colon == std::string::npos ? item : item.substr(colon + 1);
    bool mpi = value == "mpi";
    bool known = mpi || value == "auto" || (level == "intra" && value == "shm") || (level == "inter" && value == "tcp");
    if (!known || (level != "" && level != "intra" && level != "inter"))
      throw Error("HCOMM_TRANSPORT: unknown setting '" + item + "' (mpi, inter:mpi, intra:mpi, intra:shm, " +
                  "inter:tcp, auto)");
    if (level != "inter") w.mpiIntra = mpi;
    if (level != "intra") w.mpiInter = mpi;
  }
}

// Something asked for MPI, so failing to join it is an error rather than a fallback.
bool mpiRequired(const World& w) {
  return w.mpiIntra || w.mpiInter || envStr("HCOMM_MPI") == "1" ||
         envStr("HCOMM_ALGO").find("native") != std::string::npos;
}

void requireMpi(const std::shared_ptr<MpiComm>& c, const std::string& collective) {
  if (!c)
    throw Error(collective + " with algorithm 'native' needs MPI: launch with mpirun (every rank in one MPI job) "
                "and leave HCOMM_MPI unset or 1");
}

// What a native body needs, captured by value; empty (false) when the call is not native.
struct NativeCall {
  std::shared_ptr<MpiComm> comm;
  double timeoutSec = 0;
  WaitPolicy policy;
  std::string what;
  explicit operator bool() const { return comm != nullptr; }
  NativeWait wait() const {  // the deadline runs from when the call starts, as Links' does
    auto d = std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeoutSec));
    return NativeWait{std::chrono::steady_clock::now() + d, policy, what};
  }
};

// `what()` names the call in errors; only evaluated for a native call.
template <class Describe>
NativeCall nativeCall(bool native, const std::shared_ptr<MpiComm>& c, const std::string& collective, double timeout,
                      const WaitPolicy& policy, const Describe& what) {
  if (!native) return NativeCall();
  requireMpi(c, collective);
  return NativeCall{c, timeout, policy, what()};
}

// HCOMM_NATIVE_BYTES="lo-hi" (K/M/G suffixes, either end may be empty): the message
// sizes at which the tuner hands allreduce to MPI when nothing is forced. Unset: never,
// because measured here (benchmarks/mpi_transport.py, 2 simulated hosts over MPI) hcomm's
// ring over the MPI transport was as fast as MPI's allreduce or faster from 64 KiB to
// 64 MiB; a site whose MPI offloads collectives to the fabric sets it.
bool nativeBySize(size_t bytes) {
  std::string spec = envStr("HCOMM_NATIVE_BYTES");
  if (spec.empty()) return false;
  auto parse = [&](std::string v, size_t dflt) -> size_t {
    if (v.empty()) return dflt;
    size_t unit = 1;
    char last = static_cast<char>(std::toupper(static_cast<unsigned char>(v.back())));
    if (last == 'K' || last == 'M' || last == 'G') {
      unit = last == 'K' ? (1u << 10) : last == 'M' ? (1u << 20) : (size_t(1) << 30);
      v.pop_back();
    }
    try {
      return static_cast<size_t>(std::stod(v) * static_cast<double>(unit));
    } catch (const std::exception&) {
      throw Error("HCOMM_NATIVE_BYTES: '" + spec + "' is not a range like 8M-1G or 64K-");
    }
  };
  auto dash = spec.find('-');
  if (dash == std::string::npos) throw Error("HCOMM_NATIVE_BYTES: '" + spec + "' is not a range like 8M-1G or 64K-");
  return bytes >= parse(spec.substr(0, dash), 0) && bytes < parse(spec.substr(dash + 1), SIZE_MAX);
}

// "native" when asked for by name or, with no request, by HCOMM_ALGO.
bool wantsNative(const std::string& requested, const std::string& collective) {
  if (!requested.empty() && requested != "auto") return requested == "native";
  return algoFromEnv(collective) == "native";
}

}  // namespace

World::~World() = default;

// After a failure some requests may still point into the caller's buffers: fail them all
// (as NCCL aborts a communicator) so no byte lands in memory the caller got back.
void abortWorld(World& w, const std::string& why) {
  std::lock_guard<std::mutex> lock(w.abortMu);
  if (!w.abortReason.empty()) return;
  w.abortReason = why;
  w.shm->abort(why);
  if (w.tcp) w.tcp->abort(why);
  if (w.mpi) w.mpi->abort(why);
}

// ---------------------------------------------------------------- creation

std::shared_ptr<Communicator> Communicator::create(int rank, int size, const std::string& uniqueId,
                                                   double timeoutSec) {
  if (size < 1) throw Error("communicator size must be >= 1, got " + std::to_string(size));
  if (rank < 0 || rank >= size)
    throw Error("rank " + std::to_string(rank) + " is out of range for size " + std::to_string(size));
  auto world = std::make_shared<World>();
  world->rank = rank;
  world->size = size;
  world->timeoutSec = timeoutSec;
  UniqueId id;
  std::vector<std::string> records;
  std::string myHost = hostIdentity();
  // A topology file may place this rank on a simulated host: then that host decides
  // shared memory vs tcp, so one machine can stand in for a cluster.
  std::string topoPath = envStr("HCOMM_TOPO_FILE");
  Json topoFile;
  if (!topoPath.empty()) {
    topoFile = loadTopoFile(topoPath);
    TopoFilePlacement place = placementFor(topoFile, rank);
    if (!place.host.empty()) myHost = "file:" + place.host;
  }
  std::unique_ptr<TcpTransport> tcp;
  transportChoice(*world);
  std::string myMachine = machineIdentity();
  if (size == 1) {
    id.token = randomToken();
    records = {myHost + "\n" + std::to_string(getpid()) + "\n-\n" + mpiIdentity(mpiRequired(*world)) + "\n" +
               myMachine};
  } else {
    id = UniqueId::parse(uniqueId);
    tcp.reset(new TcpTransport(rank, chooseLocalIp(id.host), id.token, timeoutSec));
    std::string record = myHost + "\n" + std::to_string(getpid()) + "\n" + tcp->address() + "\n" +
                         mpiIdentity(mpiRequired(*world)) + "\n" + myMachine;
    records = rendezvous(id, rank, size, record, timeoutSec);
  }
  world->token = id.token;
  std::vector<int> local, remote;
  std::vector<std::string> addrs(size), mpiIds(size);
  int onMachine = 0;  // ranks sharing this machine's CPUs (simulated hosts included)
  for (int r = 0; r < size; ++r) {
    auto fields = splitLines(records[r]);
    if (fields.size() != 5) throw Error("bootstrap: malformed record from rank " + std::to_string(r));
    if (fields[4] == myMachine) ++onMachine;
    world->hostIds.push_back(fields[0]);
    addrs[r] = fields[2];
    mpiIds[r] = fields[3];
    (fields[0] == myHost ? local : remote).push_back(r);
  }
  world->policy = waitPolicy(onMachine);
  world->backgroundPolicy = waitPolicy(2 * onMachine);
  world->shm = std::make_shared<ShmTransport>(rank, local, "/hcomm_" + id.token.substr(0, 16), timeoutSec);
  world->shm->connect();
  world->mpiComm = mpiCommFor(mpiIds, mpiRequired(*world));
  if (size > 1 && (world->mpiIntra || world->mpiInter)) world->mpi = makeMpiTransport(world->mpiComm, timeoutSec);
  if (!remote.empty() && !world->mpiInter) {
    tcp->connect(remote, addrs);
    world->tcp.reset(tcp.release());
    // Peers on other hosts ask how far this rank got after a timeout (progressReport).
    std::weak_ptr<ShmTransport> shm = world->shm;
    world->tcp->setProgressSource([shm, rank](uint32_t c, CallProgress* out) {
      auto s = shm.lock();
      return s && s->peerProgress(rank, c, out) && out->found;
    });
  }
  logLine(LogLevel::INFO, rank, "init: " + std::to_string(size) + " ranks, " + std::to_string(local.size()) +
                                     " on this host (" + (world->mpiIntra ? "mpi" : "shm") + "), " +
                                     std::to_string(remote.size()) + " remote (" + (world->mpiInter ? "mpi" : "tcp") +
                                     "), simd " + simdName(simdLevel()));
  std::vector<int> all(size);
  std::iota(all.begin(), all.end(), 0);
  std::shared_ptr<Communicator> comm = own(new Communicator(world, all, 1, timeoutSec));
  comm->mpi_ = world->mpiComm;
  comm->barrier(false);    // every peer has mapped our segment once it has talked to us
  world->shm->unlinkOwn();
  InitChannel ch;  // the topology is gathered over the new communicator itself
  ch.rank = rank;
  ch.size = size;
  ch.allgatherBytes = [&](const void* in, void* out, const std::vector<size_t>& counts) {
    comm->allgatherv(in, out, counts, DataType::U8, false);
  };
  ch.send = [&](int peer, void* buf, size_t n) { comm->send(buf, n, peer, kMaxUserTag, false); };
  ch.recv = [&](int peer, void* buf, size_t n) { comm->recv(buf, n, peer, kMaxUserTag, false); };
  ch.maxAll = [&](double* v, size_t n) {
    comm->allreduce(v, v, n, DataType::F64, ReduceOp::MAX, 1.0, "halving_doubling", false);
  };
  world->topology = buildTopology(ch, myHost, topoPath.empty() ? nullptr : &topoFile, topoPath);
  world->tuner = std::make_shared<Tuner>(world->topology);
  return comm;
}

Communicator::Communicator(std::shared_ptr<World> world, std::vector<int> worldRanks, uint32_t id, double timeoutSec)
    : world_(std::move(world)), worldRanks_(std::move(worldRanks)), id_(id), timeoutSec_(timeoutSec) {
  size_ = static_cast<int>(worldRanks_.size());
  flight_ = std::make_shared<FlightRecorder>(static_cast<size_t>(envInt("HCOMM_FLIGHT_RECORDER_SIZE", 2000)));
  auto me = std::find(worldRanks_.begin(), worldRanks_.end(), world_->rank);
  rank_ = static_cast<int>(me - worldRanks_.begin());
  const std::string& myHost = world_->hostIds[world_->rank];
  for (int w : worldRanks_) {
    Route r;
    r.peer = w;
    bool local = world_->hostIds[w] == myHost;
    if (world_->mpi && (local ? world_->mpiIntra : world_->mpiInter)) r.transport = world_->mpi.get();
    else if (local) r.transport = world_->shm.get();
    else r.transport = world_->tcp.get();
    routes_.push_back(r);
  }
  linkRoutes_ = std::make_shared<const std::vector<Route>>(routes_);
  boardSlot_ = world_->shm->claimBoardSlot(id_);
}

Communicator::~Communicator() {
  try {
    close();
  } catch (...) {
  }
}

std::vector<std::string> Communicator::transports() const {
  std::vector<std::string> out;
  for (const Route& r : routes_) out.push_back(r.transport->name());
  return out;
}

std::shared_ptr<Communicator> Communicator::own(Communicator* c) {
  // The last reference can be dropped on the communicator's own progress thread (a
  // completion callback releasing it); the destructor joins that thread, so it must run
  // on another one.
  return std::shared_ptr<Communicator>(c, [](Communicator* p) {
    if (p->onWorkerThread()) std::thread([p] { delete p; }).detach();
    else delete p;
  });
}

bool Communicator::onWorkerThread() const {
  return worker_.joinable() && worker_.get_id() == std::this_thread::get_id();
}

void Communicator::close() {
  if (closed_) return;
  if (onWorkerThread())
    throw Error("close() cannot run on the communicator's progress thread (inside a completion callback)");
  {
    std::lock_guard<std::mutex> lock(qmu_);
    stopping_ = true;
  }
  qcv_.notify_all();
  if (worker_.joinable()) worker_.join();  // runs what was queued first
  closed_ = true;
  world_->shm->releaseBoardSlot(boardSlot_);
  routes_.clear();
  world_.reset();
}

void Communicator::checkUsable() const {
  if (closed_) throw Error("communicator is closed");
  std::lock_guard<std::mutex> lock(world_->abortMu);
  if (!world_->abortReason.empty())
    throw Error("communicator was aborted after an earlier error: " + world_->abortReason);
}

void Communicator::checkRoot(int root, const char* what) const {
  if (root < 0 || root >= size_)
    throw Error(std::string(what) + " " + std::to_string(root) + " is out of range for a communicator of " +
                std::to_string(size_) + " ranks");
}

// ---------------------------------------------------------------- execution

std::string Communicator::describe(const CollectiveInfo& info, uint64_t seq) const {
  std::ostringstream s;
  s << info.op << " #" << seq << " (" << dtypeName(info.dtype) << ", count " << info.count;
  if (info.root >= 0) s << ", root " << info.root;
  if (!info.algo.empty()) s << ", " << info.algo;
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

std::vector<CallProgress> Communicator::gatherProgress(std::vector<char>* asked) const {
  // Same host: read each rank's progress board, no help needed from it. Other hosts
  // (tcp): ask, and give the ranks that are inside hcomm (they progress tcp while they
  // wait) up to a second to answer.
  std::vector<CallProgress> seen(size_);
  asked->assign(size_, 0);
  bool anyTcp = false;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    if (routes_[r].transport == world_->shm.get()) {
      world_->shm->peerProgress(routes_[r].peer, id_, &seen[r]);
    } else if (world_->tcp && routes_[r].transport == world_->tcp.get()) {
      (*asked)[r] = 1;
      anyTcp = true;
    }
  }
  if (!anyTcp) return seen;
  world_->tcp->query(id_);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (bool all = false; !all && std::chrono::steady_clock::now() < deadline;) {
    world_->tcp->progress();
    all = true;
    for (int r = 0; r < size_; ++r) {
      if ((*asked)[r] != 1) continue;
      if (world_->tcp->answer(routes_[r].peer, id_, &seen[r])) (*asked)[r] = 2;
      else all = false;
    }
    if (!all) world_->tcp->sleepFor(500);
  }
  return seen;
}

std::string Communicator::progressReport(uint64_t seq) const {
  // Seq numbers are shown as users count calls (#seq); `entered`/`finished` hold seq + 1.
  std::vector<char> asked;  // 1: asked over tcp, no answer; 2: answered
  std::vector<CallProgress> seen = gatherProgress(&asked);
  std::vector<std::string> behind, inside, ahead, unseen, silent;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    const CallProgress& e = seen[r];
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
  flight_->started(p.flightId, now);
  p.deadline = now +
               std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeoutSec_));
  WorkPtr work = p.work;
  {
    std::lock_guard<std::mutex> lock(qmu_);
    p2p_.push_back(std::move(p));
    if (!worker_.joinable()) worker_ = std::thread([this] { workerLoop(); });
  }
  qcv_.notify_all();
  return work;
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
    if (!p.req) {  // any-source receive: match the first peer with a message waiting
      for (int peer = 0; peer < size_ && !p.req; ++peer) {
        size_t n = 0;
        if (routes_[peer].transport->probe(routes_[peer].peer, p.tag, &n)) {
          if (n > p.nbytes) {
            p.work->finish(describe(p.info, 0) + ": rank " + std::to_string(peer) + " sent " + std::to_string(n) +
                           " bytes, more than the " + std::to_string(p.nbytes) + "-byte buffer");
            moved = true;
            break;
          }
          p.req = routes_[peer].transport->irecv(routes_[peer].peer, p.tag, p.buf, n, nullptr);
          p.work->source = peer;
          p.work->received = n;
        }
      }
      if (p.work->isCompleted()) continue;
    }
    if (p.req && p.req->done.load(std::memory_order_acquire)) {
      if (p.work->source < 0) {
        p.work->source = p.info.root;
        p.work->received = p.nbytes;
      }
      p.work->finish(p.req->error.empty() ? "" : describe(p.info, 0) + ": " + p.req->error);
      flight_->ended(p.flightId, p.req->error);
      moved = true;
    } else if (now > p.deadline) {
      std::string why = describe(p.info, 0) + ": timed out waiting for rank " +
                        (p.info.root >= 0 ? std::to_string(p.info.root) : std::string("any")) + " (HCOMM_TIMEOUT)";
      abortWorld(*world_, why);
      p.work->finish(why);
      flight_->ended(p.flightId, why);
      moved = true;
    } else {
      still.push_back(std::move(p));
    }
  }
  std::lock_guard<std::mutex> lock(qmu_);
  for (auto it = still.rbegin(); it != still.rend(); ++it) p2p_.push_front(std::move(*it));
  return moved;
}

template <class Body>
void Communicator::execute(const CollectiveInfo& info, uint64_t seq, uint64_t tagBase, uint64_t flightId, Body& body,
                           Work& work, std::chrono::steady_clock::time_point start) {
  World& world = *world_;
  std::string error;
  flight_->started(flightId, start);
  bool collective = info.kind != CollKind::NONE;
  if (collective) world.shm->noteStarted(boardSlot_, seq, static_cast<int>(info.kind));
  if (logLevel() >= LogLevel::TRACE) logLine(LogLevel::TRACE, world.rank, "start " + describe(info, seq));
  try {
    ReduceOp op = info.reduceOp;
    if (op == ReduceOp::AVG || op == ReduceOp::PREMUL_SUM) op = ReduceOp::SUM;
    uint64_t fp = !collective ? 0
                  : makeFingerprint(info.kind, info.dtype, info.reduceOp, info.root,
                                    info.kind == CollKind::ALLTOALL ? 0 : info.count);  // alltoallv counts differ
    auto deadline = start +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(timeoutSec_));
    auto what = [&] { return describe(info, seq); };  // only an error needs the words
    const WaitPolicy& policy = onWorkerThread() ? world.backgroundPolicy : world.policy;
    Links links(rank_, size_, linkRoutes_, tagBase, fp, info.dtype, op, deadline, policy,
                [&what] { return what(); });
    body(links, work);
    std::string stray = collective ? strayMessage(tagBase) : "";
    if (!stray.empty()) throw Error(what() + ": " + stray);
  } catch (const TimeoutError& e) {
    error = e.what() + (collective ? progressReport(seq) : std::string());
  } catch (const std::exception& e) {
    error = e.what();
  }
  flight_->ended(flightId, error);  // before a dump, so that the dump shows the error
  if (!error.empty()) {
    logLine(LogLevel::INFO, world.rank, "error: " + error);
    std::string dir = envStr("HCOMM_DEBUG_DUMP_DIR");
    if (!dir.empty()) {
      std::string path = flight_->dump(dir, rank_, size_, id_);
      if (!path.empty()) error += " (flight record: " + path + ")";
    }
    abortWorld(world, error);
  }
  if (collective) world.shm->noteEnded(boardSlot_, seq);
  if (logLevel() >= LogLevel::TRACE) logLine(LogLevel::TRACE, world.rank, "end " + describe(info, seq));
  work.finish(error);
}

template <class Body>
WorkPtr Communicator::submit(CollectiveInfo info, bool p2p, uint64_t tagBase, Body&& body, bool async) {
  checkUsable();
  uint64_t seq = p2p ? 0 : nextSeq_++;
  if (!p2p) tagBase = collTag(id_, seq);
  lastAlgo_ = info.algo;
  auto work = std::make_shared<Work>();
  auto now = std::chrono::steady_clock::now();
  uint64_t flightId = flight_->record(seq, info.op, dtypeName(info.dtype), info.count, info.root, info.algo, now);
  if (async) {
    // close() runs what is queued before it drops the world, so the task may use members.
    std::function<void()> task = [this, work, flightId, info = std::move(info), seq, tagBase,
                                  body = std::forward<Body>(body)]() mutable {
      execute(info, seq, tagBase, flightId, body, *work, std::chrono::steady_clock::now());
    };
    {
      std::lock_guard<std::mutex> lock(qmu_);
      if (!worker_.joinable()) worker_ = std::thread([this] { workerLoop(); });
      queue_.push_back(std::move(task));
    }
    qcv_.notify_all();
    return work;
  }
  // Blocking: run here, after whatever was queued before (call order is tag order).
  waitTurn();
  execute(info, seq, tagBase, flightId, body, *work, now);
  endTurn();
  work->wait(-1);  // rethrows the failure
  return work;
}

// ---------------------------------------------------------------- collectives

std::string Communicator::chooseAllreduce(size_t bytes, const std::string& requested) const {
  return planAllreduce(bytes, requested).choice().algo;
}

Decision Communicator::planAllreduce(size_t bytes, const std::string& requested) const {
  bool asked = !requested.empty() && requested != "auto";
  std::string forced = asked ? requested : algoFromEnv("allreduce");
  if (!world_) throw Error("communicator is closed");
  if (forced == "native") {  // MPI's own allreduce (algo/native_mpi.h)
    requireMpi(mpi_, "allreduce");
    Decision d;
    d.candidates = {Candidate{"native"}};
    d.why = asked ? "requested" : "HCOMM_ALGO";
    return d;
  }
  if (!world_->tuner) {  // during create, before the topology exists: only explicit requests
    if (!asked) throw Error("allreduce during init needs an explicit algorithm");
    Decision d;
    d.candidates = {Candidate{requested}};
    d.why = "requested";
    return d;
  }
  Decision d = world_->tuner->allreduce(worldRanks_, bytes, forced, asked ? "requested" : "HCOMM_ALGO");
  if ((forced.empty() || forced == "auto") && mpi_ && size_ > 1 && nativeBySize(bytes)) {  // the site's size rule for MPI's own
    d.candidates.push_back(Candidate{"native"});
    d.chosen = static_cast<int>(d.candidates.size()) - 1;
    d.why = "HCOMM_NATIVE_BYTES";
  }
  return d;
}

namespace {

// AVG and PREMUL_SUM are SUM with a scale before or after.
void prescale(DataType dt, ReduceOp op, double premul, const void*& in, void* tmp, size_t count) {
  if (op != ReduceOp::PREMUL_SUM) return;
  scale(dt, tmp, in, count, premul);
  in = tmp;
}

void postscale(DataType dt, ReduceOp op, int n, void* out, size_t count) {
  if (op == ReduceOp::AVG) divide(dt, out, out, count, n);
}

}  // namespace

namespace {

// The segment a call uses: the tuner's, unless HCOMM_{RING,TREE}_SEGMENT_BYTES override
// it (ring for the allreduce ring; tree for the allreduce tree and for broadcast and
// allgather, whose trees and hierarchical phases are pipelined in tree segments).
size_t resolvedSegment(CollKind kind, const std::string& algo, size_t tuned) {
  if (kind == CollKind::ALLREDUCE && algo == "ring")
    return segmentBytes("HCOMM_RING_SEGMENT_BYTES", tuned ? tuned : (4u << 20));
  if (kind != CollKind::ALLREDUCE || algo == "tree")
    return segmentBytes("HCOMM_TREE_SEGMENT_BYTES", tuned ? tuned : (512u << 10));
  return tuned;
}

}  // namespace

template <class Plan>
Candidate Communicator::pick(CollKind kind, size_t bytes, int root, const std::string& requested,
                             const Plan& plan) const {
  // HCOMM_ALGO (and HCOMM_NATIVE_BYTES under MPI) are read at every call, as documented;
  // the model's choice per (collective, size, root) is remembered while they stay the
  // same. Explicit requests are rare in hot loops and take the full path.
  const char* env = std::getenv("HCOMM_ALGO");
  const char* native = mpi_ ? std::getenv("HCOMM_NATIVE_BYTES") : nullptr;
  bool cacheable = (requested.empty() || requested == "auto") && world_ && world_->tuner;
  auto key = std::make_tuple(static_cast<int>(kind), bytes, root);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(planMu_);
    if (planEnv_ != (env ? env : "") || planNative_ != (native ? native : "")) {
      plans_.clear();
      planEnv_ = env ? env : "";
      planNative_ = native ? native : "";
    }
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
  }
  Candidate c = plan().choice();
  c.segBytes = resolvedSegment(kind, c.algo, c.segBytes);
  if (kind == CollKind::ALLREDUCE && !c.inner.empty()) c.innerSegBytes = resolvedSegment(kind, c.inner, c.innerSegBytes);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(planMu_);
    if (plans_.size() >= 1024) plans_.clear();  // many distinct sizes: start over rather than grow
    plans_.emplace(key, c);
  }
  return c;
}

namespace {

// One flat allreduce algorithm with its segment size.
struct FlatChoice {
  enum Kind { RING, TREE, HALVING_DOUBLING } kind = RING;
  size_t seg = 0;

  static FlatChoice of(const std::string& algo, size_t seg) {
    FlatChoice f;
    f.kind = algo == "ring" ? RING : algo == "tree" ? TREE : HALVING_DOUBLING;
    f.seg = seg;
    return f;
  }
  void operator()(Links& l, const void* in, void* out, size_t count) const {
    if (kind == RING) algo::allreduceRing(l, in, out, count, seg);
    else if (kind == TREE) algo::allreduceTree(l, in, out, count, seg);
    else algo::allreduceHalvingDoubling(l, in, out, count);
  }
};

}  // namespace

WorkPtr Communicator::allreduce(const void* in, void* out, size_t count, DataType dt, ReduceOp op, double premul,
                                const std::string& algo, bool async) {
  checkUsable();
  size_t bytes = count * dtypeSize(dt);
  Candidate pick = this->pick(CollKind::ALLREDUCE, bytes, -1, algo, [&] { return planAllreduce(bytes, algo); });
  CollectiveInfo info{"allreduce", CollKind::ALLREDUCE, dt, count, -1, pick.algo, op};
  bool hier = pick.algo == "hierarchical";
  FlatChoice run = FlatChoice::of(hier ? pick.inner : pick.algo, hier ? pick.innerSegBytes : pick.segBytes);
  std::vector<std::vector<int>> levels;
  if (hier) levels = CommShape::of(*world_->topology, worldRanks_).levels();
  int n = size_;
  NativeCall nat = nativeCall(pick.algo == "native", mpi_, "allreduce", timeoutSec_, world_->policy,
                              [&] { return describe(info, nextSeq_); });
  return submit(info, false, 0, [=, levels = std::move(levels)](Links& l, Work&) {
    if (count == 0) return;
    const void* src = in;
    if (op == ReduceOp::PREMUL_SUM) prescale(dt, op, premul, src, out, count);  // scaled copy into out
    if (n == 1) {
      if (src != out) std::memcpy(out, src, count * dtypeSize(dt));
    } else if (nat) {
      algo::allreduceNative(*nat.comm, src, out, count, dt, l.op(), nat.wait());
    } else if (hier) {
      algo::allreduceHierarchical(l, src, out, count, levels, run);
    } else {
      run(l, src, out, count);
    }
    postscale(dt, op, n, out, count);
  }, async);
}

WorkPtr Communicator::reduce(const void* in, void* out, size_t count, DataType dt, ReduceOp op, double premul,
                             int root, const std::string& algo, bool async) {
  checkUsable();
  checkRoot(root, "root");
  if (!algo.empty() && algo != "auto" && algo != "tree" && algo != "binomial" && algo != "native")
    throw Error("unknown reduce algorithm '" + algo + "' (binomial, native)");
  bool native = wantsNative(algo, "reduce");
  CollectiveInfo info{"reduce", CollKind::REDUCE, dt, count, root, native ? "native" : "binomial", op};
  NativeCall nat = nativeCall(native, mpi_, "reduce", timeoutSec_, world_->policy, [&] { return describe(info, nextSeq_); });
  size_t seg = segmentBytes("HCOMM_TREE_SEGMENT_BYTES", 512u << 10);
  int n = size_, me = rank_;
  return submit(info, false, 0, [=](Links& l, Work&) {
    if (count == 0) return;
    const void* src = in;
    std::vector<char> tmp;
    if (op == ReduceOp::PREMUL_SUM) {
      tmp.resize(count * dtypeSize(dt));
      prescale(dt, op, premul, src, tmp.data(), count);
    }
    if (n == 1) {
      if (src != out) std::memcpy(out, src, count * dtypeSize(dt));
    } else if (nat) {
      algo::reduceNative(*nat.comm, src, out, count, dt, l.op(), root, nat.wait());
    } else {
      algo::reduceBinomial(l, src, out, count, root, seg);
    }
    if (me == root) postscale(dt, op, n, out, count);
  }, async);
}

namespace {

// HCOMM_ALGO for a collective with a choice: its own entry ("broadcast:tree"), else a
// bare name when the collective has that algorithm (HCOMM_ALGO=ring leaves broadcast to
// the tuner) or it is "native".
std::string forcedByEnv(const std::string& collective, const std::vector<std::string>& names) {
  std::string spec = envStr("HCOMM_ALGO");
  if (spec.find(collective + ":") != std::string::npos) return algoFromEnv(collective);
  std::string any = algoFromEnv(collective);
  bool known = any == "native" || any == "auto" || std::find(names.begin(), names.end(), any) != names.end();
  return known ? any : "";
}

// The plan of a collective the tuner chooses for: MPI's own when forced ("native"),
// an explicit request before the tuner exists (init), else the tuner's decision.
Decision planWith(const std::string& collective, const std::vector<std::string>& names, const std::string& requested,
                  const std::shared_ptr<MpiComm>& mpi, bool tunerReady,
                  const std::function<Decision(const std::string& forced, const std::string& why)>& tune) {
  bool asked = !requested.empty() && requested != "auto";
  std::string forced = asked ? requested : forcedByEnv(collective, names);
  std::string why = asked ? "requested" : "HCOMM_ALGO";
  if (forced == "native") {
    requireMpi(mpi, collective);
    Decision d;
    d.candidates = {Candidate{"native"}};
    d.why = why;
    return d;
  }
  if (!tunerReady) {  // during create, before the topology exists: the flat algorithm
    Decision d;
    d.candidates = {Candidate{names[0]}};
    d.why = "init";
    return d;
  }
  Decision d = tune(forced, why);
  if (mpi) {  // listed, chosen only when forced: the model has no cost for MPI's own algorithms
    Candidate nat{"native"};
    nat.applicable = false;
    d.candidates.push_back(nat);
  }
  return d;
}

}  // namespace

Decision Communicator::planBroadcast(size_t bytes, int root, const std::string& requested) const {
  if (!world_) throw Error("communicator is closed");
  if (root < 0 || root >= size_)
    throw Error("broadcast root " + std::to_string(root) + " is out of range for size " + std::to_string(size_));
  return planWith("broadcast", broadcastAlgorithms(), requested, mpi_, world_->tuner != nullptr,
                  [&](const std::string& forced, const std::string& why) {
                    return world_->tuner->broadcast(worldRanks_, bytes, root, forced, why);
                  });
}

Decision Communicator::planAllgather(size_t bytes, const std::string& requested) const {
  if (!world_) throw Error("communicator is closed");
  return planWith("allgather", allgatherAlgorithms(), requested, mpi_, world_->tuner != nullptr,
                  [&](const std::string& forced, const std::string& why) {
                    return world_->tuner->allgather(worldRanks_, bytes, forced, why);
                  });
}

WorkPtr Communicator::broadcast(const void* in, void* out, size_t count, DataType dt, int root,
                                const std::string& algo, bool async) {
  checkUsable();
  checkRoot(root, "root");
  size_t bytes = count * dtypeSize(dt);
  Candidate choice = this->pick(CollKind::BROADCAST, bytes, root, algo, [&] { return planBroadcast(bytes, root, algo); });
  const std::string& pick = choice.algo;
  CollectiveInfo info{"broadcast", CollKind::BROADCAST, dt, count, root, pick, ReduceOp::SUM};
  NativeCall nat = nativeCall(pick == "native", mpi_, "broadcast", timeoutSec_, world_->policy,
                              [&] { return describe(info, nextSeq_); });
  size_t seg = choice.segBytes;
  std::vector<std::vector<int>> levels;
  if (pick == "hierarchical") levels = CommShape::of(*world_->topology, worldRanks_).levels();
  int me = rank_, n = size_;
  return submit(info, false, 0, [=](Links& l, Work&) {
    if (count == 0) return;
    if (me == root && in && in != out) std::memcpy(out, in, count * dtypeSize(dt));
    if (n == 1) return;
    if (nat) algo::broadcastNative(*nat.comm, out, count, dt, root, nat.wait());
    else if (!levels.empty()) algo::broadcastHierarchical(l, out, count, root, levels, seg);
    else algo::broadcastBinomial(l, out, count, root, seg);
  }, async);
}

WorkPtr Communicator::allgatherv(const void* in, void* out, std::vector<size_t> counts, DataType dt, bool async,
                                 const std::string& algo) {
  checkUsable();
  if (static_cast<int>(counts.size()) != size_)
    throw Error("allgatherv: " + std::to_string(counts.size()) + " counts for " + std::to_string(size_) + " ranks");
  size_t total = std::accumulate(counts.begin(), counts.end(), size_t(0));
  size_t bytes = total * dtypeSize(dt);
  Candidate choice = this->pick(CollKind::ALLGATHER, bytes, -1, algo, [&] { return planAllgather(bytes, algo); });
  const std::string& pick = choice.algo;
  CollectiveInfo info{"allgather", CollKind::ALLGATHER, dt, total, -1, pick, ReduceOp::SUM};
  NativeCall nat = nativeCall(pick == "native", mpi_, "allgather", timeoutSec_, world_->policy,
                              [&] { return describe(info, nextSeq_); });
  size_t seg = choice.segBytes;
  std::vector<std::vector<int>> levels;
  if (pick == "hierarchical") levels = CommShape::of(*world_->topology, worldRanks_).levels();
  int n = size_;
  return submit(info, false, 0, [=](Links& l, Work&) {
    if (total == 0) return;
    if (n == 1) {
      if (in != out) std::memcpy(out, in, total * dtypeSize(dt));
      return;
    }
    if (nat) algo::allgathervNative(*nat.comm, in, out, counts, dt, nat.wait());
    else if (!levels.empty()) algo::allgathervHierarchical(l, in, out, counts, levels, seg);
    else algo::allgathervRing(l, in, out, counts);
  }, async);
}

WorkPtr Communicator::reduceScatterv(const void* in, void* out, std::vector<size_t> counts, DataType dt, ReduceOp op,
                                     double premul, bool async) {
  checkUsable();
  if (static_cast<int>(counts.size()) != size_)
    throw Error("reduce_scatterv: " + std::to_string(counts.size()) + " counts for " + std::to_string(size_) + " ranks");
  size_t total = std::accumulate(counts.begin(), counts.end(), size_t(0));
  bool native = wantsNative("", "reduce_scatter");
  CollectiveInfo info{"reduce_scatter", CollKind::REDUCE_SCATTER, dt, total, -1, native ? "native" : "ring", op};
  NativeCall nat = nativeCall(native, mpi_, "reduce_scatter", timeoutSec_, world_->policy, [&] { return describe(info, nextSeq_); });
  int n = size_, me = rank_;
  return submit(info, false, 0, [=](Links& l, Work&) {
    if (total == 0) return;
    const void* src = in;
    std::vector<char> tmp;
    if (op == ReduceOp::PREMUL_SUM) {
      tmp.resize(total * dtypeSize(dt));
      prescale(dt, op, premul, src, tmp.data(), total);
    }
    if (n == 1) {
      if (src != out) std::memmove(out, src, total * dtypeSize(dt));
    } else if (nat) {
      algo::reduceScattervNative(*nat.comm, src, out, counts, dt, l.op(), nat.wait());
    } else {
      algo::reduceScattervRing(l, src, out, counts);
    }
    postscale(dt, op, n, out, counts[me]);
  }, async);
}

WorkPtr Communicator::alltoallv(const void* in, std::vector<size_t> sendCounts, std::vector<size_t> sendDispls,
                                void* out, std::vector<size_t> recvCounts, std::vector<size_t> recvDispls,
                                DataType dt, bool async) {
  checkUsable();
  for (auto* v : {&sendCounts, &sendDispls, &recvCounts, &recvDispls})
    if (static_cast<int>(v->size()) != size_)
      throw Error("alltoallv: every count/displacement list needs " + std::to_string(size_) + " entries");
  CollectiveInfo info{"alltoall", CollKind::ALLTOALL, dt, std::accumulate(sendCounts.begin(), sendCounts.end(), size_t(0)), -1,
                      "pairwise", ReduceOp::SUM};
  return submit(info, false, 0, [=](Links& l, Work&) {
    algo::alltoallvPairwise(l, in, sendCounts, sendDispls, out, recvCounts, recvDispls);
  }, async);
}

WorkPtr Communicator::gather(const void* in, void* out, size_t count, DataType dt, int root, bool async) {
  checkUsable();
  checkRoot(root, "root");
  CollectiveInfo info{"gather", CollKind::GATHER, dt, count, root, "linear", ReduceOp::SUM};
  return submit(info, false, 0, [=](Links& l, Work&) {
    if (count) algo::gatherLinear(l, in, out, count, root);
  }, async);
}

WorkPtr Communicator::scatter(const void* in, void* out, size_t count, DataType dt, int root, bool async) {
  checkUsable();
  checkRoot(root, "root");
  CollectiveInfo info{"scatter", CollKind::SCATTER, dt, count, root, "linear", ReduceOp::SUM};
  return submit(info, false, 0, [=](Links& l, Work&) {
    if (count) algo::scatterLinear(l, in, out, count, root);
  }, async);
}

WorkPtr Communicator::barrier(bool async) {
  checkUsable();
  bool native = wantsNative("", "barrier");
  CollectiveInfo info{"barrier", CollKind::BARRIER, DataType::U8, 0, -1, native ? "native" : "dissemination",
                      ReduceOp::SUM};
  NativeCall nat = nativeCall(native, mpi_, "barrier", timeoutSec_, world_->policy, [&] { return describe(info, nextSeq_); });
  return submit(info, false, 0, [nat](Links& l, Work&) {
    if (nat) algo::barrierNative(*nat.comm, nat.wait());
    else algo::barrierDissemination(l);
  }, async);
}

WorkPtr Communicator::send(const void* buf, size_t nbytes, int peer, int64_t tag, bool async) {
  checkUsable();
  checkRoot(peer, "peer");
  if (tag < 0 || tag > kMaxUserTag) throw Error("tag must be in [0, 2^31), got " + std::to_string(tag));
  CollectiveInfo info{"send", CollKind::NONE, DataType::U8, nbytes, peer, "", ReduceOp::SUM};
  if (async) {
    const Route& r = routes_[peer];
    return postP2p(info, r.transport->isend(r.peer, p2pTag(id_, tag), buf, nbytes), nullptr, nbytes,
                   p2pTag(id_, tag));
  }
  return submit(info, true, p2pTag(id_, tag), [=](Links& l, Work&) { l.send(peer, buf, nbytes); }, async);
}

WorkPtr Communicator::recv(void* buf, size_t nbytes, int peer, int64_t tag, bool async) {
  checkUsable();
  if (peer >= 0) checkRoot(peer, "peer");
  if (tag < 0 || tag > kMaxUserTag) throw Error("tag must be in [0, 2^31), got " + std::to_string(tag));
  CollectiveInfo info{"recv", CollKind::NONE, DataType::U8, nbytes, peer, "", ReduceOp::SUM};
  if (async) {
    RequestPtr req;
    if (peer >= 0) req = routes_[peer].transport->irecv(routes_[peer].peer, p2pTag(id_, tag), buf, nbytes, nullptr);
    return postP2p(info, req, buf, nbytes, p2pTag(id_, tag));
  }
  return submit(info, true, p2pTag(id_, tag), [=](Links& l, Work& w) {
    if (peer >= 0) {
      l.recv(peer, buf, nbytes);
      w.source = peer;
      w.received = nbytes;
    } else {
      w.source = l.recvAny(buf, nbytes, 0, &w.received);
    }
  }, async);
}

// ---------------------------------------------------------------- split

std::shared_ptr<Communicator> Communicator::split(int color, int key) {
  checkUsable();
  int64_t mine[3] = {color, key, rank_};
  std::vector<int64_t> all(3 * size_);
  allgatherv(mine, all.data(), std::vector<size_t>(size_, 3), DataType::I64, false);
  uint32_t splitNo = ++splits_;
  // MPI_Comm_split is collective over this communicator, so opted-out ranks call it too.
  std::shared_ptr<MpiComm> mpiChild = mpi_ ? mpiSplit(*mpi_, color, key) : nullptr;
  if (color < 0) return nullptr;
  std::vector<std::pair<std::pair<int64_t, int64_t>, int>> members;
  for (int r = 0; r < size_; ++r)
    if (all[3 * r] == color) members.push_back({{all[3 * r + 1], all[3 * r + 2]}, r});
  std::sort(members.begin(), members.end());
  std::vector<int> worldRanks;
  for (auto& m : members) worldRanks.push_back(worldRanks_[m.second]);
  // Every member derives the same id; it only has to differ from the ids of other
  // communicators sharing these transports (24 bits).
  uint64_t h = (uint64_t(id_) * 1000003u) ^ (uint64_t(splitNo) * 7919u) ^ (uint64_t(color) * 104729u);
  h ^= h >> 13;
  uint32_t id = static_cast<uint32_t>((h * 0x9E3779B97F4A7C15ull) >> 40) | 2u;
  std::shared_ptr<Communicator> child = own(new Communicator(world_, worldRanks, id & 0xffffff, timeoutSec_));
  child->mpi_ = mpiChild;
  return child;
}

}  // namespace hcomm
