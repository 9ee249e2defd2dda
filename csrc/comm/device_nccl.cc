// NCCL inside the Communicator, for device buffers, used two ways:
//   - as the engine of whole collectives (algo/native_nccl.h), when asked for with
//     "native" / HCOMM_ALGO=native or when its price, measured here at set-up, beats the
//     algorithm the tuner planned (topo/native_cost.h);
//   - as a point-to-point transport under hcomm's own algorithms (transport/nccl.h):
//     a collective's messages to a peer go over ncclSend/ncclRecv where HCOMM_NCCL_P2P
//     prefers it (by default: peers on other hosts, which would otherwise take host
//     staging; cuda_ipc stays the transport inside a host).
// Set-up is collective: every rank of the communicator runs it at its first device
// collective, on a channel of that call's tags, over the host routes.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <set>

#include "algo/algorithms.h"
#include "algo/native_nccl.h"
#include "comm/device_context.h"
#include "comm/engine.h"
#include "device/npu_context.h"
#include "common/param.h"
#include "topo/policy.h"
#include "transport/cuda_runtime.h"
#include "transport/nccl.h"

namespace hcomm {

namespace {

constexpr int kNcclSetupChannel = 240;  // above every algorithm's channels
constexpr int kNcclCostChannel = 241;  // and 245 (comm/device_price.cc)

struct NcclOffer {  // what one rank brings to the NCCL set-up
  char loaded = 0;
  char p2p = 'a';       // HCOMM_NCCL_P2P: 'a'uto, '1' every peer, '0' none
  char badEnv = 0;      // an HCOMM_NCCL_* setting there cannot be read
  char gpu[125] = {0};  // "<machine>|<PCI bus id>"
};

char p2pMode() {
  std::string v = envStr("HCOMM_NCCL_P2P", "auto");
  if (v == "auto") return 'a';
  if (v == "1" || v == "0") return v[0];
  throw Error("HCOMM_NCCL_P2P must be auto, 1 or 0, not '" + v + "'");
}

// Why NCCL cannot serve these ranks ("" when it can). Throws on every rank alike when a
// rank could not read its settings (`mine`: this rank's reason) or the ranks disagree on
// one that must be the same everywhere.
std::string refusal(const std::vector<NcclOffer>& all, const std::string& mine) {
  for (size_t r = 0; r < all.size(); ++r)
    if (all[r].badEnv)
      throw Error(!mine.empty() ? mine
                                : "rank " + std::to_string(r) + " could not read its HCOMM_NCCL_* settings (its error says which)");
  std::set<std::string> seen;
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].p2p != all[0].p2p)
      throw Error("HCOMM_NCCL_P2P differs between ranks: rank 0 has '" + std::string(1, all[0].p2p) + "', rank " +
                  std::to_string(r) + " '" + std::string(1, all[r].p2p) + "' (a = auto); set it the same everywhere");
    if (!all[r].loaded) return "rank " + std::to_string(r) + " could not load NCCL";
    if (!seen.insert(all[r].gpu).second)
      return "two ranks share GPU " + std::string(all[r].gpu) + " (NCCL needs a GPU per rank; cuda_ipc serves them)";
  }
  return "";
}

// The collectives' routes: NCCL point to point to the peers `mode` prefers it for.
std::shared_ptr<const std::vector<Route>> ncclRoutes(const std::vector<Route>& device, NcclTransport* nc, char mode,
                                                     const World& w, const std::vector<int>& worldRanks) {
  if (mode == '0') return nullptr;
  auto routes = std::make_shared<std::vector<Route>>(device);
  bool any = false;
  for (size_t r = 0; r < routes->size(); ++r) {
    int wr = worldRanks[r];
    if (wr == w.rank) continue;
    bool remote = w.hostIds[wr] != w.hostIds[w.rank];
    if (mode == '1' || remote) {
      (*routes)[r] = Route{nc, static_cast<int>(r)};  // NCCL's ranks are the communicator's
      any = true;
    }
  }
  return any ? routes : nullptr;
}

}  // namespace

void Communicator::setupNccl(DeviceContext& ctx, uint64_t tagBase, std::chrono::steady_clock::time_point deadline) {
  // Settings are read before the exchange and any error raised after it, on every rank:
  // a rank throwing alone would leave the others waiting for it until the timeout.
  NcclOffer mine;
  std::string badEnv;
  try {
    mine.p2p = p2pMode();
  } catch (const Error& e) {
    badEnv = e.what();
    mine.badEnv = 1;
  }
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
  std::string refused = refusal(all, badEnv);
  if (why.empty()) why = refused;
  if (!why.empty()) {
    ctx.setNccl(DeviceContext::Nccl{nullptr, why, NativeCost(), nullptr});
    return;
  }
  std::string uid(nccl::kUniqueIdBytes, '\0');
  if (rank_ == 0) uid = ncclNewUniqueId();
  if (size_ > 1) algo::broadcastBinomial(host, &uid[0], uid.size(), 0, uid.size());
  DeviceContext::Nccl n;
  n.transport = std::make_shared<NcclTransport>(rank_, size_, uid, ctx.device(), timeoutSec_);
  // The price of NCCL's allreduce on the links that exist (comm/device_price.cc).
  NcclTransport& nc = *n.transport;
  void* stream = ctx.stream();
  n.cost = priceDeviceEngine("HCOMM_NCCL_COST", ctx.memory(), tagBase, kNcclCostChannel, deadline,
                             [&nc, stream, this](void* buf, size_t bytes) {
                               // u8 sum: any bit pattern is a valid input
                               algo::allreduceNccl(nc, buf, buf, bytes, DataType::U8, ReduceOp::SUM, 1.0, stream);
                               nc.synchronize(stream, timeoutSec_);
                             });
  n.routes = ncclRoutes(*ctx.routes(), n.transport.get(), mine.p2p, *world_, worldRanks_);
  // On the world's list, so that an error anywhere aborts NCCL's pending work too (routes
  // never pick it from there: no HCOMM_TRANSPORT order names it).
  world_->add(n.transport);
  ctx.setNccl(std::move(n));
}

NativeChoice Communicator::nativeChoice(CollKind kind, size_t bytes, const Candidate& pick,
                                    const std::string& requested) const {
  NativeChoice c;
  c.kind = kind;
  c.bytes = bytes;
  c.native = pick.algo == "native";
  c.hcommSeconds = pick.seconds;
  // Host calls never ask (they pay nothing here); a bad HCOMM_ALGO entry raises where a
  // plan reads it, not here.
  c.automatic = currentPlacement().onDevice() && (requested.empty() || requested == "auto") &&
                algoFromEnv(collKindName(kind), false).empty();
  return c;
}

bool Communicator::runOnNccl(Links& l, const NativeChoice& c,
                             const std::function<void(NcclTransport&, void*)>& run) {
  if (l.memory().device() < 0) return false;
  std::shared_ptr<DeviceContext> ctx;
  {
    std::lock_guard<std::mutex> lock(deviceMu_);
    ctx = device_;
  }
  NcclTransport* nc = ctx ? ctx->nccl() : nullptr;
  if (!nc) {
    if (c.native) throw Error("algorithm 'native' on device buffers needs NCCL: " + (ctx ? ctx->ncclWhy() : ""));
    return false;
  }
  // Decided here, in call order after the set-up, so that every rank decides alike.
  bool priced = c.automatic && !deterministicMode() &&
                nativeWins(ctx->ncclCost(), c.kind, c.bytes, size_, c.hcommSeconds);
  if (!c.native && !priced) return false;
  l.ranNatively("native nccl");  // before it runs, so that its errors say so
  run(*nc, ctx->stream());
  nc->synchronize(ctx->stream(), timeoutSec_);
  ctx->nativeCalls.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void Communicator::priceDeviceNative(Decision& d, CollKind kind, size_t bytes) {
  std::shared_ptr<DeviceContext> ctx;
  {
    std::lock_guard<std::mutex> lock(deviceMu_);
    ctx = device_;
  }
  if (!ctx || deterministicMode()) return;
  if (NpuContext* npu = asNpu(ctx.get())) {  // HCCL's own, priced the same way (npu_call.cc)
    if (npu->hcclReady()) priceNative(d, npu->hcclCost(), kind, bytes, size_, "hccl");
    return;
  }
  if (ctx->nccl()) priceNative(d, ctx->ncclCost(), kind, bytes, size_, "nccl");
}

Placement Communicator::devicePlacement() {
  std::lock_guard<std::mutex> lock(deviceMu_);
  Placement p;
  if (!device_) return p;
  p.device = device_->device();
  p.npu = asNpu(device_.get()) != nullptr;
  return p;
}

uint64_t Communicator::deviceNativeCalls() {
  std::lock_guard<std::mutex> lock(deviceMu_);
  return device_ ? device_->nativeCalls.load(std::memory_order_relaxed) : 0;
}

std::string Communicator::deviceEngine() {
  std::lock_guard<std::mutex> lock(deviceMu_);
  if (!device_ || !device_->ncclTried()) return "";
  if (asNpu(device_.get())) return "hccl";
  return device_->nccl() ? "nccl" : "hcomm: " + device_->ncclWhy();
}

}  // namespace hcomm
