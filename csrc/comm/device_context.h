// A communicator's state for calls whose buffers are on one CUDA device: the device
// Memory its algorithms use (on a stream of the communicator's own), the routes to every
// rank through transports that reach device memory (cuda_ipc on this host, host staging
// to other hosts), and the events that order a call with the caller's stream.
//
// Ordering, as users of NCCL expect: at submission an event is recorded on the caller's
// stream and the call starts on the device once that event is reached (work the caller
// queued before, e.g. the kernel producing the input, is visible to it). The host thread
// that runs the call waits for that event, not the caller's thread, so an async call
// returns at once. When the call ends, an event recorded on the communicator's stream
// after its last device work lets Work.wait_stream() make any stream wait for the
// result without blocking the host (streamWaitFor).
#pragma once
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "algo/links.h"
#include "topo/native_cost.h"
#include "transport/cuda_api.h"

namespace hcomm {

struct CudaRuntime;
class CudaMemory;
class NcclTransport;

// What a device call decides engine-or-hcomm with (NCCL on CUDA buffers, HCCL on NPU
// buffers), captured when it is submitted (Communicator::nativeChoice): its kind and
// size, whether "native" was asked for, whether the planner chose freely, and the
// planned algorithm's predicted seconds.
struct NativeChoice {
  CollKind kind = CollKind::NONE;
  size_t bytes = 0;
  bool native = false, automatic = false;
  double hcommSeconds = 0;
};

class DeviceContext : public std::enable_shared_from_this<DeviceContext> {
 public:
  DeviceContext(int device, std::shared_ptr<const std::vector<Route>> routes);
  virtual ~DeviceContext();

  int device() const { return device_; }
  virtual const Memory& memory() const;
  // At submission: refuses a call this kind of device cannot run yet (npu_context.h).
  virtual void admit(bool p2p) { (void)p2p; }
  const std::shared_ptr<const std::vector<Route>>& routes() const { return routes_; }

  cuda::Stream stream() const { return stream_; }
  // NCCL for this communicator's device calls (comm/device_nccl.cc): set up at the first
  // device collective when every rank has a GPU of its own and NCCL loads; `transport`
  // null otherwise, with the reason in `why`. `cost` prices NCCL's own collectives
  // (timed when it was set up); `routes`, when set, are the collectives' routes with
  // NCCL point to point where HCOMM_NCCL_P2P prefers it.
  struct Nccl {
    std::shared_ptr<NcclTransport> transport;
    std::string why;
    NativeCost cost;
    std::shared_ptr<const std::vector<Route>> routes;
  };
  NcclTransport* nccl() const { return nccl_.transport.get(); }
  const std::string& ncclWhy() const { return nccl_.why; }
  const NativeCost& ncclCost() const { return nccl_.cost; }
  bool ncclTried() const { return ncclTried_; }
  void setNccl(Nccl n) {
    nccl_ = std::move(n);
    ncclTried_ = true;
  }
  // The routes of a call: a collective's go over NCCL point to point where chosen, a
  // point-to-point call's never (its peer may have posted before NCCL was set up).
  const std::shared_ptr<const std::vector<Route>>& routes(bool collective) const {
    return collective && nccl_.routes ? nccl_.routes : routes_;
  }
  std::atomic<uint64_t> nativeCalls{0};  // collectives run whole by NCCL (for tests and reports)

  // An event recorded now on `stream` (the caller's).
  virtual std::shared_ptr<CUevent_st> record(void* stream);
  // Blocks this host thread until `e` is reached; TimeoutError after `deadline`.
  virtual void waitHost(CUevent_st* e, std::chrono::steady_clock::time_point deadline) const;
  // An event recorded on the communicator's stream after everything queued on it.
  virtual std::shared_ptr<CUevent_st> recordDone();
  // Makes `stream` wait for `e` on the device (returns at once).
  virtual void streamWait(void* stream, CUevent_st* e) const;
  // Makes `stream` wait for `work` without blocking this thread: when the work is done,
  // for its end event (`done`, set before it finished); while it is still running, for
  // a host function queued on `stream` that returns when the work completes (the
  // algorithms are host-driven, so their end is a host event; the stream, not the
  // caller, blocks on it).
  virtual void streamWaitFor(void* stream, const std::shared_ptr<class Work>& work,
                             const std::shared_ptr<std::shared_ptr<CUevent_st>>& done);

 protected:
  // For another kind of device (device/npu_context.h): no CUDA runtime is touched; the
  // subclass brings its memory, events and routes.
  DeviceContext(int device, std::nullptr_t);
  void setRoutes(std::shared_ptr<const std::vector<Route>> r) { routes_ = std::move(r); }

 private:
  void check(int err, const char* what) const;

  int device_;
  const CudaRuntime* rt_;
  cuda::Stream stream_ = nullptr;
  std::unique_ptr<CudaMemory> memory_;
  std::shared_ptr<const std::vector<Route>> routes_;
  std::mutex mu_;
  std::vector<cuda::Event> free_, all_;
  Nccl nccl_;
  bool ncclTried_ = false;
};

}  // namespace hcomm
