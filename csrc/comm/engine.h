// The execution engine's templates (engine.cc has the rest): a call becomes a Links for
// its tag range and runs here when blocking or on the progress thread when async. In a
// header because the collectives and point-to-point files instantiate them with their
// own bodies (a blocking call builds no std::function).
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>

#include "comm/communicator.h"
#include "comm/device_context.h"
#include "comm/placement.h"
#include "common/log.h"
#include "common/param.h"
#include "transport/shm.h"

namespace hcomm {

// Tag layout: [63..40] communicator id | [39] point-to-point | [38..8] call number or
// user tag | [7..0] channel.
constexpr uint64_t kP2pBit = 1ull << 39;
constexpr int64_t kMaxUserTag = (1ll << 31) - 1;

inline uint64_t collTag(uint32_t id, uint64_t seq) { return (uint64_t(id) << 40) | ((seq & 0x7fffffffull) << 8); }
inline uint64_t p2pTag(uint32_t id, int64_t tag) { return (uint64_t(id) << 40) | kP2pBit | (uint64_t(tag) << 8); }

// A call on device memory: its communicator's device state and the event on the
// caller's stream that the call starts after (device_context.h). Empty for host calls.
struct DeviceCall {
  std::shared_ptr<DeviceContext> ctx;
  std::shared_ptr<CUevent_st> ready;
  std::shared_ptr<std::shared_ptr<CUevent_st>> done;  // recorded when the call ends
  explicit operator bool() const { return ctx != nullptr; }
};

template <class Body>
void Communicator::execute(const CollectiveInfo& info, uint64_t seq, uint64_t tagBase, uint64_t flightId, Body& body,
                           Work& work, std::chrono::steady_clock::time_point start, const DeviceCall& dev) {
  World& world = *world_;
  std::string error;
  bool collective = info.kind != CollKind::NONE;
  // The call's Links, once made: it knows what ran (Links::engine, Links::over), for
  // errors and the record. In two parts, `what` (an engine, or the algorithm) ran `over`
  // transports, so that recording it allocates nothing on the usual path.
  std::optional<Links> made;
  auto ranParts = [&](const char** what, std::string* over) {
    *what = "";
    if (!made) return;
    if (!collective) *over = info.root >= 0 ? made->via(info.root) : "any source";
    else if (info.algo == "native" && !dev && size_ > 1) *what = "native mpi";
    else if (made->engine()) *what = made->engine();
    else if (size_ == 1) *what = "local (1 rank)";
    else {
      *what = info.algo.c_str();
      *over = made->over();
    }
  };
  auto ran = [&] {
    const char* what;
    std::string over;
    ranParts(&what, &over);
    return over.empty() ? std::string(what) : std::string(what) + (*what ? " over " : "over ") + over;
  };
  flight_->started(flightId, start);
  if (collective) board_->noteStarted(boardSlot_, seq, static_cast<int>(info.kind));
  if (logLevel() >= LogLevel::TRACE) logLine(LogLevel::TRACE, world.rank, "start " + describe(info, seq));
  try {
    ReduceOp op = info.reduceOp;
    if (op == ReduceOp::AVG || op == ReduceOp::PREMUL_SUM) op = ReduceOp::SUM;
    uint64_t fp = !collective ? 0
                  : makeFingerprint(info.kind, info.dtype, info.reduceOp, info.root,
                                    info.kind == CollKind::ALLTOALL ? 0 : info.count);  // alltoallv counts differ
    auto deadline = start +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(timeoutSec_));
    auto what = [&] { return describe(info, seq, ran()); };  // only an error needs the words
    const WaitPolicy& policy = onWorkerThread() ? world.backgroundPolicy : world.policy;
    if (dev) dev.ctx->waitHost(dev.ready.get(), deadline);
    if (dev && collective && !dev.ctx->ncclTried()) setupNccl(*dev.ctx, tagBase, deadline);
    if (dev && collective) prepareNpu(*dev.ctx, tagBase, deadline);  // npu_call.cc
    Links& links = made.emplace(rank_, size_, dev ? dev.ctx->routes(collective) : linkRoutes_, tagBase, fp,
                                info.dtype, op, deadline, policy, [&what] { return what(); },
                                dev ? dev.ctx->memory() : static_cast<const Memory&>(*hostScratch_));
    body(links, work);
    if (dev) finishOnDevice(dev, work);
    std::string stray = collective ? strayMessage(tagBase) : "";
    if (!stray.empty()) throw Error(what() + ": " + stray);
  } catch (const TimeoutError& e) {
    error = e.what() + (collective ? progressReport(seq) : std::string()) + e.detail();
  } catch (const std::exception& e) {
    error = e.what();
  }
  {
    const char* what;
    std::string over;
    ranParts(&what, &over);
    flight_->ended(flightId, error, what, over);  // before a dump, so that the dump shows the error
  }
  if (!error.empty()) {
    logLine(LogLevel::INFO, world.rank, "error: " + error);
    std::string dir = envStr("HCOMM_DEBUG_DUMP_DIR");
    if (!dir.empty()) {
      std::string path = flight_->dump(dir, rank_, size_, id_);
      if (!path.empty()) error += " (flight record: " + path + ")";
    }
    abortWorld(world, error);
  }
  if (collective) board_->noteEnded(boardSlot_, seq);
  if (collective && error.empty() && !dev && drift_->settings().enabled)  // drift: time beside prediction (drift.cc)
    drift_->measured(info.op, info.algo, info.count * dtypeSize(info.dtype),
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  if (logLevel() >= LogLevel::TRACE) logLine(LogLevel::TRACE, world.rank, "end " + describe(info, seq));
  work.finish(error);
}

template <class Body>
WorkPtr Communicator::submit(CollectiveInfo info, bool p2p, uint64_t tagBase, Body&& body, bool async) {
  checkUsable();
  uint64_t seq = p2p ? 0 : nextSeq_++;
  if (!p2p) tagBase = collTag(id_, seq);
  lastAlgo_ = info.algo;
  auto work = std::make_shared<Work>();
  auto now = std::chrono::steady_clock::now();
  uint64_t flightId = flight_->record(seq, info.op, dtypeName(info.dtype), info.count, info.root, info.algo, now);
  DeviceCall dev = placeOnDevice(flightId);
  if (dev) dev.ctx->admit(p2p);
  if (dev) armStreamWait(dev, work);
  if (async) {
    // close() runs what is queued before it drops the world, so the task may use members.
    std::function<void()> task = [this, work, flightId, info = std::move(info), seq, tagBase, dev,
                                  body = std::forward<Body>(body)]() mutable {
      execute(info, seq, tagBase, flightId, body, *work, std::chrono::steady_clock::now(), dev);
    };
    {
      std::lock_guard<std::mutex> lock(qmu_);
      if (!worker_.joinable()) worker_ = std::thread([this] { workerLoop(); });
      queue_.push_back(std::move(task));
    }
    qcv_.notify_all();
    return work;
  }
  // Blocking: run here, after whatever was queued before (call order is tag order).
  waitTurn();
  execute(info, seq, tagBase, flightId, body, *work, now, dev);
  endTurn();
  work->wait(-1);  // rethrows the failure
  return work;
}

}  // namespace hcomm
