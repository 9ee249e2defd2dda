// A communicator's state for calls whose buffers are on one Ascend NPU: the same seam as
// the CUDA DeviceContext (comm/device_context.h), so an NPU call takes the engine's one
// path (Communicator -> algorithm or native engine -> transport) with the NPU's Memory,
// events and routes in place of CUDA's.
//
//   - a stream of its own (aclrtCreateStream) on which the Memory, native HCCL and the
//     call's events run;
//   - ordering with the caller's stream as for CUDA: an ACL event recorded on the
//     caller's stream at submission, waited for (polled, so the call's timeout holds) by
//     the thread that runs the call; an event after the call's last device work, which
//     Work.wait_stream() makes a stream wait for (aclrtStreamWaitEvent). Events travel
//     through the DeviceCall's CUevent_st* slots as opaque handles: only this class ever
//     reads the ones it made;
//   - HCCL, made collectively at the communicator's first NPU collective
//     (comm/npu_call.cc): one communicator over all its ranks for the native engine
//     (priced there, as NCCL is), and the point-to-point HcclTransport (pair
//     communicators) that every route uses.
//
// Work.wait_stream() on a call still running does what CUDA's cudaLaunchHostFunc does
// there: a blocking host callback (aclrtLaunchCallback, ACL_CALLBACK_BLOCK) queued on the
// caller's stream returns when the call completes, so the stream, not the host, waits.
// AscendCL runs a stream's callbacks on the host thread bound to it
// (aclrtSubscribeReport) inside aclrtProcessReport: this context runs one such report
// thread, started at the first wait on a running call, and binds each caller's stream
// to it once. A stream already bound to another thread (the caller's own callbacks:
// ACL_ERROR_REPEAT_SUBSCRIBE) cannot be, and there the wait blocks the host until the
// call ends, then makes the stream wait for the end event.
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "comm/device_context.h"
#include "transport/hccl_api.h"

namespace hcomm {

class HcclComm;
class HcclTransport;
class NpuMemory;
struct HcclLibrary;

class NpuContext final : public DeviceContext {
 public:
  // Throws Error naming the missing library (libascendcl.so / libhccl.so) or the device.
  explicit NpuContext(int device);
  ~NpuContext() override;

  const Memory& memory() const override;
  hccl::AclStream aclStream() const { return stream_; }

  // HCCL is made at the first NPU collective, so a point-to-point call before any is
  // refused (InvalidArgument-worthy, nothing moved, the communicator stays usable).
  void admit(bool p2p) override;

  std::shared_ptr<CUevent_st> record(void* stream) override;
  void waitHost(CUevent_st* e, std::chrono::steady_clock::time_point deadline) const override;
  std::shared_ptr<CUevent_st> recordDone() override;
  void streamWait(void* stream, CUevent_st* e) const override;
  void streamWaitFor(void* stream, const std::shared_ptr<Work>& work,
                     const std::shared_ptr<std::shared_ptr<CUevent_st>>& done) override;

  // HCCL (null before the first NPU collective).
  HcclComm* hccl() const { return hccl_.get(); }
  bool hcclReady() const { return hccl_ != nullptr; }
  // Every route goes through `p2p`, whose ranks are the communicator's. `cost` prices
  // native HCCL's collectives (timed at set-up, comm/device_price.cc).
  void setHccl(std::shared_ptr<HcclComm> native, std::shared_ptr<HcclTransport> p2p, int size, NativeCost cost);
  const NativeCost& hcclCost() const { return hcclCost_; }

 private:
  void check(int err, const char* what) const;
  // Binds `stream` to the report thread (started on first use); false when it is bound
  // to another thread already.
  bool bindToReporter(void* stream);
  void stopReporter();

  const HcclLibrary* lib_;
  hccl::AclStream stream_ = nullptr;
  std::unique_ptr<NpuMemory> memory_;
  std::shared_ptr<HcclComm> hccl_;
  std::shared_ptr<HcclTransport> p2p_;
  NativeCost hcclCost_;
  std::mutex mu_;
  std::vector<hccl::AclEvent> free_, all_;
  bool collectiveSubmitted_ = false;  // calls are submitted in order, one thread at a time
  // The report thread that runs the stream callbacks of running calls' waits.
  std::mutex reportMu_;
  std::thread reporter_;
  uint64_t reporterId_ = 0;                 // its pthread id, as aclrtSubscribeReport takes it
  // Shared with the thread, which touches nothing else of this context: the last Work a
  // callback held can be what destroys it, on that very thread.
  std::shared_ptr<std::atomic<bool>> stop_ = std::make_shared<std::atomic<bool>>(false);
  std::set<void*> bound_, foreign_;         // streams bound to it; streams bound elsewhere
};

// The NPU context behind `ctx`, or null when it is a CUDA one.
NpuContext* asNpu(DeviceContext* ctx);

}  // namespace hcomm
