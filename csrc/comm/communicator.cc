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

#include "comm/bootstrap.h"
#include "comm/engine.h"
#include "comm/native_call.h"
#include "common/log.h"
#include "common/param.h"
#include "topo/host.h"
#include "topo/topology.h"
#include "topo/tuner.h"
#include "transport/mpi.h"
#include "transport/shm.h"
#include "transport/socket.h"
#include "transport/tcp.h"

namespace hcomm {

namespace {

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
  p.spinUs = static_cast<int>(envInt("HCOMM_SPIN_US", 50));
  p.yields = static_cast<int>(envInt("HCOMM_YIELD_ITERS", oversubscribed ? 5000 : 200));
  p.sleepUs = static_cast<int>(envInt("HCOMM_SLEEP_US", 1000));
  return p;
}

// Something asked for MPI, so failing to join it is an error rather than a fallback.
bool mpiRequired(const World& w) {
  return w.order.names("mpi") || envStr("HCOMM_MPI") == "1" || envStr("HCOMM_ALGO").find("native") != std::string::npos;
}

// "3 on this host (shm), 4 on other hosts (tcp)": for the init log line.
std::string routeSummary(const World& w) {
  std::map<std::string, int> here, away;
  for (int r = 0; r < w.size; ++r) {
    Transport* t = w.route(r, MemKind::HOST);
    ++(w.local(r) ? here : away)[t ? t->name() : "none"];
  }
  std::string s;
  for (auto* level : {&here, &away})
    for (const auto& kv : *level)
      s += (s.empty() ? "" : ", ") + std::to_string(kv.second) +
           (level == &here ? " on this host (" : " on other hosts (") + kv.first + ")";
  return s;
}

}  // namespace

static Json* member(Json& j, const std::string& key) {  // Json::find, writable
  for (auto& kv : j.obj)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

// HCOMM_TOPO_FILE names ranks of the job as first launched; after a shrink, rank r of
// the new world is the file's rank fileRanks[r], so the host lists are renumbered.
static void renumberTopoFile(Json& file, const std::vector<int>& fileRanks) {
  Json* hosts = member(file, "hosts");
  if (!hosts) return;
  for (Json& h : hosts->arr) {
    Json* ranks = member(h, "ranks");
    if (!ranks) continue;
    std::vector<Json> kept;
    for (const Json& r : ranks->arr) {
      auto it = std::find(fileRanks.begin(), fileRanks.end(), static_cast<int>(r.num));
      if (r.type != Json::NUM || it == fileRanks.end()) continue;
      Json renamed = r;
      renamed.num = static_cast<double>(it - fileRanks.begin());
      kept.push_back(renamed);
    }
    ranks->arr = kept;
  }
}

// ---------------------------------------------------------------- creation

// The listener shrink() meets on (World::rescueFd), opened last, once every peer is
// connected: the transport's own listener has closed by then, so a port scan during
// init finds only that one, and this one holds no stranger before the job is up.
static void openRescue(Communicator& comm, World& w, const std::string& ip) {
  constexpr size_t kAddr = 64;
  int port = 0;
  w.rescueFd = listenOn(ip, 0, &port);
  std::string mine = ip + ":" + std::to_string(port);
  mine.resize(kAddr, '\0');
  std::vector<char> all(kAddr * w.size);
  // An explicit algorithm: a bad HCOMM_ALGO must raise at the first call a user makes, not in init.
  comm.allgatherv(mine.data(), all.data(), std::vector<size_t>(w.size, kAddr), DataType::U8, false, "ring");
  for (int r = 0; r < w.size; ++r) w.rescueAddrs.push_back(std::string(&all[kAddr * r], strnlen(&all[kAddr * r], kAddr)));
}

std::shared_ptr<Communicator> Communicator::create(int rank, int size, const std::string& uniqueId,
                                                   double timeoutSec) {
  std::vector<int> identity(size > 0 ? size : 0);
  std::iota(identity.begin(), identity.end(), 0);
  return createWorld(rank, size, uniqueId, timeoutSec, identity);
}

std::shared_ptr<Communicator> Communicator::createWorld(int rank, int size, const std::string& uniqueId,
                                                        double timeoutSec, const std::vector<int>& fileRanks) {
  if (size < 1) throw Error("communicator size must be >= 1, got " + std::to_string(size));
  if (rank < 0 || rank >= size)
    throw Error("rank " + std::to_string(rank) + " is out of range for size " + std::to_string(size));
  auto world = std::make_shared<World>();
  world->rank = rank;
  world->size = size;
  world->timeoutSec = timeoutSec;
  world->fileRanks = fileRanks;
  UniqueId id;
  std::vector<std::string> records;
  std::string myHost = hostIdentity();
  // A topology file may place this rank on a simulated host: then that host decides
  // shared memory vs tcp, so one machine can stand in for a cluster.
  std::string topoPath = envStr("HCOMM_TOPO_FILE");
  Json topoFile;
  if (!topoPath.empty()) {
    topoFile = loadTopoFile(topoPath);
    renumberTopoFile(topoFile, fileRanks);
    TopoFilePlacement place = placementFor(topoFile, rank);
    if (!place.host.empty()) myHost = "file:" + place.host;
  }
  std::unique_ptr<TcpTransport> tcp;
  world->order = TransportOrder::parse(envStr("HCOMM_TRANSPORT", "auto"));
  std::string myMachine = machineIdentity();
  std::string ip;
  if (size == 1) {
    id.token = randomToken();
    records = {myHost + "\n" + std::to_string(getpid()) + "\n-\n" + mpiIdentity(mpiRequired(*world)) + "\n" +
               myMachine};
  } else {
    id = UniqueId::parse(uniqueId);
    ip = chooseLocalIp(id.host);
    tcp.reset(new TcpTransport(rank, ip, id.token, timeoutSec));
    std::string record = myHost + "\n" + std::to_string(getpid()) + "\n" + tcp->address() + "\n" +
                         mpiIdentity(mpiRequired(*world)) + "\n" + myMachine;
    records = rendezvous(id, rank, size, record, timeoutSec);
  }
  world->token = id.token;
  std::vector<std::string> addrs(size), mpiIds(size);
  int onMachine = 0;  // ranks sharing this machine's CPUs (simulated hosts included)
  for (int r = 0; r < size; ++r) {
    auto fields = splitLines(records[r]);
    if (fields.size() != 5) throw Error("bootstrap: malformed record from rank " + std::to_string(r));
    if (fields[4] == myMachine) ++onMachine;
    world->hostIds.push_back(fields[0]);
    world->machineIds.push_back(fields[4]);
    addrs[r] = fields[2];
    mpiIds[r] = fields[3];
  }
  world->policy = waitPolicy(onMachine);
  world->backgroundPolicy = waitPolicy(2 * onMachine);
  world->mpiComm = mpiCommFor(mpiIds, mpiRequired(*world));
  connectHostTransports(*world, std::move(tcp), addrs, "/hcomm_" + id.token.substr(0, 16));
  logLine(LogLevel::INFO, rank, "init: " + std::to_string(size) + " ranks: " + routeSummary(*world) + ", simd " +
                                     simdName(simdLevel()));
  std::vector<int> all(size);
  std::iota(all.begin(), all.end(), 0);
  std::shared_ptr<Communicator> comm = own(new Communicator(world, all, 1, timeoutSec));
  comm->mpi_ = world->mpiComm;
  comm->barrier(false);    // every peer has mapped our segment once it has talked to us
  comm->board_->unlinkOwn();
  InitChannel ch;  // the topology is gathered over the new communicator itself
  ch.rank = rank;
  ch.size = size;
  ch.allgatherBytes = [&](const void* in, void* out, const std::vector<size_t>& counts) {
    comm->allgatherv(in, out, counts, DataType::U8, false);
  };
  ch.send = [&](int peer, void* buf, size_t n) { comm->send(buf, n, peer, kMaxUserTag, false); };
  ch.recv = [&](int peer, void* buf, size_t n) { comm->recv(buf, n, peer, kMaxUserTag, false); };
  ch.exchange = [&](int to, const void* out, int from, void* in, size_t n) {
    WorkPtr sent = comm->send(out, n, to, kMaxUserTag, true);  // posted, then the receive runs beside it
    comm->recv(in, n, from, kMaxUserTag, false);
    sent->wait(-1);
  };
  ch.maxAll = [&](double* v, size_t n) {
    comm->allreduce(v, v, n, DataType::F64, ReduceOp::MAX, 1.0, "halving_doubling", false);
  };
  world->topology = buildTopology(ch, myHost, topoPath.empty() ? nullptr : &topoFile, topoPath);
  auto native = measureNativeCosts(world->mpiComm, size, timeoutSec, world->policy);  // MPI's own, timed
  world->tuner = std::make_shared<Tuner>(world->topology, native);
  if (size > 1) openRescue(*comm, *world, ip);
  return comm;
}

Communicator::Communicator(std::shared_ptr<World> world, std::vector<int> worldRanks, uint32_t id, double timeoutSec)
    : world_(std::move(world)), worldRanks_(std::move(worldRanks)), id_(id), timeoutSec_(timeoutSec) {
  size_ = static_cast<int>(worldRanks_.size());
  flight_ = std::make_shared<FlightRecorder>(static_cast<size_t>(envInt("HCOMM_FLIGHT_RECORDER_SIZE", 2000)));
  auto me = std::find(worldRanks_.begin(), worldRanks_.end(), world_->rank);
  rank_ = static_cast<int>(me - worldRanks_.begin());
  for (int w : worldRanks_) {
    Route r;
    r.peer = w;
    r.transport = world_->route(w, MemKind::HOST);  // every peer has one (connectHostTransports)
    routes_.push_back(r);
  }
  linkRoutes_ = std::make_shared<const std::vector<Route>>(routes_);
  board_ = world_->find<ShmTransport>();
  boardSlot_ = board_->claimBoardSlot(id_);
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
  device_.reset();
  board_->releaseBoardSlot(boardSlot_);
  routes_.clear();
  world_.reset();
}

void Communicator::abort(const std::string& why) {
  if (closed_) throw Error("communicator is closed");
  abortWorld(*world_, why.empty() ? "aborted by the user" : why);
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
