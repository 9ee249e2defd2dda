// CUDA IPC transport: point to point between ranks of one host, device memory to device
// memory, for any number of ranks per GPU (NCCL refuses two ranks on one GPU; this is
// how a one-GPU machine runs multi-rank GPU collectives) or one rank per GPU.
//
// Each rank keeps, for every local peer, a receive area of HCOMM_CUDA_IPC_SLOTS slots of
// HCOMM_CUDA_IPC_SLOT_BYTES in its own device memory, and one interprocess event per
// peer it sends to. On first use of a pair the two ranks exchange the IPC handles of
// their areas and events ("hello"), and open the other's. Control messages (hello, data,
// credit; fixed size) travel over the host transport that reaches the peer (shm), so
// matching by (peer, tag) and the progress board stay where they are.
//
// A message is cut into slot-sized pieces. Per piece the sender, holding a credit for a
// free slot in the receiver's area, queues a device-to-device copy into that slot on its
// send stream, records its interprocess event after it, and sends a "data" control
// message (tag, size, offset, slot, fingerprint). The receiver makes its receive stream
// wait for that event (the most recent record covers this piece), copies the slot into
// the destination (or reduces it with the destination's source operand, with hcomm's
// device kernels: f16/bf16 combined in float32, rounded once per step), records an event,
// and, when the event is reached, returns the slot with a "credit" message. So each
// piece costs two device copies and one host round of control; pieces of one message are
// in flight in up to SLOTS slots at once. A message that arrives before its receive is
// posted is moved out of the slots into a device staging buffer, so a sender never waits
// on a receive the peer has not posted (the transport contract every algorithm assumes).
//
// A send request completes when its last piece's copy is done (the source may be reused);
// a receive when its last piece is in the destination. Abort fails every request.
// Processes only: CUDA cannot open an IPC handle in the process that made it.
#pragma once
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "transport/cuda_api.h"
#include "transport/cuda_events.h"
#include "transport/matcher.h"
#include "transport/transport.h"

namespace hcomm {

struct CudaRuntime;
struct DeviceKernels;

class CudaIpcTransport : public Transport {
 public:
  // localRanks: every rank of this host (this one included), the same on each of them;
  // `host` reaches each of them (shm) and outlives this transport; `device` is this rank's.
  CudaIpcTransport(int rank, std::vector<int> localRanks, Transport* host, int device, double timeoutSec);
  ~CudaIpcTransport() override;

  int device() const { return device_; }
  const char* name() const override { return "cuda_ipc"; }
  // Device memory, to the ranks of this host (this one included: a self route).
  bool canConnect(int peer, MemKind mem) const override {
    return mem == MemKind::DEVICE && peer >= 0 && peer < static_cast<int>(localIndex_.size()) &&
           localIndex_[peer] >= 0;
  }
  RequestPtr isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) override;
  RequestPtr irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                   uint64_t fingerprint) override;
  bool progress() override;
  void sleepFor(int us) override;
  bool probe(int peer, uint64_t tag, size_t* nbytes) override;
  void abort(const std::string& why) override;

  // Control messages: one fixed-size layout, one host tag, in order per pair.
  struct Ctrl;

 private:
  struct OutMsg {  // a send, its pieces handed out one slot at a time
    RequestPtr req;
    const char* src = nullptr;
    size_t next = 0;               // bytes already handed to slots
    cuda::Event done = nullptr;    // recorded after the last piece's copy
  };
  struct Landing {  // a piece being copied (or reduced) out of a slot
    cuda::Event event = nullptr;
    int slot = -1;
    RequestPtr completes;           // the receive this piece finishes, if it is the last
    std::shared_ptr<Unexpected> early;  // or the early message it finishes
    std::shared_ptr<char> hold;     // a staging buffer read until the event is reached
  };
  struct Incoming {  // the message whose pieces are arriving from a peer
    PostedRecv recv;               // when matched to a posted receive
    std::shared_ptr<Unexpected> early;  // else staged here
    std::shared_ptr<char> staging;
    size_t nbytes = 0;
    bool active = false;
  };
  struct Peer {
    int rank = -1;
    bool helloSent = false, helloSeen = false;
    char* inArea = nullptr;        // my memory, the peer writes into it
    cuda::Event outEvent = nullptr;  // mine, recorded after each copy into the peer's area
    char* outArea = nullptr;       // the peer's memory, opened
    cuda::Event peerEvent = nullptr;  // the peer's, opened
    std::vector<char> outFree;     // slots of outArea I may fill (credits)
    std::deque<OutMsg> sending;
    PeerMatch match;
    Incoming incoming;
    std::deque<Landing> landing;
    std::deque<std::pair<RequestPtr, std::shared_ptr<Ctrl>>> ctrlOut;  // host sends in flight
    RequestPtr ctrlIn;
    std::shared_ptr<Ctrl> ctrlInBuf;
    std::vector<std::shared_ptr<char>> keep;  // staging of early messages being delivered
  };

  Peer& peerOf(int rank);
  void sendCtrl(Peer& p, const Ctrl& c);
  void postCtrlRecv(Peer& p);
  void sayHello(Peer& p);
  void onCtrl(Peer& p, const Ctrl& c);
  void onHello(Peer& p, const Ctrl& c);
  void onData(Peer& p, const Ctrl& c);
  void startIncoming(Peer& p, const Ctrl& c);
  void land(Peer& p, const PostedRecv* into, char* dst, const Ctrl& c, bool last);
  void deliverEarly(Peer& p, const PostedRecv& r, const std::shared_ptr<Unexpected>& u);
  bool pumpSends(Peer& p);
  bool pollLanding(Peer& p);
  bool pollCtrl(Peer& p);
  std::shared_ptr<char> stagingFor(size_t bytes);
  void check(int err, const char* what) const;
  void failAll(const std::string& why);

  const CudaRuntime* rt_;
  const DeviceKernels* kernels_;
  int rank_, device_;
  double timeoutSec_;
  Transport* host_;
  size_t slotBytes_, slots_;
  cuda::Stream sendStream_ = nullptr, recvStream_ = nullptr;
  std::vector<Peer> peers_;  // by local index
  std::vector<int> localIndex_;  // world rank -> index in peers_, -1 when not local
  std::recursive_mutex mu_;
  std::string aborted_;
  CudaEventPool events_;  // its events outlive the work that reaches them (streams synchronised first)
  std::vector<std::pair<size_t, char*>> freeStaging_;
  std::vector<char*> allStaging_;
};

}  // namespace hcomm
