// The world's transport list: HCOMM_TRANSPORT's preference orders, route choice by
// canConnect, the host transports a new world makes and the device transports its
// first device call makes (world.h).
#include "comm/world.h"

#include <unistd.h>

#include <algorithm>
#include <sstream>

#include "transport/cuda_ipc.h"
#include "transport/mpi.h"
#include "transport/shm.h"
#include "transport/staging.h"
#include "transport/tcp.h"

namespace hcomm {

namespace {

const char* const kNames[] = {"shm", "tcp", "mpi", "cuda_ipc", "staging"};

bool isDeviceOnly(const std::string& name) { return name == "cuda_ipc" || name == "staging"; }

[[noreturn]] void refuse(const std::string& item, const std::string& why) {
  throw Error("HCOMM_TRANSPORT: " + why + " in '" + item +
              "' (an item is [intra:|inter:]auto or names joined by '+': shm, tcp, mpi, cuda_ipc, staging)");
}

// One level's order from an item's words.
std::vector<std::string> levelOrder(const std::string& item, const std::string& words, bool local) {
  if (words == "auto") return TransportOrder().level(local);
  std::vector<std::string> out;
  std::istringstream in(words);
  std::string word;
  while (std::getline(in, word, '+')) {
    if (std::find(std::begin(kNames), std::end(kNames), word) == std::end(kNames))
      refuse(item, "unknown transport '" + word + "'");
    if (std::find(out.begin(), out.end(), word) != out.end()) refuse(item, "'" + word + "' named twice");
    out.push_back(word);
  }
  if (out.empty()) refuse(item, "no transport named");
  // A level that names no device transport keeps its default one where it stood (world.h).
  if (std::none_of(out.begin(), out.end(), isDeviceOnly)) {
    if (local) out.insert(out.begin(), "cuda_ipc");
    else out.push_back("staging");
  }
  return out;
}

std::string joined(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return "[" + s + "]";
}

// Would a transport `name`, once made and reaching `peer`, be its route? Yes when no
// transport listed before it in the peer's order reaches the peer now.
bool wouldRoute(const World& w, int peer, MemKind mem, const std::string& name) {
  for (const std::string& word : w.order.level(w.local(peer))) {
    if (word == name) return true;
    if (w.reaching(word, peer, mem)) return false;
  }
  return false;
}

}  // namespace

TransportOrder TransportOrder::parse(const std::string& setting) {
  TransportOrder o;
  std::istringstream in(setting);
  std::string item;
  while (std::getline(in, item, ',')) {
    auto colon = item.find(':');
    std::string level = colon == std::string::npos ? "" : item.substr(0, colon);
    std::string words = colon == std::string::npos ? item : item.substr(colon + 1);
    if (level != "" && level != "intra" && level != "inter") refuse(item, "unknown level '" + level + "'");
    if (level != "inter") o.intra = levelOrder(item, words, true);
    if (level != "intra") o.inter = levelOrder(item, words, false);
  }
  return o;
}

bool TransportOrder::names(const std::string& transport) const {
  return std::find(intra.begin(), intra.end(), transport) != intra.end() ||
         std::find(inter.begin(), inter.end(), transport) != inter.end();
}

// ---------------------------------------------------------------- the list

void World::add(std::shared_ptr<Transport> t) {
  std::lock_guard<std::mutex> lock(transportMu_);
  transports_.push_back(std::move(t));
}

Transport* World::reaching(const std::string& name, int peer, MemKind mem) const {
  std::lock_guard<std::mutex> lock(transportMu_);
  for (const auto& t : transports_)  // several of a name: staging over shm and over tcp
    if (name == t->name() && t->canConnect(peer, mem)) return t.get();
  return nullptr;
}

Transport* World::route(int peer, MemKind mem) const {
  for (const std::string& name : order.level(local(peer)))
    if (Transport* t = reaching(name, peer, mem)) return t;
  if (peer != rank) return nullptr;
  std::lock_guard<std::mutex> lock(transportMu_);
  for (const auto& t : transports_)
    if (t->canConnect(peer, mem)) return t.get();
  return nullptr;
}

std::string World::unreachable(int peer, MemKind mem) const {
  bool here = local(peer);
  return std::string("none of the ") + (here ? "intra" : "inter") + "-host transports " +
         joined(order.level(here)) + " (HCOMM_TRANSPORT) reaches it with " +
         (mem == MemKind::HOST ? "host" : "device") + " memory";
}

void World::abortTransports(const std::string& why) {
  std::lock_guard<std::mutex> lock(transportMu_);
  for (const auto& t : transports_) t->abort(why);
}

World::~World() {
  if (rescueFd >= 0) ::close(rescueFd);
  // Newest first: a wrapper (staging, cuda_ipc) goes before the transport it holds.
  while (!transports_.empty()) transports_.pop_back();
}

void abortWorld(World& w, const std::string& why) {
  std::lock_guard<std::mutex> lock(w.abortMu);
  if (!w.abortReason.empty()) return;
  w.abortReason = why;
  w.abortTransports(why);
}

// ---------------------------------------------------------------- making them

void connectHostTransports(World& w, std::unique_ptr<TcpTransport> tcp, const std::vector<std::string>& addrs,
                           const std::string& shmPrefix) {
  std::vector<int> local;
  for (int r = 0; r < w.size; ++r)
    if (w.local(r)) local.push_back(r);
  auto shm = std::make_shared<ShmTransport>(w.rank, local, shmPrefix, w.timeoutSec);
  shm->connect();
  w.add(shm);
  // Collective over MPI: decided from the orders alone, the same on every rank.
  if (w.size > 1 && w.order.names("mpi")) w.add(makeMpiTransport(w.mpiComm, w.timeoutSec));
  std::vector<int> viaTcp;
  for (int r = 0; r < w.size; ++r) {
    if (r == w.rank) continue;
    if (wouldRoute(w, r, MemKind::HOST, "tcp")) viaTcp.push_back(r);
    else if (!w.route(r, MemKind::HOST))
      throw Error("rank " + std::to_string(r) + " cannot be reached: " + w.unreachable(r, MemKind::HOST));
  }
  if (viaTcp.empty()) return;
  tcp->connect(viaTcp, addrs);
  // Peers ask how far this rank got after a timeout (Communicator::progressReport).
  std::weak_ptr<ShmTransport> board = shm;
  int rank = w.rank;
  tcp->setProgressSource([board, rank](uint32_t c, CallProgress* out) {
    auto s = board.lock();
    return s && s->peerProgress(rank, c, out) && out->found;
  });
  w.add(std::shared_ptr<TcpTransport>(tcp.release()));
}

namespace {

// The device transport `name` that would reach `peer`, made now; null when it cannot be.
std::shared_ptr<Transport> makeDeviceTransport(World& w, const std::string& name, int peer, int device,
                                               double timeoutSec) {
  if (name == "cuda_ipc" && w.local(peer)) {
    std::vector<int> local;
    for (int r = 0; r < w.size; ++r)
      if (w.local(r)) local.push_back(r);
    // Its control messages (hello, data, credit) travel over shm.
    return std::make_shared<CudaIpcTransport>(w.rank, local, w.find<ShmTransport>(), device, timeoutSec);
  }
  if (name == "staging") {
    Transport* host = w.route(peer, MemKind::HOST);  // the host transport of the peer's level
    if (host) return std::make_shared<StagingTransport>(host, device, timeoutSec);
  }
  return nullptr;
}

}  // namespace

void ensureDeviceTransports(World& w, int device, double timeoutSec) {
  std::lock_guard<std::mutex> lock(w.deviceMu);
  if (w.device >= 0 && w.device != device)
    throw Error("this rank's calls use cuda:" + std::to_string(w.device) + ", not cuda:" + std::to_string(device) +
                ": hcomm binds one device per rank (set the device before the first call, as with NCCL)");
  if (w.device >= 0) return;
  // Per peer, its order's first transport that reaches it or, being a device transport,
  // can be made to (`inter:staging+mpi` stages even when MPI takes device pointers).
  for (int r = 0; r < w.size; ++r) {
    if (r == w.rank) continue;
    for (const std::string& name : w.order.level(w.local(r))) {
      if (w.reaching(name, r, MemKind::DEVICE)) break;
      if (!isDeviceOnly(name)) continue;
      if (auto t = makeDeviceTransport(w, name, r, device, timeoutSec)) {
        w.add(t);
        break;
      }
    }
  }
  w.device = device;
}

}  // namespace hcomm
