#include "transport/staging.h"

#include <algorithm>
#include <iterator>

#include "common/param.h"
#include "device/kernels.h"
#include "transport/cuda_runtime.h"
#include "transport/matcher.h"

namespace hcomm {

StagingTransport::StagingTransport(Transport* host, int device, double)
    : host_(host), rt_(&loadCudaRuntime()), kernels_(&deviceKernels()), device_(device), events_(*rt_) {
  pieceBytes_ = static_cast<size_t>(envInt("HCOMM_STAGING_PIECE_BYTES", 1 << 20));
  depth_ = static_cast<size_t>(envInt("HCOMM_STAGING_PIECES", 4));
  if (pieceBytes_ < 1024 || depth_ < 1)
    throw Error("HCOMM_STAGING_PIECE_BYTES must be >= 1024 and HCOMM_STAGING_PIECES >= 1");
  check(rt_->api.SetDevice(device_), "cudaSetDevice");
  check(rt_->api.StreamCreateWithFlags(&d2h_, cuda::kStreamNonBlocking), "cudaStreamCreateWithFlags");
  check(rt_->api.StreamCreateWithFlags(&h2d_, cuda::kStreamNonBlocking), "cudaStreamCreateWithFlags");
}

StagingTransport::~StagingTransport() {
  rt_->api.SetDevice(device_);
  rt_->api.StreamSynchronize(d2h_);
  rt_->api.StreamSynchronize(h2d_);
  sends_.clear();
  recvs_.clear();  // device pieces go back to freeDevice_ first
  for (char* p : allPinned_) rt_->api.FreeHost(p);
  for (char* p : allDevice_) rt_->api.Free(p);
  rt_->api.StreamDestroy(d2h_);
  rt_->api.StreamDestroy(h2d_);
}

void StagingTransport::check(int err, const char* what) const {
  if (err == 0) return;
  throw Error(std::string("staging: ") + what + " failed: " + rt_->api.GetErrorString(cuda::Error(err)));
}

char* StagingTransport::takePinned() {
  if (!freePinned_.empty()) {
    char* p = freePinned_.back();
    freePinned_.pop_back();
    return p;
  }
  void* p = nullptr;
  check(rt_->api.HostAlloc(&p, pieceBytes_, cuda::kHostAllocDefault), "cudaHostAlloc");
  allPinned_.push_back(static_cast<char*>(p));
  return static_cast<char*>(p);
}

std::shared_ptr<char> StagingTransport::devicePiece() {
  char* p = nullptr;
  if (!freeDevice_.empty()) {
    p = freeDevice_.back();
    freeDevice_.pop_back();
  } else {
    void* raw = nullptr;
    check(rt_->api.Malloc(&raw, pieceBytes_), "cudaMalloc of a staging piece");
    p = static_cast<char*>(raw);
    allDevice_.push_back(p);
  }
  return std::shared_ptr<char>(p, [this](char* q) { freeDevice_.push_back(q); });
}

void StagingTransport::recycle(Piece& p) {
  if (p.pinned) freePinned_.push_back(p.pinned);
  events_.give(p.event);
  p.pinned = nullptr;
  p.event = nullptr;
  p.device.reset();
}

// ---------------------------------------------------------------- sending

RequestPtr StagingTransport::isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Msg m;
  m.req = makeRequest(peer, tag, nbytes, true, fingerprint);
  if (!aborted_.empty()) {
    complete(*m.req, aborted_);
    return m.req;
  }
  m.dev = static_cast<char*>(const_cast<void*>(buf));
  RequestPtr req = m.req;
  sends_[peer].push_back(std::move(m));
  pumpSend(peer, sends_[peer]);
  return req;
}

bool StagingTransport::pumpSend(int peer, std::deque<Msg>& q) {
  bool moved = false;
  while (!q.empty()) {
    Msg& m = q.front();
    size_t total = m.req->nbytes;
    // Start pieces while the message has bytes left and the pipeline has room.
    while (m.pieces.size() < depth_ && (m.next < total || (total == 0 && m.pieces.empty() && m.next == 0))) {
      Piece p;
      p.offset = m.next;
      p.len = std::min(pieceBytes_, total - m.next);
      p.pinned = takePinned();
      if (p.len)
        check(rt_->api.MemcpyAsync(p.pinned, m.dev + p.offset, p.len, cuda::cudaMemcpyDeviceToHost, d2h_),
              "cudaMemcpyAsync device to host");
      p.event = events_.take();
      check(rt_->api.EventRecord(p.event, d2h_), "cudaEventRecord");
      m.next += p.len;
      if (total == 0) m.next = 1;  // the one empty piece is out
      m.pieces.push_back(std::move(p));
      moved = true;
    }
    // Pieces go on the wire in order, each once its copy is done.
    for (Piece& p : m.pieces) {
      if (p.copied) continue;
      cuda::Error e = rt_->api.EventQuery(p.event);
      if (e == cuda::cudaErrorNotReady) break;
      check(e, "cudaEventQuery");
      p.wire = host_->isend(peer, m.req->tag, p.pinned, p.len, m.req->fingerprint);
      p.copied = true;
      moved = true;
    }
    while (!m.pieces.empty() && m.pieces.front().wire && m.pieces.front().wire->done.load()) {
      Piece& p = m.pieces.front();
      if (!p.wire->error.empty()) throw Error(p.wire->error);
      recycle(p);
      m.pieces.pop_front();
      moved = true;
    }
    bool allOut = total == 0 ? m.next == 1 : m.next == total;
    if (!allOut || !m.pieces.empty()) break;
    complete(*m.req);
    q.pop_front();
  }
  return moved;
}

// ---------------------------------------------------------------- receiving

RequestPtr StagingTransport::irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                                   uint64_t fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Msg m;
  m.req = makeRequest(peer, tag, nbytes, false, fingerprint);
  if (!aborted_.empty()) {
    complete(*m.req, aborted_);
    return m.req;
  }
  m.dev = static_cast<char*>(buf);
  if (reduce) {
    m.reducing = true;
    m.spec = *reduce;
  }
  RequestPtr req = m.req;
  auto& q = recvs_[{peer, tag}];
  q.push_back(std::move(m));
  pumpRecv(q);
  return req;
}

bool StagingTransport::pumpRecv(std::deque<Msg>& q) {
  // Only the first receive of a (peer, tag) posts pieces: the host transport matches in
  // order, so a later receive's pieces must not be posted before this one's.
  bool moved = false;
  while (!q.empty()) {
    Msg& m = q.front();
    size_t total = m.req->nbytes;
    while (m.pieces.size() < depth_ && (m.next < total || (total == 0 && m.next == 0))) {
      Piece p;
      p.offset = m.next;
      p.len = std::min(pieceBytes_, total - m.next);
      p.pinned = takePinned();
      p.wire = host_->irecv(m.req->peer, m.req->tag, p.pinned, p.len, nullptr, m.req->fingerprint);
      m.next += p.len;
      if (total == 0) m.next = 1;
      m.pieces.push_back(std::move(p));
      moved = true;
    }
    for (Piece& p : m.pieces) {  // arrived pieces go to the device, in order
      if (p.event) continue;
      if (!p.wire->done.load(std::memory_order_acquire)) break;
      if (!p.wire->error.empty()) throw Error(p.wire->error);
      if (p.len && m.reducing) {
        p.device = devicePiece();
        check(rt_->api.MemcpyAsync(p.device.get(), p.pinned, p.len, cuda::cudaMemcpyHostToDevice, h2d_),
              "cudaMemcpyAsync host to device");
        deviceCombine(*kernels_, m.spec, m.dev, p.offset, p.device.get(), p.len, h2d_);
      } else if (p.len) {
        check(rt_->api.MemcpyAsync(m.dev + p.offset, p.pinned, p.len, cuda::cudaMemcpyHostToDevice, h2d_),
              "cudaMemcpyAsync host to device");
      }
      p.event = events_.take();
      check(rt_->api.EventRecord(p.event, h2d_), "cudaEventRecord");
      moved = true;
    }
    while (!m.pieces.empty() && m.pieces.front().event) {
      cuda::Error e = rt_->api.EventQuery(m.pieces.front().event);
      if (e == cuda::cudaErrorNotReady) break;
      check(e, "cudaEventQuery");
      recycle(m.pieces.front());
      m.pieces.pop_front();
      moved = true;
    }
    bool allIn = total == 0 ? m.next == 1 : m.next == total;
    if (!allIn || !m.pieces.empty()) break;
    complete(*m.req);
    q.pop_front();
  }
  return moved;
}

// ---------------------------------------------------------------- progress

bool StagingTransport::progress() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!aborted_.empty()) return false;
  bool moved = host_->progress();
  try {
    for (auto& [peer, q] : sends_) moved |= pumpSend(peer, q);
    for (auto it = recvs_.begin(); it != recvs_.end();) {  // tags carry the call number: drop empty ones
      moved |= pumpRecv(it->second);
      it = it->second.empty() ? recvs_.erase(it) : std::next(it);
    }
  } catch (const Error& e) {
    failAll(e.what());
    return true;
  }
  return moved;
}

std::string StagingTransport::peerFailure(int peer) {
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (!aborted_.empty()) return aborted_;
  }
  return host_->peerFailure(peer);
}

void StagingTransport::failAll(const std::string& why) {
  if (aborted_.empty()) aborted_ = why;
  for (auto& kv : sends_)
    for (Msg& m : kv.second) complete(*m.req, why);
  for (auto& kv : recvs_)
    for (Msg& m : kv.second) complete(*m.req, why);
  sends_.clear();
  recvs_.clear();
}

void StagingTransport::abort(const std::string& why) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  failAll(why);
}

}  // namespace hcomm
