// Calls on Ascend NPU memory (device/npu_context.h): the communicator's NPU context,
// HCCL made collectively at its first NPU collective, and the native HCCL engine. The
// NPU counterpart of device_call.cc, kept apart so neither grows the other's branches.
//
// HCCL set-up, at the first NPU collective of a communicator (every rank makes the same
// calls in the same order, so every rank is here for the same call): over the
// communicator's host routes, on a channel of its own, every rank publishes the root
// infos it made (HcclGetRootInfo) — rank 0 the one for the whole communicator, each
// rank a one per pair communicator a -> b — and every rank then builds the native
// HcclComm and the HcclTransport from them. The user never sees a root info. A split
// communicator does the same over its own ranks at its own first NPU collective.
#include <cstring>

#include "algo/algorithms.h"
#include "algo/native_hccl.h"
#include "comm/device_context.h"
#include "comm/engine.h"
#include "device/npu_context.h"
#include "topo/topology.h"
#include "transport/hccl.h"
#include "transport/hccl_transport.h"

namespace hcomm {

namespace {

constexpr int kHcclSetupChannel = 241;  // above every algorithm's channels (NCCL's is 240)
constexpr int kHcclCostChannel = 242;  // and 246 (comm/device_price.cc)

}  // namespace

std::shared_ptr<DeviceContext> Communicator::npuContext(int device) {
  std::lock_guard<std::mutex> lock(deviceMu_);
  if (device_) {
    if (!asNpu(device_.get()) || device_->device() != device)
      throw Error("this communicator's calls use " + std::string(device_->memory().name()) + ", not npu:" +
                  std::to_string(device) + " (one device per rank)");
    return device_;
  }
  device_ = std::make_shared<NpuContext>(device);
  return device_;
}

void Communicator::prepareNpu(DeviceContext& ctx, uint64_t tagBase, std::chrono::steady_clock::time_point deadline) {
  NpuContext* npu = asNpu(&ctx);
  if (!npu || npu->hcclReady()) return;
  constexpr size_t kInfo = sizeof(hccl::RootInfo);
  size_t n = size_t(size_);
  // Slot b of rank a's block: its root info for the pair a -> b; slot a: rank 0's for
  // the whole communicator (unused elsewhere).
  std::vector<char> mine(n * kInfo, 0), all(n * n * kInfo);
  for (int b = 0; b < size_; ++b) {
    if (b == rank_ && rank_ != 0) continue;
    std::string info = HcclComm::newRootInfo();
    std::memcpy(&mine[size_t(b) * kInfo], info.data(), kInfo);
  }
  Links host(rank_, size_, linkRoutes_, tagBase + kHcclSetupChannel, 0, DataType::U8, ReduceOp::SUM, deadline,
             world_->policy, [] { return std::string("HCCL set-up for NPU calls"); });
  if (size_ > 1) algo::allgathervRing(host, mine.data(), all.data(), std::vector<size_t>(n, mine.size()));
  else all = mine;
  std::vector<std::string> pairs(n * n);
  for (size_t i = 0; i < n * n; ++i) pairs[i].assign(&all[i * kInfo], kInfo);
  auto native = std::make_shared<HcclComm>(rank_, size_, pairs[0], ctx.device());
  auto p2p = std::make_shared<HcclTransport>(rank_, size_, pairs, ctx.device());
  // The price of HCCL's own collectives, measured as NCCL's are (comm/device_price.cc):
  // an int32 sum, which every HCCL version reduces and any bit pattern is valid for.
  const Memory& mem = npu->memory();
  void* stream = npu->aclStream();
  NativeCost cost = priceDeviceEngine("HCOMM_HCCL_COST", mem, tagBase, kHcclCostChannel, deadline,
                                      [&](void* buf, size_t bytes) {
                                        algo::allreduceHccl(*native, mem, buf, buf, bytes / 4, DataType::I32,
                                                            ReduceOp::SUM, 1.0, stream, timeoutSec_);
                                      });
  // On the world's list, so that an error anywhere aborts it like every transport
  // (routes never pick it: no HCOMM_TRANSPORT order names it; NPU calls reach it through
  // the NPU context's own routes).
  world_->add(p2p);
  npu->setHccl(std::move(native), std::move(p2p), size_, cost);
}

bool Communicator::runOnHccl(Links& l, const NativeChoice& c, const HcclCall& call) {
  if (l.memory().device() < 0) return false;
  std::shared_ptr<DeviceContext> ctx;
  {
    std::lock_guard<std::mutex> lock(deviceMu_);
    ctx = device_;
  }
  NpuContext* npu = asNpu(ctx.get());
  if (!npu) return false;
  // As for NCCL: native when asked, or when the call made no choice of its own and
  // HCCL's measured price beats the planned algorithm's (deterministic mode keeps
  // hcomm's rank-order algorithms). Every rank decides alike: the price is agreed.
  bool priced = c.automatic && !deterministicMode() && nativeWins(npu->hcclCost(), c.kind, c.bytes, size_, c.hcommSeconds);
  if (!c.native && !priced) return false;
  l.ranNatively("native hccl");
  runHcclCall(call, *npu->hccl(), npu->memory(), npu->aclStream(), timeoutSec_);
  ctx->nativeCalls.fetch_add(1, std::memory_order_relaxed);
  return true;
}

}  // namespace hcomm
