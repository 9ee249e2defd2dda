#include "transport/cuda_ipc.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "common/param.h"
#include "device/kernels.h"
#include "transport/cuda_runtime.h"

namespace hcomm {

namespace {

constexpr uint64_t kCtrlTag = 0xC1;  // communicator id 0 is never a communicator's
constexpr uint32_t kHello = 1, kData = 2, kCredit = 3;

}  // namespace

struct CudaIpcTransport::Ctrl {
  uint32_t kind = 0;
  int32_t slot = -1;
  uint64_t tag = 0, nbytes = 0, offset = 0, len = 0, fingerprint = 0;
  // hello only
  int32_t device = -1;
  uint32_t slots = 0;
  uint64_t slotBytes = 0;
  cuda::IpcMemHandle area{};
  cuda::IpcEventHandle event{};
};

CudaIpcTransport::CudaIpcTransport(int rank, std::vector<int> localRanks, Transport* host, int device,
                                   double timeoutSec)
    : rt_(&loadCudaRuntime()), kernels_(&deviceKernels()), rank_(rank), device_(device), timeoutSec_(timeoutSec),
      host_(host), events_(*rt_) {
  slotBytes_ = static_cast<size_t>(envInt("HCOMM_CUDA_IPC_SLOT_BYTES", 4 << 20));
  slots_ = static_cast<size_t>(envInt("HCOMM_CUDA_IPC_SLOTS", 4));
  if (slotBytes_ < 4096 || slots_ < 1)
    throw Error("HCOMM_CUDA_IPC_SLOT_BYTES must be >= 4096 and HCOMM_CUDA_IPC_SLOTS >= 1");
  check(rt_->api.SetDevice(device_), "cudaSetDevice");
  check(rt_->api.StreamCreateWithFlags(&sendStream_, cuda::kStreamNonBlocking), "cudaStreamCreateWithFlags");
  check(rt_->api.StreamCreateWithFlags(&recvStream_, cuda::kStreamNonBlocking), "cudaStreamCreateWithFlags");
  int maxRank = *std::max_element(localRanks.begin(), localRanks.end());
  localIndex_.assign(std::max(maxRank, rank) + 1, -1);
  for (int r : localRanks) {
    localIndex_[r] = static_cast<int>(peers_.size());
    peers_.emplace_back();
    peers_.back().rank = r;
  }
  std::lock_guard<std::recursive_mutex> lock(mu_);
  for (Peer& p : peers_)
    if (p.rank != rank_) postCtrlRecv(p);
}

CudaIpcTransport::~CudaIpcTransport() {
  // Work still queued on the streams may write into peers' areas: let it finish first.
  rt_->api.SetDevice(device_);
  rt_->api.StreamSynchronize(sendStream_);
  rt_->api.StreamSynchronize(recvStream_);
  for (Peer& p : peers_) {
    if (p.outArea) rt_->api.IpcCloseMemHandle(p.outArea);
    if (p.inArea) rt_->api.Free(p.inArea);
    if (p.outEvent) rt_->api.EventDestroy(p.outEvent);
    if (p.peerEvent) rt_->api.EventDestroy(p.peerEvent);
  }
  peers_.clear();  // their staging buffers go back to freeStaging_, which must still exist
  for (char* s : allStaging_) rt_->api.Free(s);
  rt_->api.StreamDestroy(sendStream_);
  rt_->api.StreamDestroy(recvStream_);
}

void CudaIpcTransport::check(int err, const char* what) const {
  if (err == 0) return;
  throw Error(std::string("cuda_ipc: ") + what + " failed: " + rt_->api.GetErrorString(cuda::Error(err)));
}

CudaIpcTransport::Peer& CudaIpcTransport::peerOf(int rank) {
  if (rank < 0 || rank >= static_cast<int>(localIndex_.size()) || localIndex_[rank] < 0 || rank == rank_)
    throw Error("cuda_ipc: rank " + std::to_string(rank) + " is not another rank of this host");
  return peers_[localIndex_[rank]];
}

std::shared_ptr<char> CudaIpcTransport::stagingFor(size_t bytes) {
  // Early messages only; kept and reused (cudaFree would synchronise the device).
  for (auto it = freeStaging_.begin(); it != freeStaging_.end(); ++it) {
    if (it->first >= bytes) {
      auto block = *it;
      freeStaging_.erase(it);
      return std::shared_ptr<char>(block.second, [this, block](char*) { freeStaging_.push_back(block); });
    }
  }
  void* raw = nullptr;
  check(rt_->api.Malloc(&raw, std::max<size_t>(bytes, 1)), "cudaMalloc of a staging buffer");
  allStaging_.push_back(static_cast<char*>(raw));
  std::pair<size_t, char*> block{std::max<size_t>(bytes, 1), static_cast<char*>(raw)};
  return std::shared_ptr<char>(block.second, [this, block](char*) { freeStaging_.push_back(block); });
}

// ---------------------------------------------------------------- control messages

void CudaIpcTransport::sendCtrl(Peer& p, const Ctrl& c) {
  auto buf = std::make_shared<Ctrl>(c);
  p.ctrlOut.emplace_back(host_->isend(p.rank, kCtrlTag, buf.get(), sizeof(Ctrl), 0), buf);
}

void CudaIpcTransport::postCtrlRecv(Peer& p) {
  p.ctrlInBuf = std::make_shared<Ctrl>();
  p.ctrlIn = host_->irecv(p.rank, kCtrlTag, p.ctrlInBuf.get(), sizeof(Ctrl), nullptr, 0);
}

void CudaIpcTransport::sayHello(Peer& p) {
  if (p.helloSent) return;
  void* area = nullptr;
  check(rt_->api.SetDevice(device_), "cudaSetDevice");
  check(rt_->api.Malloc(&area, slots_ * slotBytes_), "cudaMalloc of the receive area");
  p.inArea = static_cast<char*>(area);
  check(rt_->api.EventCreateWithFlags(&p.outEvent, cuda::kEventDisableTiming | cuda::kEventInterprocess),
        "cudaEventCreateWithFlags(interprocess)");
  Ctrl c;
  c.kind = kHello;
  c.device = device_;
  c.slots = static_cast<uint32_t>(slots_);
  c.slotBytes = slotBytes_;
  check(rt_->api.IpcGetMemHandle(&c.area, p.inArea), "cudaIpcGetMemHandle");
  check(rt_->api.IpcGetEventHandle(&c.event, p.outEvent), "cudaIpcGetEventHandle");
  sendCtrl(p, c);
  p.helloSent = true;
}

void CudaIpcTransport::onHello(Peer& p, const Ctrl& c) {
  if (c.slots != slots_ || c.slotBytes != slotBytes_)
    throw Error("cuda_ipc: rank " + std::to_string(p.rank) + " uses " + std::to_string(c.slots) + " slots of " +
                std::to_string(c.slotBytes) + " bytes, this rank " + std::to_string(slots_) + " of " +
                std::to_string(slotBytes_) + " (set HCOMM_CUDA_IPC_SLOT_BYTES / _SLOTS alike on every rank)");
  void* area = nullptr;
  check(rt_->api.SetDevice(device_), "cudaSetDevice");
  check(rt_->api.IpcOpenMemHandle(&area, c.area, cuda::kIpcMemLazyEnablePeerAccess),
        "cudaIpcOpenMemHandle of a peer's receive area");
  p.outArea = static_cast<char*>(area);
  check(rt_->api.IpcOpenEventHandle(&p.peerEvent, c.event), "cudaIpcOpenEventHandle");
  p.outFree.assign(slots_, 1);
  p.helloSeen = true;
  sayHello(p);  // the peer may only have written to us so far
}

void CudaIpcTransport::onCtrl(Peer& p, const Ctrl& c) {
  if (c.kind == kHello) onHello(p, c);
  else if (c.kind == kData) onData(p, c);
  else if (c.kind == kCredit) p.outFree.at(static_cast<size_t>(c.slot)) = 1;
  else throw Error("cuda_ipc: unknown control message from rank " + std::to_string(p.rank));
}

bool CudaIpcTransport::pollCtrl(Peer& p) {
  bool moved = false;
  while (!p.ctrlOut.empty() && p.ctrlOut.front().first->done.load(std::memory_order_acquire)) {
    if (!p.ctrlOut.front().first->error.empty()) throw Error(p.ctrlOut.front().first->error);
    p.ctrlOut.pop_front();
    moved = true;
  }
  while (p.ctrlIn && p.ctrlIn->done.load(std::memory_order_acquire)) {
    if (!p.ctrlIn->error.empty()) throw Error(p.ctrlIn->error);
    Ctrl c = *p.ctrlInBuf;
    postCtrlRecv(p);
    onCtrl(p, c);
    moved = true;
  }
  return moved;
}

// ---------------------------------------------------------------- sending

RequestPtr CudaIpcTransport::isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer);
  RequestPtr req = makeRequest(peer, tag, nbytes, true, fingerprint);
  if (!aborted_.empty()) {
    complete(*req, aborted_);
    return req;
  }
  sayHello(p);
  OutMsg m;
  m.req = req;
  m.src = static_cast<const char*>(buf);
  p.sending.push_back(m);
  pumpSends(p);
  return req;
}

bool CudaIpcTransport::pumpSends(Peer& p) {
  // Messages to one peer go out in order, piece by piece, as credits allow.
  bool moved = false;
  while (!p.sending.empty() && p.helloSeen) {
    OutMsg& m = p.sending.front();
    size_t total = m.req->nbytes;
    if (m.done) {  // every piece handed out: done when its last copy is
      cuda::Error e = rt_->api.EventQuery(m.done);
      if (e == cuda::cudaErrorNotReady) break;
      check(e, "cudaEventQuery");
      events_.give(m.done);
      complete(*m.req);
      p.sending.pop_front();
      moved = true;
      continue;
    }
    auto slot = std::find(p.outFree.begin(), p.outFree.end(), 1);
    if (total > 0 && slot == p.outFree.end()) break;
    Ctrl c;
    c.kind = kData;
    c.tag = m.req->tag;
    c.nbytes = total;
    c.offset = m.next;
    c.len = std::min(slotBytes_, total - m.next);
    c.fingerprint = m.req->fingerprint;
    if (c.len) {
      c.slot = static_cast<int32_t>(slot - p.outFree.begin());
      *slot = 0;
      check(rt_->api.MemcpyAsync(p.outArea + c.slot * slotBytes_, m.src + m.next, c.len,
                                 cuda::cudaMemcpyDeviceToDevice, sendStream_),
            "cudaMemcpyAsync into a peer's slot");
      check(rt_->api.EventRecord(p.outEvent, sendStream_), "cudaEventRecord");
    }
    sendCtrl(p, c);
    m.next += c.len;
    if (m.next == total) {
      m.done = events_.take();
      check(rt_->api.EventRecord(m.done, sendStream_), "cudaEventRecord");
    }
    moved = true;
  }
  return moved;
}

// ---------------------------------------------------------------- receiving

RequestPtr CudaIpcTransport::irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                                   uint64_t fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer);
  PostedRecv r = postedRecv(peer, tag, buf, nbytes, reduce, fingerprint);
  if (!aborted_.empty()) {
    complete(*r.req, aborted_);
    return r.req;
  }
  sayHello(p);
  std::shared_ptr<Unexpected> u = p.match.takeUnexpected(tag);
  if (!u) {
    p.match.posted.push_back(r);
    return r.req;
  }
  std::string why = mismatch(peer, tag, u->nbytes, u->fingerprint, *r.req);
  if (!why.empty()) complete(*r.req, why);
  else if (u->complete) deliverEarly(p, r, u);
  else {  // still arriving into staging: delivered when its last piece lands
    u->bound.reset(new PostedRecv(r));
    p.match.unexpected.push_front(u);
  }
  return r.req;
}

void CudaIpcTransport::startIncoming(Peer& p, const Ctrl& c) {
  Incoming& in = p.incoming;
  in = Incoming();
  in.active = true;
  in.nbytes = c.nbytes;
  PostedRecv r;
  if (p.match.takePosted(c.tag, &r)) {
    std::string why = mismatch(p.rank, c.tag, c.nbytes, c.fingerprint, *r.req);
    if (!why.empty()) throw Error(why);  // fails the transport: the ranks disagree
    in.recv = r;
    return;
  }
  in.early = std::make_shared<Unexpected>();
  in.early->tag = c.tag;
  in.early->nbytes = c.nbytes;
  in.early->fingerprint = c.fingerprint;
  in.staging = stagingFor(c.nbytes);
  in.early->addr = reinterpret_cast<uint64_t>(in.staging.get());
  p.match.unexpected.push_back(in.early);
  p.keep.push_back(in.staging);
}

void CudaIpcTransport::onData(Peer& p, const Ctrl& c) {
  if (c.offset == 0) startIncoming(p, c);
  Incoming& in = p.incoming;
  bool last = c.offset + c.len == c.nbytes;
  if (in.recv.req) land(p, &in.recv, in.recv.dst, c, last);
  else land(p, nullptr, in.staging.get(), c, last);
  if (last) in.active = false;
}

void CudaIpcTransport::land(Peer& p, const PostedRecv* into, char* dst, const Ctrl& c, bool last) {
  Landing l;
  l.slot = c.slot;
  if (c.len) {
    const char* slot = p.inArea + c.slot * slotBytes_;
    check(rt_->api.StreamWaitEvent(recvStream_, p.peerEvent, 0), "cudaStreamWaitEvent(peer's event)");
    if (into && into->reducing) {
      deviceCombine(*kernels_, into->spec, dst, c.offset, slot, c.len, recvStream_);
    } else {
      check(rt_->api.MemcpyAsync(dst + c.offset, slot, c.len, cuda::cudaMemcpyDeviceToDevice, recvStream_),
            "cudaMemcpyAsync out of a slot");
    }
  }
  l.event = events_.take();
  check(rt_->api.EventRecord(l.event, recvStream_), "cudaEventRecord");
  if (last) {
    if (into) l.completes = into->req;
    else l.early = p.incoming.early;
  }
  p.landing.push_back(l);
}

void CudaIpcTransport::deliverEarly(Peer& p, const PostedRecv& r, const std::shared_ptr<Unexpected>& u) {
  // Early messages are claimed in matching order, not arrival order: find u's buffer.
  auto it = std::find_if(p.keep.begin(), p.keep.end(), [&](const std::shared_ptr<char>& s) {
    return s.get() == reinterpret_cast<char*>(u->addr);
  });
  if (it == p.keep.end()) throw Error("cuda_ipc: lost the staging buffer of an early message");
  std::shared_ptr<char> staged = *it;
  p.keep.erase(it);
  if (r.nbytes) {
    if (r.reducing) {
      deviceCombine(*kernels_, r.spec, r.dst, 0, staged.get(), r.nbytes, recvStream_);
    } else {
      check(rt_->api.MemcpyAsync(r.dst, staged.get(), r.nbytes, cuda::cudaMemcpyDeviceToDevice, recvStream_),
            "cudaMemcpyAsync out of staging");
    }
  }
  Landing l;
  l.event = events_.take();
  check(rt_->api.EventRecord(l.event, recvStream_), "cudaEventRecord");
  l.completes = r.req;
  l.hold = staged;  // back to the pool once the copy out of it is done
  p.landing.push_back(l);
}

bool CudaIpcTransport::pollLanding(Peer& p) {
  bool moved = false;
  while (!p.landing.empty()) {
    Landing& l = p.landing.front();
    cuda::Error e = rt_->api.EventQuery(l.event);
    if (e == cuda::cudaErrorNotReady) break;
    check(e, "cudaEventQuery");
    events_.give(l.event);
    if (l.slot >= 0) {
      Ctrl credit;
      credit.kind = kCredit;
      credit.slot = l.slot;
      sendCtrl(p, credit);
    }
    if (l.completes) complete(*l.completes);
    if (l.early) {
      l.early->complete = true;
      if (l.early->bound) {
        PostedRecv r = *l.early->bound;
        auto& q = p.match.unexpected;
        q.erase(std::remove(q.begin(), q.end(), l.early), q.end());
        deliverEarly(p, r, l.early);
      }
    }
    p.landing.pop_front();
    moved = true;
  }
  return moved;
}

// ---------------------------------------------------------------- progress

bool CudaIpcTransport::progress() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!aborted_.empty()) return false;
  bool moved = host_->progress();
  try {
    for (Peer& p : peers_) {
      if (p.rank == rank_) continue;
      moved |= pollCtrl(p);
      moved |= pollLanding(p);
      moved |= pumpSends(p);
    }
  } catch (const Error& e) {
    failAll(e.what());
    return true;
  }
  return moved;
}

void CudaIpcTransport::sleepFor(int us) { host_->sleepFor(us); }

bool CudaIpcTransport::probe(int peer, uint64_t tag, size_t* nbytes) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  const Unexpected* u = peerOf(peer).match.peekUnexpected(tag);
  if (!u) return false;
  if (nbytes) *nbytes = u->nbytes;
  return true;
}

void CudaIpcTransport::failAll(const std::string& why) {
  if (aborted_.empty()) aborted_ = why;
  for (Peer& p : peers_) {
    for (auto& m : p.sending) complete(*m.req, why);
    p.sending.clear();
    p.match.failWaiting(why);
    if (p.incoming.recv.req && !p.incoming.recv.req->done.load()) complete(*p.incoming.recv.req, why);
    for (auto& l : p.landing)
      if (l.completes && !l.completes->done.load()) complete(*l.completes, why);
  }
}

void CudaIpcTransport::abort(const std::string& why) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  failAll(why);
}

}  // namespace hcomm
