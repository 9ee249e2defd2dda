// The world: the ranks of one job and the transports that reach them, shared by a
// communicator and everything split from it.
//
// Transports are ONE list. The route to a peer, for a call on host or device memory, is
// the first transport of the peer's level (on this host: intra; on another: inter), in
// that level's preference order, that canConnect to it with that kind of memory
// (transport.h). Nothing else names a transport: abort walks the list, and the few
// components that need one kind look it up from the list: cuda_ipc sends its control
// messages over shm (World::find), staging wraps its peers' host route (World::route).
//
// HCOMM_TRANSPORT sets the preference orders; comma-separated items, the last per level
// wins:
//   [intra:|inter:]WORDS    WORDS = auto | name(+name)*, for that level (both without one)
//   names: shm (this host), tcp, mpi, cuda_ipc (device buffers, this host), staging
//   (device buffers through pinned host memory over the level's host transport)
// Defaults: intra cuda_ipc+shm, inter tcp+staging. A level whose words name neither
// cuda_ipc nor staging keeps its default device transport where it was: cuda_ipc before
// the words, staging after them, so `inter:mpi` is mpi+staging (device buffers go to
// MPI directly when it is CUDA-aware, transport/mpi.h, else through staging over MPI)
// and `mpi` keeps cuda_ipc first on the host. Examples: `mpi` (every host link over MPI),
// `inter:mpi`, `intra:mpi`, `inter:staging+mpi` (device buffers staged even when MPI is
// CUDA-aware), `intra:tcp` (loopback tcp inside a host). Unknown words raise, naming
// the known ones; a level none of whose transports reaches a peer raises at init.
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "algo/links.h"
#include "topo/tuner.h"
#include "transport/transport.h"

namespace hcomm {

class MpiComm;       // transport/mpi.h
class TcpTransport;  // transport/tcp.h

struct TransportOrder {
  std::vector<std::string> intra{"cuda_ipc", "shm"}, inter{"tcp", "staging"};

  // HCOMM_TRANSPORT parsed; Error naming the item and the known words when it is not.
  static TransportOrder parse(const std::string& setting);
  const std::vector<std::string>& level(bool local) const { return local ? intra : inter; }
  bool names(const std::string& transport) const;
};

struct World {
  int rank = 0, size = 1;
  std::string token;
  std::vector<std::string> hostIds;
  // The physical machine of each rank (simulated hosts of one machine share it): what
  // tells two ranks on one GPU apart from two GPUs with the same bus id.
  std::vector<std::string> machineIds;
  std::shared_ptr<const Topology> topology;  // gathered at init (topo/topology.h)
  std::shared_ptr<const Tuner> tuner;        // over `topology`, caches its decisions
  TransportOrder order;
  // The job's MPI communicator when every rank joined MPI (the native algorithm's, and
  // what an mpi transport duplicates); null otherwise.
  std::shared_ptr<MpiComm> mpiComm;
  WaitPolicy policy;
  // For calls run on a progress thread (async): the caller's thread is computing
  // meanwhile, so every rank keeps two threads busy and a long spin would take the core
  // that computation needs (DDP's backward).
  WaitPolicy backgroundPolicy;
  double timeoutSec = 300;
  // Device memory: the one CUDA device this rank's calls use (-1 before the first), set
  // by ensureDeviceTransports, which holds deviceMu while it makes the device transports.
  std::mutex deviceMu;
  int device = -1;
  std::mutex abortMu;
  std::string abortReason;
  // Recovery (shrink.cc): every rank keeps a listener open for the world's lifetime, so
  // survivors can meet after the transports were aborted; a dead rank's listener refuses
  // connections, which is how survivors tell "dead" from "slow". rescueAddrs by world rank.
  int rescueFd = -1;
  std::vector<std::string> rescueAddrs;
  std::mutex rescueMu;  // one shrink at a time per world
  // HCOMM_TOPO_FILE rank of each world rank (identity, until a shrink renumbers).
  std::vector<int> fileRanks;

  bool local(int peer) const { return hostIds[peer] == hostIds[rank]; }
  void add(std::shared_ptr<Transport> t);
  // The route to `peer` (world rank) for buffers of kind `mem`; null when no transport
  // of the peer's level reaches it. This rank itself: its level's route, else any
  // transport that reaches it (a self route is never needed for bytes).
  Transport* route(int peer, MemKind mem) const;
  // A transport named `name` that reaches `peer` with `mem`, or null.
  Transport* reaching(const std::string& name, int peer, MemKind mem) const;
  // Why route(peer, mem) is null, in words for an error.
  std::string unreachable(int peer, MemKind mem) const;
  // The first transport of class T in the list (null when none): for the components
  // that need one kind (the progress board of shm, tcp's progress queries).
  template <class T>
  T* find() const {
    std::lock_guard<std::mutex> lock(transportMu_);
    for (const auto& t : transports_)
      if (T* hit = dynamic_cast<T*>(t.get())) return hit;
    return nullptr;
  }
  // Fails every outstanding request of every transport with `why`.
  void abortTransports(const std::string& why);
  ~World();

 private:
  mutable std::mutex transportMu_;  // the list grows when device transports are made
  std::vector<std::shared_ptr<Transport>> transports_;  // in the order they were made
};

// After a failure some requests may still point into the caller's buffers: fail them all
// (as NCCL aborts a communicator) so no byte lands in memory the caller got back. Once.
void abortWorld(World& w, const std::string& why);

// Makes the host transports of a new world (every rank of it at once): shm to this
// host's ranks (always: the progress board lives there), mpi over w.mpiComm when an
// order names it, and `tcp` (made before the rendezvous, addrs[r] its address on rank
// r) connected to the peers whose order reaches tcp first, else dropped. Error naming
// the first peer no transport reaches.
void connectHostTransports(World& w, std::unique_ptr<TcpTransport> tcp, const std::vector<std::string>& addrs,
                           const std::string& shmPrefix);

// Makes the device transports the world's routes need for `device` (cuda_ipc, staging),
// once; one device per rank (Error naming both for a second). Purely local: cuda_ipc
// introduces itself to each peer on first use of the pair.
void ensureDeviceTransports(World& w, int device, double timeoutSec);

}  // namespace hcomm
