// Calls on device memory: the per-communicator DeviceContext, whose routes go through
// the world's device transports (made on the first call with device buffers by
// ensureDeviceTransports, comm/world.cc). NCCL, set up at the first device collective,
// is comm/device_nccl.cc; HCCL for NPU buffers is comm/npu_call.cc.
#include <cstdio>
#include <set>

#include "algo/algorithms.h"
#include "comm/device_context.h"
#include "comm/engine.h"
#include "device/npu_context.h"
#include "common/param.h"
#include "topo/policy.h"
#include "topo/topology.h"
#include "transport/cuda_runtime.h"
#include "transport/nccl.h"

namespace hcomm {

std::shared_ptr<DeviceContext> Communicator::deviceContext(int device) {
  std::lock_guard<std::mutex> lock(deviceMu_);
  if (device_) {
    if (device_->device() != device || asNpu(device_.get()))
      throw Error("this communicator's calls use " + std::string(device_->memory().name()) + ", not cuda:" +
                  std::to_string(device) + " (one device per rank)");
    return device_;
  }
  World& w = *world_;
  ensureDeviceTransports(w, device, timeoutSec_);
  auto routes = std::make_shared<std::vector<Route>>();
  for (int wr : worldRanks_) {
    Route r;
    r.peer = wr;
    r.transport = w.route(wr, MemKind::DEVICE);
    if (wr != w.rank && !r.transport)
      throw Error("rank " + std::to_string(&wr - worldRanks_.data()) + " cannot be reached with device buffers: " +
                  w.unreachable(wr, MemKind::DEVICE));
    routes->push_back(r);
  }
  device_ = std::make_shared<DeviceContext>(device, std::move(routes));
  return device_;
}

int Communicator::boundDevice() const {
  if (!world_) return -1;
  std::lock_guard<std::mutex> lock(world_->deviceMu);
  return world_->device;
}

std::vector<std::string> Communicator::deviceTransports() {
  std::lock_guard<std::mutex> lock(deviceMu_);
  std::vector<std::string> out;
  if (!device_) return out;
  for (int r = 0; r < size_; ++r) {
    Transport* t = (*device_->routes(true))[r].transport;  // the collectives' (NCCL p2p where chosen)
    out.push_back(r == rank_ ? "self" : t->name());
  }
  return out;
}

DeviceCall Communicator::placeOnDevice(uint64_t flightId) {
  const Placement& where = currentPlacement();
  if (!where.onDevice()) return DeviceCall();
  DeviceCall dev;
  dev.ctx = where.npu ? npuContext(where.device) : deviceContext(where.device);
  dev.ready = dev.ctx->record(where.stream);
  dev.done = std::make_shared<std::shared_ptr<CUevent_st>>();
  flight_->placed(flightId, where.npu ? "npu" : "cuda", where.device, where.stream);
  return dev;
}

void Communicator::armStreamWait(const DeviceCall& dev, const WorkPtr& work) {
  std::shared_ptr<DeviceContext> ctx = dev.ctx;
  auto done = dev.done;
  std::weak_ptr<Work> weak = work;
  work->setStreamWait([ctx, done, weak](void* stream) {
    if (auto w = weak.lock()) ctx->streamWaitFor(stream, w, done);
  });
}

void Communicator::finishOnDevice(const DeviceCall& dev, Work&) {
  dev.ctx->memory().synchronize();
  *dev.done = dev.ctx->recordDone();  // before finish(): read by streamWaitFor after it
}

}  // namespace hcomm
