// Calls on device memory: the per-communicator DeviceContext, whose routes go through
// the world's device transports (made on the first call with device buffers by
// ensureDeviceTransports, comm/world.cc).
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
    Transport* t = (*device_->routes())[r].transport;
    out.push_back(r == rank_ ? "self" : t->name());
  }
  return out;
}

std::string Communicator::deviceEngine() {
  std::lock_guard<std::mutex> lock(deviceMu_);
  if (!device_ || !device_->ncclTried()) return "";
  if (asNpu(device_.get())) return "hccl";
  return device_->nccl() ? "nccl" : "hcomm: " + device_->ncclWhy();
}

DeviceCall Communicator::placeOnDevice(uint64_t flightId) {
  const Placement& where = currentPlacement();
  if (!where.onDevice()) return DeviceCall();
  DeviceCall dev;
  dev.ctx = where.npu ? npuContext(where.device) : deviceContext(where.device);
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

namespace {

constexpr int kNcclSetupChannel = 240;  // above every algorithm's channels

struct NcclOffer {  // what one rank brings to the NCCL set-up
  char loaded = 0;
  char gpu[127] = {0};  // "<host>|<PCI bus id>"
};

}  // namespace

void Communicator::setupNccl(DeviceContext& ctx, uint64_t tagBase, std::chrono::steady_clock::time_point deadline) {
  // Every rank of the call runs this at the same point (the first device collective),
  // so the exchange below is collective over the host routes, on a channel of its own.
  NcclOffer mine;
  std::string why;
  if (envStr("HCOMM_NCCL", "1") == "0") {
    why = "HCOMM_NCCL=0";
  } else {
    try {
      loadNccl();
      mine.loaded = 1;
    } catch (const Error& e) {
      why = e.what();
    }
  }
  char bus[64] = {0};
  loadCudaRuntime().api.DeviceGetPCIBusId(bus, sizeof bus, ctx.device());
  std::snprintf(mine.gpu, sizeof mine.gpu, "%s|%s", world_->machineIds[world_->rank].c_str(), bus);
  std::vector<NcclOffer> all(size_);
  Links host(rank_, size_, linkRoutes_, tagBase + kNcclSetupChannel, 0, DataType::U8, ReduceOp::SUM, deadline,
             world_->policy, [] { return std::string("NCCL set-up for device calls"); });
  if (size_ > 1) algo::allgathervRing(host, &mine, all.data(), std::vector<size_t>(size_, sizeof(NcclOffer)));
  else all[0] = mine;
  std::set<std::string> seen;
  for (int r = 0; r < size_ && why.empty(); ++r) {
    if (!all[r].loaded) why = "rank " + std::to_string(r) + " could not load NCCL";
    else if (!seen.insert(all[r].gpu).second)
      why = "two ranks share GPU " + std::string(all[r].gpu) + " (NCCL needs a GPU per rank; cuda_ipc serves them)";
  }
  if (!why.empty()) {
    ctx.setNccl(nullptr, why);
    return;
  }
  std::string uid(nccl::kUniqueIdBytes, '\0');
  if (rank_ == 0) uid = ncclNewUniqueId();
  if (size_ > 1) algo::broadcastBinomial(host, &uid[0], uid.size(), 0, uid.size());
  ctx.setNccl(std::make_shared<NcclTransport>(rank_, size_, uid, ctx.device(), timeoutSec_), "");
}

bool Communicator::runOnNccl(const Links& l, bool native, bool automatic,
                             const std::function<void(NcclTransport&, void*)>& run) {
  if (l.memory().device() < 0) return false;
  std::shared_ptr<DeviceContext> ctx;
  {
    std::lock_guard<std::mutex> lock(deviceMu_);
    ctx = device_;
  }
  NcclTransport* nc = ctx ? ctx->nccl() : nullptr;
  if (!nc) {
    if (native) throw Error("algorithm 'native' on device buffers needs NCCL: " + (ctx ? ctx->ncclWhy() : ""));
    return false;
  }
  if (!native && !(automatic && !deterministicMode())) return false;
  run(*nc, ctx->stream());
  nc->synchronize(ctx->stream(), timeoutSec_);
  return true;
}

bool Communicator::automaticPick(const std::string& requested, const char* collective) const {
  // Host calls never ask (they pay nothing here); a bad HCOMM_ALGO entry raises where a
  // plan reads it, not here.
  if (!currentPlacement().onDevice()) return false;
  return (requested.empty() || requested == "auto") && algoFromEnv(collective, false).empty();
}

}  // namespace hcomm
