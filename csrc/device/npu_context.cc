#include "device/npu_context.h"

#include <pthread.h>

#include <future>
#include <thread>

#include "comm/work.h"
#include "device/npu_memory.h"
#include "transport/hccl.h"
#include "transport/hccl_transport.h"

namespace hcomm {

namespace {

CUevent_st* opaque(hccl::AclEvent e) { return static_cast<CUevent_st*>(e); }
hccl::AclEvent aclEvent(CUevent_st* e) { return static_cast<hccl::AclEvent>(e); }

}  // namespace

NpuContext* asNpu(DeviceContext* ctx) { return dynamic_cast<NpuContext*>(ctx); }

NpuContext::NpuContext(int device) : DeviceContext(device, nullptr), lib_(&loadHccl()) {
  check(lib_->api.AclrtSetDevice(device), "aclrtSetDevice");
  check(lib_->api.AclrtCreateStream(&stream_), "aclrtCreateStream");
  memory_.reset(new NpuMemory(device, stream_));
  // NCCL never serves NPU buffers: mark it decided so the engine does not try it.
  setNccl(Nccl{nullptr, "npu buffers: HCCL serves them", {}, nullptr});
}

NpuContext::~NpuContext() {
  stopReporter();  // its callbacks wait for Works, which every path finishes
  if (p2p_ && p2p_->aborted()) {
    // The communicator failed (a timeout, a peer gone): a collective may still be queued
    // on these streams, waiting for a peer that will not come, and destroying HCCL or
    // syncing the stream would wait for it. Leaked on purpose, as the transport does.
    new std::shared_ptr<HcclComm>(std::move(hccl_));
    memory_.release();
    return;
  }
  p2p_.reset();
  hccl_.reset();
  memory_.reset();
  lib_->api.AclrtSynchronizeStream(stream_);
  for (hccl::AclEvent e : all_) lib_->api.AclrtDestroyEvent(e);
  lib_->api.AclrtDestroyStream(stream_);
}

const Memory& NpuContext::memory() const { return *memory_; }

void NpuContext::check(int err, const char* what) const {
  if (err != 0)
    throw Error("npu:" + std::to_string(device()) + ": " + what + " failed with aclError " + std::to_string(err));
}

void NpuContext::setHccl(std::shared_ptr<HcclComm> native, std::shared_ptr<HcclTransport> p2p, int size,
                         NativeCost cost) {
  hcclCost_ = cost;
  auto routes = std::make_shared<std::vector<Route>>();
  for (int r = 0; r < size; ++r) routes->push_back(Route{p2p.get(), r});
  hccl_ = std::move(native);
  p2p_ = std::move(p2p);
  setRoutes(std::move(routes));
}

void NpuContext::admit(bool p2p) {
  if (!p2p) {
    collectiveSubmitted_ = true;
    return;
  }
  if (!collectiveSubmitted_)
    throw Error("the first call with NPU buffers on this communicator must be a collective: "
                "HCCL's communicators are made by all its ranks together (make, e.g., an allreduce on NPU "
                "buffers first)");
}

std::shared_ptr<CUevent_st> NpuContext::record(void* stream) {
  hccl::AclEvent e = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!free_.empty()) {
      e = free_.back();
      free_.pop_back();
    }
  }
  if (!e) {
    check(lib_->api.AclrtSetDevice(device()), "aclrtSetDevice");
    check(lib_->api.AclrtCreateEvent(&e), "aclrtCreateEvent");
    std::lock_guard<std::mutex> lock(mu_);
    all_.push_back(e);
  }
  // A null stream is the current device's default stream: make sure it is this NPU.
  if (!stream) check(lib_->api.AclrtSetDevice(device()), "aclrtSetDevice");
  check(lib_->api.AclrtRecordEvent(e, stream), "aclrtRecordEvent");
  std::weak_ptr<DeviceContext> self = weak_from_this();
  return std::shared_ptr<CUevent_st>(opaque(e), [self](CUevent_st* ev) {
    if (auto ctx = std::static_pointer_cast<NpuContext>(self.lock())) {
      std::lock_guard<std::mutex> lock(ctx->mu_);
      ctx->free_.push_back(aclEvent(ev));
    }
  });
}

std::shared_ptr<CUevent_st> NpuContext::recordDone() { return record(stream_); }

void NpuContext::waitHost(CUevent_st* e, std::chrono::steady_clock::time_point deadline) const {
  for (int idle = 0;; ++idle) {
    int status = hccl::kEventNotReady;
    check(lib_->api.AclrtQueryEventStatus(aclEvent(e), &status), "aclrtQueryEventStatus");
    if (status == hccl::kEventComplete) return;
    if (std::chrono::steady_clock::now() > deadline)
      throw TimeoutError("the caller's NPU stream did not reach this call within the timeout (HCOMM_TIMEOUT): "
                         "the work queued on it before the call has not finished");
    if (idle > 200) std::this_thread::sleep_for(std::chrono::microseconds(50));
    else std::this_thread::yield();
  }
}

void NpuContext::streamWait(void* stream, CUevent_st* e) const {
  check(lib_->api.AclrtStreamWaitEvent(stream, aclEvent(e)), "aclrtStreamWaitEvent");
}

void NpuContext::streamWaitFor(void* stream, const std::shared_ptr<Work>& work,
                               const std::shared_ptr<std::shared_ptr<CUevent_st>>& done) {
  if (!work->isCompleted() && bindToReporter(stream)) {
    // The stream waits in a blocking callback until the call completes (its results are
    // on the device by then: finishOnDevice synchronised this context's stream first).
    void* held = holdWork(work);
    int err = lib_->api.AclrtLaunchCallback(waitHeldWork, held, hccl::kCallbackBlock, stream);
    if (err != 0) dropHeldWork(held);
    check(err, "aclrtLaunchCallback (stream wait for a running call)");
    return;
  }
  try {
    work->wait(-1);  // done already, or the stream is another thread's (see the header)
  } catch (const std::exception&) {
    return;
  }
  if (*done) streamWait(stream, done->get());
}

bool NpuContext::bindToReporter(void* stream) {
  std::lock_guard<std::mutex> lock(reportMu_);
  if (bound_.count(stream)) return true;
  if (foreign_.count(stream)) return false;
  if (!reporter_.joinable()) {
    std::promise<uint64_t> id;
    std::future<uint64_t> got = id.get_future();
    reporter_ = std::thread([lib = lib_, dev = device(), stop = stop_, &id] {
      lib->api.AclrtSetDevice(dev);
      id.set_value(uint64_t(pthread_self()));
      // Runs callbacks as they come; wakes every 100 ms to see whether to stop.
      while (!stop->load()) {
        int err = lib->api.AclrtProcessReport(100);
        if (err != 0 && err != hccl::kCallbackTimeout && !stop->load())
          std::this_thread::sleep_for(std::chrono::milliseconds(10));  // e.g. no stream bound yet
      }
    });
    reporterId_ = got.get();
  }
  int err = lib_->api.AclrtSubscribeReport(reporterId_, stream);
  if (err == hccl::kRepeatSubscribe) {
    foreign_.insert(stream);
    return false;
  }
  check(err, "aclrtSubscribeReport");
  bound_.insert(stream);
  return true;
}

void NpuContext::stopReporter() {
  std::lock_guard<std::mutex> lock(reportMu_);
  if (!reporter_.joinable()) return;
  stop_->store(true);
  if (reporter_.get_id() == std::this_thread::get_id()) reporter_.detach();  // see stop_
  else reporter_.join();
  for (void* s : bound_) lib_->api.AclrtUnSubscribeReport(reporterId_, s);  // a stream freed since: ignored
  bound_.clear();
}

}  // namespace hcomm
