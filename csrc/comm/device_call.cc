// Calls on device memory: the per-communicator DeviceContext and the world's device
// transports, made on the first call with device buffers. Purely local (no collective
// step): the cuda_ipc transport introduces itself to each peer on first use of the pair.
// NCCL, set up at the first device collective, is comm/device_nccl.cc.
#include "comm/device_context.h"
#include "comm/engine.h"
#include "topo/topology.h"
#include "transport/cuda_runtime.h"
#include "transport/cuda_ipc.h"
#include "transport/shm.h"
#include "transport/staging.h"
#include "transport/tcp.h"

namespace hcomm {

namespace {

// The world's transports for `device`, made once; one device per rank.
void ensureDeviceTransports(World& w, int device, double timeoutSec) {
  std::lock_guard<std::mutex> lock(w.deviceMu);
  if (w.device >= 0 && w.device != device)
    throw Error("this rank's calls use cuda:" + std::to_string(w.device) + ", not cuda:" + std::to_string(device) +
                ": hcomm binds one device per rank (set the device before the first call, as with NCCL)");
  if (w.device >= 0) return;
  std::vector<int> local;
  for (int r = 0; r < w.size; ++r)
    if (w.hostIds[r] == w.hostIds[w.rank]) local.push_back(r);
  if (local.size() > 1) {
    w.cudaIpc = std::make_shared<CudaIpcTransport>(w.rank, local, w.shm.get(), device, timeoutSec);
    w.deviceTransports.push_back(w.cudaIpc);
  }
  // Other hosts: through pinned host memory over the transport that reaches them.
  Transport* remote = w.tcp.get();
  if (w.mpi && w.mpiInter) remote = w.mpi.get();
  if (remote) {
    w.staging = std::make_shared<StagingTransport>(remote, device, timeoutSec);
    w.deviceTransports.push_back(w.staging);
  }
  w.device = device;
}

}  // namespace

std::shared_ptr<DeviceContext> Communicator::deviceContext(int device) {
  std::lock_guard<std::mutex> lock(deviceMu_);
  if (device_) {
    if (device_->device() != device)
      throw Error("this communicator's calls use cuda:" + std::to_string(device_->device()) + ", not cuda:" +
                  std::to_string(device) + " (one device per rank)");
    return device_;
  }
  World& w = *world_;
  ensureDeviceTransports(w, device, timeoutSec_);
  auto routes = std::make_shared<std::vector<Route>>();
  for (int wr : worldRanks_) {
    Route r;
    r.peer = wr;
    bool local = w.hostIds[wr] == w.hostIds[w.rank];
    r.transport = local ? w.cudaIpc.get() : w.staging.get();
    if (wr != w.rank && !r.transport)
      throw Error("rank " + std::to_string(&wr - worldRanks_.data()) + " cannot be reached with device buffers");
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
  dev.ctx = deviceContext(where.device);
  dev.ready = dev.ctx->record(where.stream);
  dev.done = std::make_shared<std::shared_ptr<CUevent_st>>();
  flight_->placed(flightId, where.device, where.stream);
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
