#include "transport/nccl.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "common/fingerprint.h"
#include "common/param.h"
#include "device/kernels.h"


namespace hcomm {

namespace {

constexpr uint64_t kHeaderMagic = 0x68636f6d6e63636cull;  // "hcomnccl"
constexpr size_t kSlotsPerBlock = 64;
constexpr int kMinSplitVersion = 21800;  // ncclCommSplit arrived in NCCL 2.18

}  // namespace

// ---------------------------------------------------------------- creation

NcclTransport::NcclTransport(int rank, int size, const std::string& uniqueId, int device, double timeoutSec,
                             const std::vector<std::string>& libCandidates)
    : lib_(&loadNccl(libCandidates)), rt_(&loadCudaRuntime()), rank_(rank), size_(size), device_(device),
      timeoutSec_(timeoutSec) {
  if (size < 1 || rank < 0 || rank >= size)
    throw Error("nccl: rank " + std::to_string(rank) + " is out of range for size " + std::to_string(size));
  if (uniqueId.size() != sizeof(nccl::UniqueId))
    throw Error("nccl: the unique id must be " + std::to_string(sizeof(nccl::UniqueId)) + " bytes, got " +
                std::to_string(uniqueId.size()));
  setDevice();
  nccl::UniqueId id;
  std::memcpy(id.internal, uniqueId.data(), sizeof id.internal);
  nc(lib_->api.CommInitRank(&world_, size, id, rank), "ncclCommInitRank");
  cu(rt_->api.StreamCreateWithFlags(&collStream_, cuda::kStreamNonBlocking), "cudaStreamCreateWithFlags");
  peers_.resize(size);
  for (int r = 0; r < size; ++r) peers_[r].rank = r;
  if (size > 1) createPairComms();
}

// Round-robin pairing (the circle method): with m = size rounded up to even, round k
// pairs rank m-1 with k and i with j where i + j = 2k (mod m-1). Each round is one
// ncclCommSplit per direction, so every rank takes part in every split, as NCCL requires.
void NcclTransport::createPairComms() {
  if (lib_->version < kMinSplitVersion)
    throw Error("nccl: the transport needs ncclCommSplit (NCCL >= 2.18); loaded " +
                ncclVersionString(lib_->version) + " from " + lib_->path);
  int m = size_ + (size_ % 2);
  for (int k = 0; k < m - 1; ++k) {
    int partner = rank_ == m - 1 ? k : rank_ == k ? m - 1 : ((2 * k - rank_) % (m - 1) + (m - 1)) % (m - 1);
    bool real = partner < size_;
    int lo = std::min(rank_, partner);
    for (int dir = 0; dir < 2; ++dir) {  // dir 0 carries lo -> hi, dir 1 hi -> lo
      nccl::Comm c = nullptr;
      nc(lib_->api.CommSplit(world_, real ? lo : nccl::kSplitNoColor, rank_, &c, nullptr), "ncclCommSplit");
      if (!real) continue;
      Peer& p = peers_[partner];
      int peerIndex = partner < rank_ ? 0 : 1;  // key = world rank orders the pair
      bool sending = (dir == 0) == (rank_ == lo);
      (sending ? p.outComm : p.inComm) = c;
      (sending ? p.outPeer : p.inPeer) = peerIndex;
    }
    if (!real) continue;
    Peer& p = peers_[partner];
    cu(rt_->api.StreamCreateWithFlags(&p.outStream, cuda::kStreamNonBlocking), "cudaStreamCreateWithFlags");
    cu(rt_->api.StreamCreateWithFlags(&p.inStream, cuda::kStreamNonBlocking), "cudaStreamCreateWithFlags");
    cu(rt_->api.StreamCreateWithFlags(&p.deliverStream, cuda::kStreamNonBlocking), "cudaStreamCreateWithFlags");
    p.headerSlot = takeSlot();
    p.headerEvent = takeEvent();
  }
}

NcclTransport::~NcclTransport() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  try {
    setDevice();
  } catch (...) {
  }
  // ncclCommDestroy waits for outstanding operations; a receive nobody will answer
  // would hang it, so anything still outstanding makes this an abort.
  bool busy = !aborted_.empty();
  for (Peer& p : peers_) busy |= p.headerPosted || !p.sending.empty() || !p.receiving.empty() || !p.delivering.empty();
  auto finish = busy ? lib_->api.CommAbort : lib_->api.CommDestroy;
  for (Peer& p : peers_) {
    if (p.outComm) finish(p.outComm);
    if (p.inComm) finish(p.inComm);
  }
  if (world_) finish(world_);
  if (!busy) rt_->api.StreamSynchronize(collStream_);
  for (Peer& p : peers_) {
    if (p.outStream) rt_->api.StreamDestroy(p.outStream);
    if (p.inStream) rt_->api.StreamDestroy(p.inStream);
    if (p.deliverStream) rt_->api.StreamDestroy(p.deliverStream);
  }
  if (collStream_) rt_->api.StreamDestroy(collStream_);
  for (cuda::Event e : allEvents_) rt_->api.EventDestroy(e);
  for (Peer& p : peers_)
    for (const Staged& s : p.unexpected)
      if (s.stage.dev) freeStages_.push_back(s.stage);
  for (const Stage& s : freeStages_) rt_->api.Free(s.dev);
  for (void* b : devBlocks_) rt_->api.Free(b);
  for (void* b : hostBlocks_) rt_->api.FreeHost(b);
}

// ---------------------------------------------------------------- helpers

void NcclTransport::setDevice() const { cu(rt_->api.SetDevice(device_), "cudaSetDevice"); }

void NcclTransport::nc(nccl::Result r, const char* what, nccl::Comm comm) const {
  if (r == nccl::ncclSuccess) return;
  std::string msg = std::string("nccl: ") + what + " failed: " + lib_->api.GetErrorString(r);
  const char* last = lib_->api.GetLastError(comm);
  if (last && *last) msg += " (" + std::string(last) + ")";
  throw Error(msg + " [rank " + std::to_string(rank_) + ", device " + std::to_string(device_) + "]");
}

void NcclTransport::cu(cuda::Error e, const char* what) const {
  if (e == cuda::cudaSuccess) return;
  throw Error(std::string("nccl transport: ") + what + " failed: " + rt_->api.GetErrorString(e) + " [rank " +
              std::to_string(rank_) + ", device " + std::to_string(device_) + "]");
}

NcclTransport::Slot NcclTransport::takeSlot() {
  if (freeSlots_.empty()) {
    void* host = nullptr;
    void* dev = nullptr;
    cu(rt_->api.HostAlloc(&host, kSlotsPerBlock * sizeof(Header), cuda::kHostAllocDefault), "cudaHostAlloc");
    hostBlocks_.push_back(host);
    cu(rt_->api.Malloc(&dev, kSlotsPerBlock * sizeof(Header)), "cudaMalloc");
    devBlocks_.push_back(dev);
    for (size_t i = 0; i < kSlotsPerBlock; ++i)
      freeSlots_.push_back({static_cast<char*>(host) + i * sizeof(Header), static_cast<char*>(dev) + i * sizeof(Header)});
  }
  Slot s = freeSlots_.back();
  freeSlots_.pop_back();
  return s;
}

NcclTransport::Stage NcclTransport::takeStage(size_t bytes) {
  // Best fit among the free buffers; else a new one (rounded up so sizes repeat).
  auto best = freeStages_.end();
  for (auto it = freeStages_.begin(); it != freeStages_.end(); ++it)
    if (it->cap >= bytes && (best == freeStages_.end() || it->cap < best->cap)) best = it;
  if (best != freeStages_.end()) {
    Stage s = *best;
    freeStages_.erase(best);
    return s;
  }
  Stage s;
  s.cap = std::max<size_t>(4096, (bytes + 4095) & ~size_t(4095));
  void* p = nullptr;
  cu(rt_->api.Malloc(&p, s.cap), "cudaMalloc (staging buffer)");
  s.dev = static_cast<char*>(p);
  return s;
}

cuda::Event NcclTransport::takeEvent() {
  if (freeEvents_.empty()) {
    cuda::Event e = nullptr;
    cu(rt_->api.EventCreateWithFlags(&e, cuda::kEventDisableTiming), "cudaEventCreateWithFlags");
    allEvents_.push_back(e);
    return e;
  }
  cuda::Event e = freeEvents_.back();
  freeEvents_.pop_back();
  return e;
}

void NcclTransport::recycle(Inflight& f) {
  if (f.event) freeEvents_.push_back(f.event);
  if (f.slot.host) freeSlots_.push_back(f.slot);
  if (f.stage.dev) freeStages_.push_back(f.stage);
  f = Inflight();
}

NcclTransport::Peer& NcclTransport::peerOf(int rank) {
  if (rank < 0 || rank >= size_ || rank == rank_)
    throw Error("nccl transport: rank " + std::to_string(rank) + " is not a peer of rank " + std::to_string(rank_) +
                " in a group of " + std::to_string(size_));
  return peers_[rank];
}

// ---------------------------------------------------------------- point to point

RequestPtr NcclTransport::isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer);
  RequestPtr req = makeRequest(peer, tag, nbytes, true, fingerprint);
  if (!aborted_.empty()) {
    complete(*req, aborted_);
    return req;
  }
  setDevice();
  Inflight f;
  f.req = req;
  f.slot = takeSlot();
  Header h{kHeaderMagic, tag, nbytes, fingerprint};
  std::memcpy(f.slot.host, &h, sizeof h);
  cu(rt_->api.MemcpyAsync(f.slot.dev, f.slot.host, sizeof h, cuda::cudaMemcpyHostToDevice, p.outStream),
     "cudaMemcpyAsync (header)");
  std::string call = "ncclSend to rank " + std::to_string(peer);
  nc(lib_->api.Send(f.slot.dev, sizeof h, nccl::ncclUint8, p.outPeer, p.outComm, p.outStream), call.c_str(), p.outComm);
  if (nbytes)
    nc(lib_->api.Send(buf, nbytes, nccl::ncclUint8, p.outPeer, p.outComm, p.outStream), call.c_str(), p.outComm);
  f.event = takeEvent();
  cu(rt_->api.EventRecord(f.event, p.outStream), "cudaEventRecord");
  p.sending.push_back(f);
  return req;
}

RequestPtr NcclTransport::irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                                uint64_t fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer);
  PostedRecv r = postedRecv(peer, tag, buf, nbytes, reduce, fingerprint);
  if (!aborted_.empty()) {
    complete(*r.req, aborted_);
    return r.req;
  }
  setDevice();
  for (auto it = p.unexpected.begin(); it != p.unexpected.end(); ++it) {
    if (it->hdr.tag != tag) continue;
    Staged s = *it;
    p.unexpected.erase(it);
    deliverStaged(p, r, s);
    return r.req;
  }
  p.posted.push_back(r);
  if (!p.headerPosted) postHeaderRecv(p);
  return r.req;
}

// A staged message meets its receive: copy or reduce it into place on the peer's
// delivery stream, once the payload receive queued on the inbound stream is done. Not on
// the inbound stream itself: a header receive for the peer's next message may sit there
// (posted while another receive from the peer waits), and the peer may send that message
// only after this delivery (the tree allreduce: a parent folds a child's early segment
// while the result of that fold is what the child waits for). Queued behind the parked
// header, the delivery and both ranks waited for each other.
void NcclTransport::deliverStaged(Peer& p, PostedRecv& r, const Staged& s) {
  std::string why = mismatch(p.rank, s.hdr.tag, s.hdr.nbytes, s.hdr.fingerprint, *r.req);
  Inflight f;
  f.stage = s.stage;
  if (s.arrived) {
    cu(rt_->api.StreamWaitEvent(p.deliverStream, s.arrived, 0), "cudaStreamWaitEvent");
    freeEvents_.push_back(s.arrived);  // a wait captures the event's state when it is queued
  }
  if (!why.empty()) {
    complete(*r.req, why);
  } else if (s.hdr.nbytes) {
    f.req = r.req;
    if (r.reducing)
      enqueueReduce(r.spec, r.dst, s.stage.dev, s.hdr.nbytes, p.deliverStream);
    else
      cu(rt_->api.MemcpyAsync(r.dst, s.stage.dev, s.hdr.nbytes, cuda::cudaMemcpyDeviceToDevice, p.deliverStream),
         "cudaMemcpyAsync (staged payload)");
  } else {
    complete(*r.req);
  }
  if (!f.req && !f.stage.dev) return;
  f.event = takeEvent();
  cu(rt_->api.EventRecord(f.event, p.deliverStream), "cudaEventRecord");
  p.delivering.push_back(f);
}

void NcclTransport::enqueueReduce(const ReduceSpec& spec, void* dst, const void* staged, size_t nbytes,
                                  cuda::Stream s) {
  // The device kernel table (device/kernels.h) throws, naming why, where there are none.
  deviceCombine(deviceKernels(), spec, static_cast<char*>(dst), 0, staged, nbytes, s);
}

void NcclTransport::postHeaderRecv(Peer& p) {
  std::string call = "ncclRecv from rank " + std::to_string(p.rank);
  nc(lib_->api.Recv(p.headerSlot.dev, sizeof(Header), nccl::ncclUint8, p.inPeer, p.inComm, p.inStream), call.c_str(),
     p.inComm);
  cu(rt_->api.MemcpyAsync(p.headerSlot.host, p.headerSlot.dev, sizeof(Header), cuda::cudaMemcpyDeviceToHost,
                          p.inStream),
     "cudaMemcpyAsync (header)");
  cu(rt_->api.EventRecord(p.headerEvent, p.inStream), "cudaEventRecord");
  p.headerPosted = true;
}

// The payload of header `h` comes next on the inbound link: straight into the
// receive's buffer when one is waiting and nothing needs combining, else staged.
void NcclTransport::receivePayload(Peer& p, PostedRecv* r, const Header& h) {
  std::string why = r ? mismatch(p.rank, h.tag, h.nbytes, h.fingerprint, *r->req) : "";
  Inflight f;
  bool direct = r && why.empty() && !r->reducing;
  if (h.nbytes && !direct) f.stage = takeStage(h.nbytes);
  if (h.nbytes)
    nc(lib_->api.Recv(direct ? r->dst : f.stage.dev, h.nbytes, nccl::ncclUint8, p.inPeer, p.inComm, p.inStream),
       ("ncclRecv from rank " + std::to_string(p.rank)).c_str(), p.inComm);
  if (!r) {  // unexpected: keep it staged until its receive is posted
    Staged s{h, f.stage};
    if (h.nbytes) {
      s.arrived = takeEvent();
      cu(rt_->api.EventRecord(s.arrived, p.inStream), "cudaEventRecord");
    }
    p.unexpected.push_back(s);
    return;
  }
  if (!why.empty()) {
    complete(*r->req, why);  // the payload still had to be drained to keep the link in step
  } else if (h.nbytes == 0) {
    complete(*r->req);
  } else {
    f.req = r->req;
    if (r->reducing) enqueueReduce(r->spec, r->dst, f.stage.dev, h.nbytes, p.inStream);
  }
  if (!f.req && !f.stage.dev) return;
  f.event = takeEvent();
  cu(rt_->api.EventRecord(f.event, p.inStream), "cudaEventRecord");
  p.receiving.push_back(f);
}

void NcclTransport::onHeader(Peer& p) {
  Header h;
  std::memcpy(&h, p.headerSlot.host, sizeof h);
  p.headerPosted = false;
  if (h.magic != kHeaderMagic) {
    abort("nccl transport: corrupt message header from rank " + std::to_string(p.rank));
    return;
  }
  PostedRecv r;
  bool matched = false;
  for (auto it = p.posted.begin(); it != p.posted.end(); ++it) {
    if (it->req->tag != h.tag) continue;
    r = *it;
    p.posted.erase(it);
    matched = true;
    break;
  }
  receivePayload(p, matched ? &r : nullptr, h);
  if (!p.posted.empty()) postHeaderRecv(p);
}

bool NcclTransport::pollQueue(std::deque<Inflight>& q) {
  bool moved = false;
  while (!q.empty()) {  // one stream per queue: events complete in order
    cuda::Error e = rt_->api.EventQuery(q.front().event);
    if (e == cuda::cudaErrorNotReady) break;
    Inflight f = q.front();
    q.pop_front();
    if (f.req) complete(*f.req, e == cuda::cudaSuccess ? "" : std::string("nccl transport: ") + rt_->api.GetErrorString(e));
    recycle(f);
    moved = true;
  }
  return moved;
}

bool NcclTransport::progress() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!aborted_.empty()) return false;
  try {
    setDevice();
    bool moved = false;
    for (Peer& p : peers_) {
      if (p.rank == rank_) continue;
      moved |= pollQueue(p.sending);
      moved |= pollQueue(p.receiving);
      moved |= pollQueue(p.delivering);
      if (!p.headerPosted) continue;
      cuda::Error e = rt_->api.EventQuery(p.headerEvent);
      if (e == cuda::cudaErrorNotReady) continue;
      cu(e, "receiving a message header");
      onHeader(p);
      moved = true;
    }
    if (!moved) checkAsyncErrors();
    return moved;
  } catch (const Error& e) {
    abort(e.what());
    return true;
  }
}

void NcclTransport::checkAsyncErrors() {
  // Names the link by the world rank at its other end: NCCL's own text counts ranks of
  // the 2-rank pair communicator.
  auto check = [&](nccl::Comm c, const std::string& what) {
    nccl::Result err = nccl::ncclSuccess;
    if (c && lib_->api.CommGetAsyncError(c, &err) == nccl::ncclSuccess && err != nccl::ncclSuccess &&
        err != nccl::ncclInProgress)
      nc(err, what.c_str(), c);
  };
  check(world_, "an asynchronous operation");
  for (Peer& p : peers_) {
    check(p.outComm, "the link to rank " + std::to_string(p.rank));
    check(p.inComm, "the link from rank " + std::to_string(p.rank));
  }
}

void NcclTransport::sleepFor(int us) {
  // A GPU completion cannot be waited for with a timeout; poll at a modest rate.
  std::this_thread::sleep_for(std::chrono::microseconds(std::min(us, 100)));
}

bool NcclTransport::probe(int, uint64_t, size_t*) {
  // Probing would have to park a header receive on every link (see the file comment).
  throw Error("nccl transport: receive from any source is not supported on device buffers; name the peer");
}

void NcclTransport::failAll(const std::string& why) {
  for (Peer& p : peers_) {
    for (auto& r : p.posted) complete(*r.req, why);
    for (auto* q : {&p.sending, &p.receiving, &p.delivering})
      for (auto& f : *q)
        if (f.req) complete(*f.req, why);
    p.posted.clear();
    p.sending.clear();  // buffers stay allocated: an aborted kernel may have been using them
    p.receiving.clear();
    p.delivering.clear();
    p.unexpected.clear();
    p.headerPosted = false;
  }
}

void NcclTransport::abort(const std::string& why) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!aborted_.empty()) return;
  aborted_ = why.empty() ? "nccl transport aborted" : why;
  // ncclCommAbort makes kernels waiting on a peer return, so nothing stays parked.
  for (Peer& p : peers_) {
    if (p.outComm) lib_->api.CommAbort(p.outComm);
    if (p.inComm) lib_->api.CommAbort(p.inComm);
    p.outComm = p.inComm = nullptr;
  }
  if (world_) lib_->api.CommAbort(world_);
  world_ = nullptr;
  failAll(aborted_);
}

// ---------------------------------------------------------------- streams

nccl::Stream NcclTransport::collStream(void* stream) const {
  return stream ? static_cast<nccl::Stream>(stream) : collStream_;
}

void NcclTransport::waitFor(void* stream) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  setDevice();
  cuda::Event e = takeEvent();
  cu(rt_->api.EventRecord(e, static_cast<cuda::Stream>(stream)), "cudaEventRecord");
  cu(rt_->api.StreamWaitEvent(collStream_, e, 0), "cudaStreamWaitEvent");
  for (Peer& p : peers_) {
    if (p.outStream) cu(rt_->api.StreamWaitEvent(p.outStream, e, 0), "cudaStreamWaitEvent");
    if (p.inStream) cu(rt_->api.StreamWaitEvent(p.inStream, e, 0), "cudaStreamWaitEvent");
    if (p.deliverStream) cu(rt_->api.StreamWaitEvent(p.deliverStream, e, 0), "cudaStreamWaitEvent");
  }
  freeEvents_.push_back(e);  // a wait captures the event's state when it is queued
}

void NcclTransport::signal(void* stream) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  setDevice();
  auto s = static_cast<cuda::Stream>(stream);
  // Only streams with matched work: an inbound stream may hold a header receive parked
  // for a message not yet sent, and the caller's stream must never wait on that.
  std::vector<cuda::Stream> ours{collStream_};
  for (Peer& p : peers_) {
    if (!p.sending.empty()) ours.push_back(p.outStream);
    if (!p.receiving.empty()) ours.push_back(p.inStream);
    if (!p.delivering.empty()) ours.push_back(p.deliverStream);
  }
  for (cuda::Stream x : ours) {
    cuda::Event e = takeEvent();
    cu(rt_->api.EventRecord(e, x), "cudaEventRecord");
    cu(rt_->api.StreamWaitEvent(s, e, 0), "cudaStreamWaitEvent");
    freeEvents_.push_back(e);
  }
}

void NcclTransport::synchronize(void* stream, double timeoutSec) {
  std::vector<cuda::Event> marks;
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (!aborted_.empty()) throw Error(aborted_);
    setDevice();
    std::vector<cuda::Stream> streams;
    if (stream) streams.push_back(static_cast<cuda::Stream>(stream));
    else {
      streams.push_back(collStream_);
      for (Peer& p : peers_)
        for (cuda::Stream x : {p.outStream, p.inStream, p.deliverStream})
          if (x) streams.push_back(x);
    }
    for (cuda::Stream x : streams) {
      marks.push_back(takeEvent());
      cu(rt_->api.EventRecord(marks.back(), x), "cudaEventRecord");
    }
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeoutSec);
  for (size_t i = 0; i < marks.size();) {
    cuda::Error e = rt_->api.EventQuery(marks[i]);
    if (e == cuda::cudaSuccess) { ++i; continue; }
    std::string why;
    if (e != cuda::cudaErrorNotReady) why = std::string("nccl: ") + rt_->api.GetErrorString(e);
    else if (std::chrono::steady_clock::now() > deadline)
      why = "nccl: timed out after " + std::to_string(timeoutSec) + " s waiting for device work on rank " +
            std::to_string(rank_);
    if (!why.empty()) {
      abort(why);
      if (e == cuda::cudaErrorNotReady) throw TimeoutError(why);
      throw Error(why);
    }
    progress();  // also surfaces asynchronous NCCL errors
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (!aborted_.empty()) throw Error(aborted_);
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  std::lock_guard<std::recursive_mutex> lock(mu_);
  for (cuda::Event e : marks) freeEvents_.push_back(e);
}

// ---------------------------------------------------------------- the world communicator

void NcclTransport::withWorld(void* stream, const std::function<void(nccl::Comm, nccl::Stream)>& call) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!aborted_.empty()) throw Error(aborted_);
  setDevice();
  call(world_, collStream(stream));
}

void NcclTransport::check(nccl::Result r, const char* what) const { nc(r, what, world_); }

}  // namespace hcomm
