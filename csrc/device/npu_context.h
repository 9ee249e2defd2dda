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
//     (comm/npu_call.cc): one communicator over all its ranks for the native engine, and
//     the point-to-point HcclTransport (pair communicators) that every route uses.
//
// Differences from the CUDA context: Work.wait_stream() on a call still running blocks
// the calling host thread until it ends (an ACL host callback on a stream needs a
// report thread, aclrtSubscribeReport, that hcomm does not run), then makes the stream
// wait for the end event.
#pragma once
#include <memory>
#include <mutex>
#include <string>
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
  // Every route goes through `p2p`, whose ranks are the communicator's.
  void setHccl(std::shared_ptr<HcclComm> native, std::shared_ptr<HcclTransport> p2p, int size);

 private:
  void check(int err, const char* what) const;

  const HcclLibrary* lib_;
  hccl::AclStream stream_ = nullptr;
  std::unique_ptr<NpuMemory> memory_;
  std::shared_ptr<HcclComm> hccl_;
  std::shared_ptr<HcclTransport> p2p_;
  std::mutex mu_;
  std::vector<hccl::AclEvent> free_, all_;
  bool collectiveSubmitted_ = false;  // calls are submitted in order, one thread at a time
};

// The NPU context behind `ctx`, or null when it is a CUDA one.
NpuContext* asNpu(DeviceContext* ctx);

}  // namespace hcomm
