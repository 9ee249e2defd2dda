// Shared-memory transport for ranks on the same host.
//
// Each rank owns one segment holding an inbound queue per local peer: a ring of slots
// the sender fills and the receiver drains. Small messages (below HCOMM_SHM_RNDV_BYTES)
// are copied through the slots; large ones use a rendezvous: the sender publishes the
// address of its own buffer and the receiver copies or reduces straight out of the
// sender's memory with process_vm_readv (cross-memory attach), so a large message
// costs one copy. Where the kernel refuses cross-memory attach, every message streams
// through the slots (two copies, pipelined). Waiting ranks sleep on a futex in their
// own segment ("doorbell") that senders ring. The segment's layout is in shm_segment.h;
// creating, mapping and probing segments in shm_segment.cc; moving messages in shm.cc.
#pragma once
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "transport/hugepages.h"
#include "transport/matcher.h"
#include "transport/transport.h"

namespace hcomm {

struct ShmSegment;
struct ShmQueue;

class ShmTransport : public Transport {
 public:
  // localRanks: every rank on this host (including `rank`), the same list on each of them.
  ShmTransport(int rank, std::vector<int> localRanks, std::string prefix, double timeoutSec);
  ~ShmTransport() override;

  // Maps every local peer's segment (waiting for it to appear) and probes whether this
  // rank may read each peer's memory. Must precede any send.
  void connect();
  // Removes this rank's segment name once every peer has mapped it.
  void unlinkOwn();

  const char* name() const override { return "shm"; }
  // Host memory, to the ranks of this host (this one included: a self route).
  bool canConnect(int peer, MemKind mem) const override;
  RequestPtr isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) override;
  RequestPtr irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                   uint64_t fingerprint) override;
  bool progress() override;
  void sleepFor(int us) override;
  bool probe(int peer, uint64_t tag, size_t* nbytes) override;
  bool stale(int peer, uint64_t lo, uint64_t hi, uint64_t* tag, uint64_t* fingerprint) override;
  void abort(const std::string& why) override;
  std::string peerFailure(int peer) override;
  std::string waitState(int peer, uint64_t tagBase) override;
  bool usesCma(int peer) const;

  // The progress board: every rank publishes in its own segment, per communicator, the
  // last collective it entered and the last it finished, so that after a timeout a rank
  // can see how far each other rank of its host got without that rank's help (it may be
  // stuck outside hcomm, or dead). noteStarted/noteEnded are one store each.
  int claimBoardSlot(uint32_t comm);  // -1 when all slots are taken (then nothing is published)
  void releaseBoardSlot(int slot);
  void noteStarted(int slot, uint64_t seq, int kind);
  void noteEnded(int slot, uint64_t seq);
  // False when `rank` is not on this host.
  bool peerProgress(int rank, uint32_t comm, CallProgress* out);

 private:
  struct OutMsg {
    RequestPtr req;
    const char* buf = nullptr;
    size_t offset = 0;
    bool rendezvous = false;
    bool published = false;  // rendezvous descriptor or first chunk sent
    uint64_t seq = 0;        // rendezvous sequence, acknowledged by the receiver
  };
  struct Peer {
    int rank = -1;
    int index = -1;              // position in localRanks
    ShmSegment* seg = nullptr;   // the peer's segment (mapped)
    size_t segBytes = 0;
    ShmQueue* out = nullptr;     // my queue inside the peer's segment
    ShmQueue* in = nullptr;      // the peer's queue inside my segment
    bool cma = false;            // the peer may read my memory (so I may use rendezvous)
    std::deque<OutMsg> sending;  // FIFO, not yet fully published
    std::deque<OutMsg> awaiting; // rendezvous published, waiting for the ack
    uint64_t nextSeq = 1;
    PeerMatch match;
    UnexpectedPtr streaming;     // unexpected message whose chunks are still arriving
    PostedRecv current;          // posted receive whose chunks are still arriving
    bool inCurrent = false;
  };

  Peer& peerOf(int rank);
  bool progressSends(Peer& p);
  bool progressRecvs(Peer& p);
  void handleSlot(Peer& p, const struct ShmSlot& slot);
  void pull(Peer& p, const PostedRecv& r, int64_t pid, uint64_t addr, size_t nbytes, uint64_t seq);
  void ring(ShmSegment* seg);
  void failDeadPeers();
  void failPeer(Peer& p, const std::string& why);  // every request waiting on p fails
  std::string failureOf(const Peer& p) const;      // why p aborted, "" if it has not
  std::string goneWhy(const Peer& p) const;        // why p sends nothing more (aborted, exited), or ""

  int rank_;
  std::vector<int> localRanks_;
  std::string prefix_;
  double timeoutSec_;
  ShmSegment* mine_ = nullptr;
  size_t mineBytes_ = 0;
  std::string mineName_;
  std::map<int, Peer> peers_;
  std::vector<char> scratch_;  // staging for reductions out of a peer's memory
  HugePageAdvisor hugePages_;  // rendezvous send buffers (hugepages.h)
  std::recursive_mutex mu_;
  std::string aborted_;
  std::chrono::steady_clock::time_point lastLivenessCheck_;
};

}  // namespace hcomm
