// Communicator: a group of ranks, the transports that reach them, and one entry point
// per collective. Calls are numbered in the order they are made (every rank must make
// the same calls in the same order); the number goes into every message tag, so a
// fast rank's next collective never mixes with a slow rank's current one.
//
// Blocking calls run on the caller's thread (with the GIL released by the binding);
// async calls run, in order, on the communicator's progress thread, started on first
// use. A failed call aborts the transports (as NCCL aborts a communicator): every
// later call raises with the first error, and buffers the failed call was using are
// never touched again.
#pragma once
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "algo/links.h"
#include "comm/flight_recorder.h"
#include "comm/placement.h"
#include "comm/work.h"
#include "comm/world.h"
#include "common/fingerprint.h"
#include "common/types.h"
#include "reduce/host_scratch.h"
#include "topo/native_cost.h"
#include "topo/tuner.h"
#include "topo/tuner_drift.h"

namespace hcomm {

class ShmTransport;     // transport/shm.h
class MpiComm;          // transport/mpi.h
class DeviceContext;    // comm/device_context.h
class NcclTransport;    // transport/nccl.h
struct NativeChoice;    // comm/device_context.h
struct DeviceCall;      // comm/engine.h
struct HcclCall;       // algo/native_hccl.h

struct CollectiveInfo {  // names a call in errors and logs
  std::string op;
  CollKind kind = CollKind::NONE;
  DataType dtype = DataType::U8;
  size_t count = 0;
  int root = -1;
  std::string algo;
  ReduceOp reduceOp = ReduceOp::SUM;
  int64_t tag = -1;  // point to point: the user's tag (root is then the peer, -1 any)
};

class Communicator {
 public:
  static std::shared_ptr<Communicator> create(int rank, int size, const std::string& uniqueId, double timeoutSec);
  ~Communicator();

  int rank() const { return rank_; }
  int size() const { return size_; }
  uint32_t id() const { return id_; }
  bool closed() const { return closed_; }
  double timeout() const { return timeoutSec_; }
  void setTimeout(double sec) { timeoutSec_ = sec; }
  std::vector<int> worldRanks() const { return worldRanks_; }
  // The CUDA device this rank's device calls use; -1 before the first one.
  int boundDevice() const;
  // The transport a device collective's messages take to each rank ("cuda_ipc",
  // "staging", "nccl", "mpi" when MPI is CUDA-aware, "self"); empty before this
  // communicator's first device call.
  std::vector<std::string> deviceTransports();
  // What runs this communicator's device collectives: "nccl", "hccl", or "hcomm: <why not
  // NCCL>"; "" before its first device collective.
  std::string deviceEngine();
  // The device of this communicator's device calls (explain() describes them), as a
  // Placement: device -1 before the first one.
  Placement devicePlacement();
  // explain(): `d` as a device call would decide it, the device engine's own collective
  // (NCCL's or HCCL's) priced as measured at its set-up; unchanged before one is set up.
  // And how many device collectives the engine ran whole.
  void priceDeviceNative(Decision& d, CollKind kind, size_t bytes);
  uint64_t deviceNativeCalls();
  // The transport host buffers take to each rank ("shm", "tcp", "mpi").
  std::vector<std::string> transports() const;
  std::string lastAlgorithm() const { return lastAlgo_; }
  std::string flightRecordJson() { return flight_->json(rank_, size_, id_); }
  // Writes the flight record into `dir`; returns the file's path.
  std::string dumpFlightRecord(const std::string& dir) { return flight_->dump(dir, rank_, size_, id_); }

  // Every rank calls; ranks with equal color form a new communicator ordered by
  // (key, rank). A negative color opts out and gets nullptr.
  std::shared_ptr<Communicator> split(int color, int key);
  // Every live rank not in `exclude` (communicator ranks) calls, after an error or
  // proactively: they agree on who is left (ranks that died, before or during the call,
  // are dropped) and get a new communicator over them, ranks renumbered densely in the
  // old order, with its own transports, topology and tuner. Raises naming the ranks it
  // could not hear from within the timeout. This communicator is left as it was
  // (close it). Semantics and the NCCL / torch comparison: docs/recovery.md; shrink.cc.
  std::shared_ptr<Communicator> shrink(const std::vector<int>& exclude);
  // Fails every in-flight and later call of this communicator's world with `why`, and
  // tells the peers (their waits on this rank fail at once with the same cause).
  void abort(const std::string& why);
  // "ip:port" of this rank's rescue listener ("" for one rank), the one listener a world
  // keeps open after init (see World::rescueFd).
  std::string rescueAddress() const {
    return world_ && world_->size > 1 ? world_->rescueAddrs[world_->rank] : std::string();
  }
  void close();

  WorkPtr allreduce(const void* in, void* out, size_t count, DataType dt, ReduceOp op, double premul,
                    const std::string& algo, bool async);
  WorkPtr reduce(const void* in, void* out, size_t count, DataType dt, ReduceOp op, double premul, int root,
                 const std::string& algo, bool async);
  WorkPtr broadcast(const void* in, void* out, size_t count, DataType dt, int root, const std::string& algo,
                    bool async);
  // algo: "" / "auto" (the tuner), "ring", "hierarchical" or "native".
  WorkPtr allgatherv(const void* in, void* out, std::vector<size_t> counts, DataType dt, bool async,
                     const std::string& algo = "");
  WorkPtr reduceScatterv(const void* in, void* out, std::vector<size_t> counts, DataType dt, ReduceOp op,
                         double premul, bool async, const std::string& algo = "");
  WorkPtr alltoallv(const void* in, std::vector<size_t> sendCounts, std::vector<size_t> sendDispls, void* out,
                    std::vector<size_t> recvCounts, std::vector<size_t> recvDispls, DataType dt, bool async,
                    const std::string& algo = "");
  WorkPtr gather(const void* in, void* out, size_t count, DataType dt, int root, bool async);
  WorkPtr scatter(const void* in, void* out, size_t count, DataType dt, int root, bool async);
  WorkPtr barrier(bool async);
  WorkPtr send(const void* buf, size_t nbytes, int peer, int64_t tag, bool async);
  // peer < 0: from any source (Work::source says which).
  WorkPtr recv(void* buf, size_t nbytes, int peer, int64_t tag, bool async);

  // The algorithm the size rule (or HCOMM_ALGO, or `requested`) picks.
  std::string chooseAllreduce(size_t bytes, const std::string& requested) const;
  // The tuner's table for this communicator: every candidate, its predicted time, the choice.
  Decision planAllreduce(size_t bytes, const std::string& requested, Fold fold = Fold::PLAIN) const;
  Decision planReduceScatter(size_t bytes, const std::string& requested, Fold fold = Fold::PLAIN) const;
  Decision planReduce(size_t bytes, int root, const std::string& requested, Fold fold = Fold::PLAIN) const;
  // collective: "gather" or "scatter"; bytes: one rank's block.
  Decision planGather(const std::string& collective, size_t bytes, int root, const std::string& requested) const;
  // The same for broadcast (binomial, hierarchical, native) and allgather(v) (ring,
  // hierarchical, native); bytes is the whole message (allgather: the gathered total).
  Decision planBroadcast(size_t bytes, int root, const std::string& requested) const;
  Decision planAllgather(size_t bytes, const std::string& requested) const;
  // alltoall(v): bytes one rank sends; even: equal blocks in rank order (Bruck needs them).
  Decision planAlltoall(size_t bytes, bool even, const std::string& requested) const;
  std::shared_ptr<const Topology> topology() const { return world_ ? world_->topology : nullptr; }
  // The tuner this communicator plans with: the job's, or its own after a drift re-fit
  // (comm/drift.cc); null during init. drift(): its measurements and re-fit events.
  std::shared_ptr<const Tuner> tuner() const;
  const DriftMonitor& drift() const { return *drift_; }

 private:
  Communicator(std::shared_ptr<World> world, std::vector<int> worldRanks, uint32_t id, double timeoutSec);
  // Wraps a new communicator so that it is never destroyed on its own progress thread.
  static std::shared_ptr<Communicator> own(Communicator* c);
  // create() for the members of a shrink: fileRanks[r] places new rank r in HCOMM_TOPO_FILE.
  static std::shared_ptr<Communicator> createWorld(int rank, int size, const std::string& uniqueId,
                                                   double timeoutSec, const std::vector<int>& fileRanks);
  bool onWorkerThread() const;
  // Runs body(Links&, Work&) as call number `seq` (or as point-to-point): here when
  // blocking, after whatever was queued before; on the progress thread when async.
  // A template so that a blocking call builds no std::function.
  template <class Body>
  WorkPtr submit(CollectiveInfo info, bool p2p, uint64_t tagBase, Body&& body, bool async);
  template <class Body>
  void execute(const CollectiveInfo& info, uint64_t seq, uint64_t tagBase, uint64_t flightId, Body& body,
               Work& work, std::chrono::steady_clock::time_point start, const DeviceCall& dev);
  // For a call made with device buffers (comm/placement.h): its device state and the
  // event on the caller's stream it starts after; empty for host calls (device_call.cc).
  DeviceCall placeOnDevice(uint64_t flightId);
  // Work.wait_stream() for a device call (any time after submission), and the end of
  // its body: the device work drained and the end event recorded.
  void armStreamWait(const DeviceCall& dev, const WorkPtr& work);
  // NCCL for device calls (comm/device_nccl.cc): set up collectively at the first device
  // collective (its allreduce timed for the tuner, its point to point routed where
  // HCOMM_NCCL_P2P prefers). runOnNccl runs a call's whole collective with NCCL when its
  // buffers are on a device with an NCCL engine and the call asked for "native", or made
  // no choice of its own and NCCL's measured price beats the planned algorithm's
  // (deterministic mode aside). False: the caller runs hcomm's algorithm.
  void setupNccl(DeviceContext& ctx, uint64_t tagBase, std::chrono::steady_clock::time_point deadline);
  NativeChoice nativeChoice(CollKind kind, size_t bytes, const Candidate& pick, const std::string& requested) const;
  bool runOnNccl(Links& l, const NativeChoice& c, const std::function<void(NcclTransport&, void*)>& run);
  // NPU calls (npu_call.cc): HCCL made (and priced) at the first NPU collective; native
  // HCCL decided as runOnNccl decides NCCL.
  void prepareNpu(DeviceContext& ctx, uint64_t tagBase, std::chrono::steady_clock::time_point deadline);
  bool runOnHccl(Links& l, const NativeChoice& c, const HcclCall& call);
  // The price of a device engine's own collectives (comm/device_price.cc), the one path
  // of both set-ups: `allreduce(buf, bytes)` runs one whole engine allreduce in `mem` and
  // returns when it is done; `costVar` (HCOMM_NCCL_COST, HCOMM_HCCL_COST) replaces the
  // timing. Collective over the host routes on channels `channel` and `channel` + 4 of
  // the call's tags; a setting a rank cannot read raises on every rank.
  NativeCost priceDeviceEngine(const std::string& costVar, const Memory& mem, uint64_t tagBase, int channel,
                               std::chrono::steady_clock::time_point deadline,
                               const std::function<void(void*, size_t)>& allreduce);
  void finishOnDevice(const DeviceCall& dev, Work& work);
  void waitTurn();  // blocks until nothing queued or running, then marks a call running
  void endTurn();
  void workerLoop();
  // `ran`: what ran the call (Links::ran), when known; shown in place of the plan.
  std::string describe(const CollectiveInfo& info, uint64_t seq, const std::string& ran = "") const;
  // After a timeout: how far every rank this one can see got on this communicator
  // ("rank 2 did not reach #17: its last was broadcast #16, completed").
  std::string progressReport(uint64_t seq) const;
  // The error when an earlier call desynced unnoticed (a message it left unreceived), or "".
  std::string strayMessage(uint64_t tagBase) const;
  // Every rank's progress on this communicator as far as this rank can learn it;
  // (*asked)[r]: 1 when rank r was asked over tcp and did not answer, 2 when it did, 3
  // when it gave up instead ((*gone)[r] says why: its abort notice or closed connection).
  std::vector<CallProgress> gatherProgress(std::vector<char>* asked, std::vector<std::string>* gone) const;
  // The algorithm for a call: plan()'s choice with its segment resolved, remembered per
  // (collective, size, root).
  template <class Plan>
  Candidate pick(CollKind kind, size_t bytes, int root, const std::string& requested, const Plan& plan);
  void checkUsable() const;
  void checkRoot(int root, const char* what) const;
  // The state for calls on `device` (device_call.cc), made on first use; throws
  // InvalidArgument-worthy Errors for a second device or a peer no transport reaches.
  std::shared_ptr<DeviceContext> deviceContext(int device);
  std::shared_ptr<DeviceContext> npuContext(int device);  // the same for an NPU (npu_call.cc)

  std::shared_ptr<World> world_;
  std::vector<int> worldRanks_;  // communicator rank -> world rank
  std::vector<Route> routes_;
  std::shared_ptr<const std::vector<Route>> linkRoutes_;  // the same, shared with every Links
  // Host calls' Memory: scratch kept between calls (reduce/host_scratch.h).
  std::unique_ptr<HostScratchMemory> hostScratch_ = std::make_unique<HostScratchMemory>();
  ShmTransport* board_ = nullptr;  // the world's shm transport, which holds the progress board
  int boardSlot_ = -1;  // this communicator's entry on the board
  std::shared_ptr<MpiComm> mpi_;  // mirrors this communicator in MPI, for algo "native"; may be null
  int rank_ = 0, size_ = 1;
  uint32_t id_ = 0;
  double timeoutSec_ = 300;
  bool closed_ = false;
  uint64_t nextSeq_ = 0;
  uint32_t splits_ = 0;
  uint32_t shrinks_ = 0;
  std::string lastAlgo_;
  std::shared_ptr<FlightRecorder> flight_;
  std::mutex deviceMu_;
  std::shared_ptr<DeviceContext> device_;
  // pick()'s memory: (collective, bytes, root) -> choice, valid while HCOMM_ALGO and
  // HCOMM_NATIVE_BYTES keep the values below.
  // Drift (comm/drift.cc): records a planned call; at a checkpoint agrees with the other
  // ranks, re-fits and returns true when the plans must be made again.
  bool noteDrift(CollKind kind, size_t bytes, int rootSlot, const Candidate& c);
  std::shared_ptr<DriftMonitor> drift_ = std::make_shared<DriftMonitor>(DriftSettings::fromEnv());
  std::shared_ptr<const Tuner> refitTuner_;  // guarded by planMu_
  bool inDrift_ = false;                     // the checkpoint's own allreduce is not tracked
  mutable std::mutex planMu_;
  mutable std::map<std::tuple<int, size_t, int, bool>, Candidate> plans_;
  mutable std::string planEnv_, planNative_;

  // Async point-to-point calls are posted at once (a queued send must not wait behind
  // another send's receive) and completed by the progress thread as their requests finish.
  struct PendingP2p {
    WorkPtr work;
    RequestPtr req;   // null for an any-source receive not yet matched
    void* buf = nullptr;
    size_t nbytes = 0;
    uint64_t tag = 0;
    std::chrono::steady_clock::time_point deadline;
    // An unmatched any-source receive asks next whether any rank can still send
    // (noSenderLeft): 100 ms after its post and every 100 ms then, as Links' waits do.
    std::chrono::steady_clock::time_point askGone;
    CollectiveInfo info;
    uint64_t flightId = 0;
  };
  WorkPtr postP2p(CollectiveInfo info, RequestPtr req, void* buf, size_t nbytes, uint64_t tag);
  bool pollP2p();  // true when anything completed
  // An any-source receive not yet matched: posts it to the first rank with a message;
  // true when its Work ended instead (a message too big, or nobody left to send).
  bool matchAnySource(PendingP2p& p, std::chrono::steady_clock::time_point now);
  void finishP2p(PendingP2p& p);  // its request is done: complete the Work
  void failP2p(PendingP2p& p, const std::string& why);  // record the failure, then complete the Work with it

  // progress thread
  std::deque<PendingP2p> p2p_;
  std::mutex qmu_;
  std::condition_variable qcv_;
  std::deque<std::function<void()>> queue_;
  bool running_ = false;  // a call is executing (on either thread)
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace hcomm
