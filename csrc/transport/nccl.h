// NCCL's point-to-point calls as a hcomm Transport for device buffers (ncclSend /
// ncclRecv), and the world communicator that NCCL's own collectives run on
// (algo/native_nccl.h). The library loader is transport/nccl_loader.h. The Communicator
// routes device messages here when NCCL is set up and HCOMM_NCCL_P2P prefers it
// (comm/device_call.cc).
//
// The transport. NCCL matches a send with the receive the peer posted in the same
// position, has no tags, and a posted receive blocks its stream (and every later op
// of its communicator) until the peer sends. hcomm's Transport contract is MPI-like:
// matching by (peer, tag), and a receive never holds up a send. So:
//   - every ordered pair of ranks gets its own 2-rank communicator and stream, made by
//     ncclCommSplit from the world communicator (2(n-1) splits at creation), so a
//     receive from rank a never blocks a send to rank b nor a receive from rank c;
//   - every message is a 32-byte header (magic, tag, bytes, fingerprint) and then the
//     payload. A header receive is posted only while a receive from that peer is
//     waiting (no kernel is left parked on an idle link, so cudaDeviceSynchronize in
//     user code cannot hang on hcomm). The host reads the header, then posts the
//     payload receive straight into the matching buffer, or into a staging buffer when
//     the message came first ("unexpected"); a reducing receive stages the payload and
//     combines it with the device kernel table (device/kernels.h).
// The price is one header round per message: fine for the ring and tree algorithms'
// large segments, which is what this path is for; the tuner prices NCCL's own
// collectives against them (topo/native_cost.h). Each
// pair communicator holds NCCL buffers of its own (2(n-1) per rank), and a parked
// receive kernel must run beside other kernels: with CUDA_DEVICE_MAX_CONNECTIONS=1
// (one hardware queue) the GPU may serialise them and this transport can stall.
//
// Stream semantics are torch's: waitFor(s) makes the transport's streams wait for work
// already queued on the caller's stream s; signal(s) makes s wait for the transport's
// matched work in flight (never for a header receive parked on an idle link). Device
// memory is never freed while the transport lives (cudaFree synchronises the whole
// device); staging buffers are reused.
#pragma once
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "transport/cuda_runtime.h"
#include "transport/matcher.h"
#include "transport/nccl_api.h"
#include "transport/nccl_loader.h"
#include "transport/transport.h"

namespace hcomm {

class NcclTransport : public Transport {
 public:
  // Every rank of `size` calls together; uniqueId is ncclNewUniqueId() from one rank.
  NcclTransport(int rank, int size, const std::string& uniqueId, int device, double timeoutSec,
                const std::vector<std::string>& libCandidates = {});
  ~NcclTransport() override;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return device_; }
  int ncclVersion() const { return lib_->version; }

  // For NCCL's own collectives (algo/native_nccl.h): runs `call` under the transport's
  // lock on its device, with the world communicator and the stream to queue on (`stream`,
  // or the transport's collective stream when null). Throws if the transport was aborted.
  void withWorld(void* stream, const std::function<void(nccl::Comm, nccl::Stream)>& call);
  // Throws Error naming the call, NCCL's last error text, this rank and device.
  void check(nccl::Result r, const char* what) const;
  const nccl::Api& api() const { return lib_->api; }

  void waitFor(void* stream);
  void signal(void* stream);
  // Blocks until `stream` (null: every transport stream) is idle; on timeout or an
  // asynchronous NCCL error, aborts the transport and throws.
  void synchronize(void* stream, double timeoutSec);

  const char* name() const override { return "nccl"; }
  RequestPtr isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) override;
  RequestPtr irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                   uint64_t fingerprint) override;
  bool progress() override;
  void sleepFor(int us) override;
  bool probe(int peer, uint64_t tag, size_t* nbytes) override;
  void abort(const std::string& why) override;

 private:
  struct Header {
    uint64_t magic, tag, nbytes, fingerprint;
  };
  struct Slot {  // one header, in pinned host memory and on the device
    char* host = nullptr;
    char* dev = nullptr;
  };
  struct Stage {  // a reusable device staging buffer
    char* dev = nullptr;
    size_t cap = 0;
  };
  struct Inflight {  // queued GPU work; `event` marks its end on the link's stream
    cuda::Event event = nullptr;
    RequestPtr req;  // completed when the event is reached (null: nothing to complete)
    Slot slot;
    Stage stage;
  };
  struct Staged {  // a message whose payload arrived before its receive was posted
    Header hdr;
    Stage stage;
    cuda::Event arrived = nullptr;  // on the inbound stream, after the payload's receive
  };
  struct Peer {
    int rank = -1;
    nccl::Comm outComm = nullptr, inComm = nullptr;  // this rank -> peer, peer -> this rank
    int outPeer = 0, inPeer = 0;                     // the peer's rank inside each pair comm
    cuda::Stream outStream = nullptr, inStream = nullptr;
    // Staged messages are copied / reduced into their receive here, not on inStream:
    // inStream may hold a header receive parked for the peer's next message, and a
    // delivery queued behind it would wait for that message (see deliverStaged).
    cuda::Stream deliverStream = nullptr;
    std::deque<PostedRecv> posted;
    std::deque<Staged> unexpected;
    std::deque<Inflight> sending, receiving, delivering;
    bool headerPosted = false;
    Slot headerSlot;
    cuda::Event headerEvent = nullptr;
  };

  void createPairComms();
  Peer& peerOf(int rank);
  void postHeaderRecv(Peer& p);
  void onHeader(Peer& p);
  void deliverStaged(Peer& p, PostedRecv& r, const Staged& s);
  void receivePayload(Peer& p, PostedRecv* r, const Header& h);
  bool pollQueue(std::deque<Inflight>& q);
  void checkAsyncErrors();
  void failAll(const std::string& why);
  void enqueueReduce(const ReduceSpec& spec, void* dst, const void* staged, size_t nbytes, cuda::Stream s);
  void setDevice() const;
  void nc(nccl::Result r, const char* what, nccl::Comm comm = nullptr) const;
  void cu(cuda::Error e, const char* what) const;

  Slot takeSlot();
  Stage takeStage(size_t bytes);
  cuda::Event takeEvent();
  void recycle(Inflight& f);

  nccl::Stream collStream(void* stream) const;

  const NcclLibrary* lib_;
  const CudaRuntime* rt_;
  int rank_, size_, device_;
  double timeoutSec_;
  nccl::Comm world_ = nullptr;
  cuda::Stream collStream_ = nullptr;
  std::vector<Peer> peers_;  // by rank; peers_[rank_] unused
  std::recursive_mutex mu_;
  std::string aborted_;
  // pools: handed out and taken back, freed only by the destructor
  std::vector<Slot> freeSlots_;
  std::vector<Stage> freeStages_;
  std::vector<cuda::Event> freeEvents_, allEvents_;
  std::vector<void*> hostBlocks_, devBlocks_;
};

}  // namespace hcomm
