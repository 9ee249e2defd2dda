#include "comm/device_context.h"

#include <thread>

#include "comm/work.h"
#include "device/cuda_memory.h"
#include "transport/nccl.h"
#include "transport/cuda_runtime.h"

namespace hcomm {

DeviceContext::DeviceContext(int device, std::shared_ptr<const std::vector<Route>> routes)
    : device_(device), rt_(&loadCudaRuntime()), routes_(std::move(routes)) {
  check(rt_->api.SetDevice(device_), "cudaSetDevice");
  check(rt_->api.StreamCreateWithFlags(&stream_, cuda::kStreamNonBlocking), "cudaStreamCreateWithFlags");
  memory_.reset(new CudaMemory(device_, stream_));
}

DeviceContext::DeviceContext(int device, std::nullptr_t) : device_(device), rt_(nullptr) {}

DeviceContext::~DeviceContext() {
  nccl_ = Nccl();  // the NCCL transport goes before the stream its work was ordered on
  memory_.reset();
  if (!rt_) return;  // another kind of device (the protected constructor)
  rt_->api.StreamSynchronize(stream_);
  for (cuda::Event e : all_) rt_->api.EventDestroy(e);
  rt_->api.StreamDestroy(stream_);
}

const Memory& DeviceContext::memory() const { return *memory_; }

void DeviceContext::check(int err, const char* what) const {
  if (err == 0) return;
  throw Error("cuda:" + std::to_string(device_) + ": " + what + " failed: " +
              rt_->api.GetErrorString(cuda::Error(err)));
}

std::shared_ptr<CUevent_st> DeviceContext::record(void* stream) {
  cuda::Event e = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!free_.empty()) {
      e = free_.back();
      free_.pop_back();
    }
  }
  if (!e) {
    check(rt_->api.SetDevice(device_), "cudaSetDevice");
    check(rt_->api.EventCreateWithFlags(&e, cuda::kEventDisableTiming), "cudaEventCreateWithFlags");
    std::lock_guard<std::mutex> lock(mu_);
    all_.push_back(e);
  }
  check(rt_->api.EventRecord(e, static_cast<cuda::Stream>(stream)), "cudaEventRecord");
  std::weak_ptr<DeviceContext> self = weak_from_this();
  return std::shared_ptr<CUevent_st>(e, [self](CUevent_st* ev) {
    if (auto ctx = self.lock()) {
      std::lock_guard<std::mutex> lock(ctx->mu_);
      ctx->free_.push_back(ev);
    }
  });
}

std::shared_ptr<CUevent_st> DeviceContext::recordDone() { return record(stream_); }

void DeviceContext::waitHost(CUevent_st* e, std::chrono::steady_clock::time_point deadline) const {
  // Polled rather than cudaEventSynchronize, so that the call's timeout holds.
  for (int idle = 0;; ++idle) {
    cuda::Error err = rt_->api.EventQuery(e);
    if (err == cuda::cudaSuccess) return;
    if (err != cuda::cudaErrorNotReady) check(err, "cudaEventQuery");
    if (std::chrono::steady_clock::now() > deadline)
      throw TimeoutError("the caller's stream did not reach this call within the timeout (HCOMM_TIMEOUT): "
                         "the work queued on it before the call has not finished");
    if (idle > 200) std::this_thread::sleep_for(std::chrono::microseconds(50));
    else std::this_thread::yield();
  }
}

void DeviceContext::streamWait(void* stream, CUevent_st* e) const {
  check(rt_->api.StreamWaitEvent(static_cast<cuda::Stream>(stream), e, 0), "cudaStreamWaitEvent");
}

void DeviceContext::streamWaitFor(void* stream, const std::shared_ptr<Work>& work,
                                  const std::shared_ptr<std::shared_ptr<CUevent_st>>& done) {
  if (work->isCompleted()) {
    if (*done) streamWait(stream, done->get());
    return;
  }
  void* held = holdWork(work);
  cuda::Error err = rt_->api.LaunchHostFunc(static_cast<cuda::Stream>(stream), waitHeldWork, held);
  if (err != cuda::cudaSuccess) dropHeldWork(held);
  check(err, "cudaLaunchHostFunc (stream wait for a running call)");
}

}  // namespace hcomm
