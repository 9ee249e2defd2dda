// A point-to-point Transport over HcclSend / HcclRecv, so hcomm's own algorithms (ring,
// tree, halving-doubling, ...) run on NPU buffers. The same shape as the NCCL transport
// (transport/nccl.h), for the same reasons:
//
// HCCL matches a send with the receive the peer posted in the same position, has no
// tags, and a posted receive holds up its stream until the peer sends. hcomm's contract
// is MPI-like (match by (peer, tag), a receive never holds up a send), so:
//   - every ordered pair (a -> b) gets a 2-rank HCCL communicator of its own (a is its
//     rank 0) and a stream on each side. HCCL's declared API has no split, so each pair
//     communicator is made with HcclCommInitRootInfo from a root info its sender made;
//     the Communicator exchanges them (comm/npu_call.cc) and every rank initialises its
//     2(n-1) pair communicators in one global (a, b) order, which cannot deadlock (the
//     first pair not yet made, in that order, has both of its ranks waiting on it);
//   - every message is a 32-byte header (magic, tag, bytes, fingerprint), then the
//     payload. A header receive is posted only while a receive from that peer waits
//     (nothing stays parked on an idle link); the host reads the header (device -> host
//     copy), then posts the payload receive straight into the matching buffer, or into
//     a staging buffer when no receive matches yet ("unexpected") or the receive
//     reduces (the NPU Memory then combines, device/npu_memory.h).
// Completion is observed with ACL events recorded after each queued operation.
//
// Costs: one header round per message and, for reducing receives, the Memory's
// device-host round trips. For whole collectives the native engine (algo/native_hccl.h)
// is the fast path; this transport exists so the tuner's algorithms and HCOMM_ALGO
// choices mean the same on an NPU as on a host.
//
// After abort() nothing is destroyed (streams, pair communicators, buffers are leaked):
// queued HCCL work that waits for a peer that never comes would make aclrtSynchronizeStream
// and HcclCommDestroy wait for ever, and the declared API has no abort.
//
// Known limits: any-source receive (probe) is refused; ACL's current device is set once
// per thread that drives the transport (aclrtSetDevice), so user code must not switch a
// thread that hcomm uses to another device.
#pragma once
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "transport/hccl.h"
#include "transport/matcher.h"
#include "transport/transport.h"

namespace hcomm {

class HcclTransport : public Transport {
 public:
  // Every rank of `size` calls together. pairInfos[a * size + b] (a != b) is the root
  // info (HcclGetRootInfo) that rank a made for the pair communicator a -> b.
  HcclTransport(int rank, int size, const std::vector<std::string>& pairInfos, int device);
  ~HcclTransport() override;

  const char* name() const override { return "hccl"; }
  RequestPtr isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) override;
  RequestPtr irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                   uint64_t fingerprint) override;
  bool progress() override;
  void sleepFor(int us) override;
  bool probe(int peer, uint64_t tag, size_t* nbytes) override;
  void abort(const std::string& why) override;
  bool aborted();

 private:
  struct Header {
    uint64_t magic, tag, nbytes, fingerprint;
  };
  struct Block {  // device memory from the pool
    char* dev = nullptr;
    size_t cap = 0;
  };
  struct Inflight {  // queued HCCL work; `event` marks its end on the link's stream
    hccl::AclEvent event = nullptr;
    RequestPtr req;       // completed when the event is reached
    Block block;          // header (sends) or staging (receives), recycled at the end
    PostedRecv recv;      // receives: where a staged payload goes (reducing or late)
    bool deliver = false; // the payload is in `block` and must be copied / combined
    std::string error;    // fails `req` once the payload has been consumed
  };
  struct Staged {  // a message that arrived before its receive: its payload in `block`
    Header hdr;
    Block block;
    hccl::AclEvent event = nullptr;
  };
  struct Peer {
    hccl::Comm outComm = nullptr, inComm = nullptr;  // this rank -> peer, peer -> this rank
    hccl::AclStream outStream = nullptr, inStream = nullptr;
    std::deque<PostedRecv> posted;
    std::deque<Staged> unexpected;
    std::deque<Inflight> sending, receiving;
    bool headerPosted = false;
    Block headerSlot;
    hccl::AclEvent headerEvent = nullptr;
  };

  void createPairComms(const std::vector<std::string>& pairInfos);
  Peer& peerOf(int rank, const char* what);
  void postHeaderRecv(Peer& p);
  void onHeader(int rank, Peer& p);
  void receive(int rank, Peer& p, const Header& h, PostedRecv* match);
  void bindStaged(int rank, Peer& p, Staged s, const PostedRecv& r);
  bool pollQueue(std::deque<Inflight>& q);
  void finish(Inflight& f);
  void failAll(const std::string& why);
  void setDevice() const;
  bool eventDone(hccl::AclEvent e) const;
  void check(int r, const char* what) const;  // HcclResult and aclError alike: 0 is success

  Block takeBlock(size_t bytes);
  hccl::AclEvent takeEvent();
  hccl::AclEvent recordOn(hccl::AclStream s);
  void recycle(Block b);
  void recycle(hccl::AclEvent e);

  const HcclLibrary* lib_;
  int rank_, size_, device_;
  std::vector<Peer> peers_;  // by rank; peers_[rank_] unused
  std::recursive_mutex mu_;
  std::string aborted_;
  // pools: handed out and taken back, freed only by the destructor
  std::vector<Block> freeBlocks_, allBlocks_;
  std::vector<hccl::AclEvent> freeEvents_, allEvents_;
};

}  // namespace hcomm
