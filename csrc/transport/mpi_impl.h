// The MPI side of transport/mpi.h, for the two files that call MPI (transport/mpi.cc,
// algo/native_mpi.cc). Everything else holds MPI objects through the opaque types of
// mpi.h and never includes <mpi.h>.
#pragma once
// The C API only: Open MPI's (deprecated) C++ bindings would need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/types.h"
#include "transport/matcher.h"
#include "transport/mpi.h"

namespace hcomm {

// MPI itself is process-wide state (one MPI_Init per process), so this is the one
// process-wide object of the core: it records whether hcomm initialised MPI (and so must
// finalise it at exit, after Python is gone) and whether MPI calls must be serialised.
class MpiRuntime {
 public:
  // Initialises MPI on first use (MPI_Init_thread asking for MPI_THREAD_MULTIPLE) unless
  // someone else (mpi4py, the user's code) already has. Throws when MPI is finalised.
  static MpiRuntime& instance();
  ~MpiRuntime();

  // Held around every MPI call when MPI granted less than MPI_THREAD_MULTIPLE (the
  // transport's progress and native collectives may run on different threads).
  std::unique_lock<std::mutex> guard() {
    return serialize_ ? std::unique_lock<std::mutex>(mu_) : std::unique_lock<std::mutex>();
  }
  bool serialized() const { return serialize_; }
  int tagUb() const { return tagUb_; }
  // f16 / bf16 have no MPI type: a 2-byte opaque type reduced by hcomm's kernels.
  MPI_Datatype halfType() const { return half_; }
  MPI_Op halfOp(DataType dt, ReduceOp op) const;

 private:
  MpiRuntime();
  bool ownsInit_ = false;
  bool serialize_ = false;
  int tagUb_ = 32767;
  MPI_Datatype half_ = MPI_DATATYPE_NULL;
  MPI_Op halfOps_[2][4] = {};  // [f16, bf16][SUM, PROD, MIN, MAX]
  std::mutex mu_;
};

bool mpiFinalized();
// Throws Error("<what> failed: <MPI's words>") unless rc is MPI_SUCCESS.
void mpiCheck(int rc, const char* what);

// An MPI communicator whose rank i is rank i of the hcomm communicator that holds it.
class MpiComm {
 public:
  explicit MpiComm(MPI_Comm c);  // takes ownership; errors are returned, not fatal
  ~MpiComm();                    // frees it unless MPI is already finalised
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;
  MPI_Comm get() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

// Point to point over MPI. hcomm's 64-bit tags do not fit MPI's, so a message is a
// 32-byte header (tag, size, fingerprint, sequence number to that peer) on MPI tag 0,
// then the payload on an MPI tag made from the sequence number. Headers are matched to
// receives by the shared matcher, as TCP's are; a payload stays inside MPI (its eager
// buffer, or the sender's memory under rendezvous) until its receive is posted, so an
// early message costs no copy here. Payloads travel as pieces of HCOMM_MPI_PIECE_BYTES
// (one MPI message each, same tag, so matched in order). A plain receive posts every
// piece straight into dst; a reducing receive keeps two pieces in flight into two
// cache-sized staging slots and combines each into dst with hcomm::reduce as it lands
// (staging a whole multi-MiB segment would go through DRAM twice).
class MpiTransport : public Transport {
 public:
  MpiTransport(const MpiComm& comm, double timeoutSec);  // duplicates comm
  ~MpiTransport() override;

  const char* name() const override { return "mpi"; }
  // Host memory to every rank of the communicator; device memory too when CUDA-aware.
  bool canConnect(int peer, MemKind mem) const override {
    return peer >= 0 && peer < size_ && (mem == MemKind::HOST || cudaAware_);
  }
  RequestPtr isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) override;
  RequestPtr irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                   uint64_t fingerprint) override;
  bool progress() override;
  void sleepFor(int us) override;
  bool probe(int peer, uint64_t tag, size_t* nbytes) override;
  void abort(const std::string& why) override;
  // Only this rank's abort: MPI without ULFM does not say that a peer died.
  std::string peerFailure(int peer) override;

 private:
  struct Header {
    uint64_t tag, nbytes, fingerprint, seq;
  };
  // One hcomm request in flight: a send (header + payload pieces) or a payload receive.
  struct Op {
    RequestPtr req;  // null: draining a payload nobody may receive (after a mismatch)
    std::vector<MPI_Request> mpi;   // sends, plain receives: all pieces; staged: one per slot
    Header hdr{};                   // a send's header, alive until MPI is done with it
    PostedRecv recv;                // a receive's destination (and reduction)
    // staged receives (reducing, or draining): pieces go through slots of stage
    bool staged = false;
    int peer = -1;
    size_t pieces = 0, posted = 0, landed = 0;
    std::vector<size_t> slotPiece;  // the piece each slot holds
    std::shared_ptr<char> stage;    // in the receive's memory (device memory when CUDA-aware)
  };

  int dataTag(uint64_t seq) const { return 1 + static_cast<int>(seq % static_cast<uint64_t>(tagUb_ - 1)); }
  void postPayload(int peer, const Header& h, PostedRecv r, bool drain);
  void postPiece(Op& op, size_t slot);
  bool finishStaged(Op& op);
  void onHeader(int peer, const Header& h);
  bool pollHeaders();
  bool finish(Op& op);  // true when op is done (its request completed unless aborted)
  void cancel(Op& op);
  void checkPeer(int peer) const;

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  int tagUb_ = 32767;
  size_t piece_;  // HCOMM_MPI_PIECE_BYTES: every rank must use the same
  bool cudaAware_ = false;  // device pointers go to MPI as they are (agreed by every rank)
  double timeoutSec_;
  std::vector<PeerMatch> match_;   // by peer
  std::vector<uint64_t> sendSeq_;  // by peer
  std::deque<std::unique_ptr<Op>> ops_;
  Header inHdr_{};
  MPI_Request hdrReq_ = MPI_REQUEST_NULL;  // always posted: the next header from anyone
  std::string aborted_;
  std::mutex mu_;  // this transport's state; MpiRuntime::guard() is taken inside it
};

}  // namespace hcomm
