// Host staging: device buffers to and from ranks on other hosts, through pinned host
// memory and the transport that reaches them (tcp, or MPI when it is not CUDA-aware).
//
// A message is cut into pieces of HCOMM_STAGING_PIECE_BYTES (default 1 MiB). The sender
// copies piece k device -> pinned host on its copy stream and, when that copy is done,
// sends it with the host transport under the message's tag; up to HCOMM_STAGING_PIECES
// pieces per message are in flight, so the device copies overlap the wire. The receiver
// posts host receives for the pieces in order (the host transport keeps (peer, tag)
// order), and copies each arrived piece pinned -> device into the destination, or, for
// a reducing receive, into a device piece that hcomm's device kernels combine with the
// source operand (reductions stay on the device).
//
// Both sides cut the same size the same way, so a piece needs no header; a size or
// collective mismatch fails at the host transport's first piece with its usual message.
// Sends to one peer go out message by message (pieces of two messages never interleave
// under one tag). A send completes when its last piece is on the wire, a receive when its
// last piece is in device memory.
#pragma once
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "transport/cuda_api.h"
#include "transport/cuda_events.h"
#include "transport/transport.h"

namespace hcomm {

struct CudaRuntime;
struct DeviceKernels;

class StagingTransport : public Transport {
 public:
  // `host` reaches the remote ranks and outlives this transport; `device` is this rank's.
  StagingTransport(Transport* host, int device, double timeoutSec);
  ~StagingTransport() override;

  const char* name() const override { return "staging"; }
  std::string via() const override { return std::string("staging/") + host_->name(); }
  // Device memory, to the ranks its host transport reaches with host memory.
  bool canConnect(int peer, MemKind mem) const override {
    return mem == MemKind::DEVICE && host_->canConnect(peer, MemKind::HOST);
  }
  Transport* host() const { return host_; }
  RequestPtr isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) override;
  RequestPtr irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                   uint64_t fingerprint) override;
  bool progress() override;
  void sleepFor(int us) override { host_->sleepFor(us); }
  bool probe(int peer, uint64_t tag, size_t* nbytes) override { return host_->probe(peer, tag, nbytes); }
  void abort(const std::string& why) override;
  std::string peerFailure(int peer) override;  // its own abort, else the host transport's word

 private:
  struct Piece {  // one piece in flight
    size_t offset = 0, len = 0;
    char* pinned = nullptr;
    std::shared_ptr<char> device;  // reducing receives: the piece on the device
    cuda::Event event = nullptr;   // the device copy (send: D2H; receive: H2D/reduce)
    RequestPtr wire;               // the host transport's send or receive
    bool copied = false;           // sends: the D2H copy is done and the piece is on the wire
  };
  struct Msg {
    RequestPtr req;
    char* dev = nullptr;  // the device buffer (a send's source or a receive's destination)
    bool reducing = false;
    ReduceSpec spec;
    size_t next = 0;      // bytes handed to pieces so far
    std::deque<Piece> pieces;
  };

  bool pumpSend(int peer, std::deque<Msg>& q);
  bool pumpRecv(std::deque<Msg>& q);
  char* takePinned();
  std::shared_ptr<char> devicePiece();
  void recycle(Piece& p);
  void check(int err, const char* what) const;
  void failAll(const std::string& why);

  Transport* host_;
  const CudaRuntime* rt_;
  const DeviceKernels* kernels_;
  int device_;
  size_t pieceBytes_, depth_;
  cuda::Stream d2h_ = nullptr, h2d_ = nullptr;
  std::map<int, std::deque<Msg>> sends_;                        // by peer, in order
  std::map<std::pair<int, uint64_t>, std::deque<Msg>> recvs_;   // by (peer, tag), in order
  std::recursive_mutex mu_;
  std::string aborted_;
  std::vector<char*> freePinned_, allPinned_;
  std::vector<char*> freeDevice_, allDevice_;
  CudaEventPool events_;  // its events outlive the work that reaches them (streams synchronised first)
};

}  // namespace hcomm
