#include "transport/hccl_transport.h"

#include <chrono>
#include <cstring>
#include <thread>

#include "common/fingerprint.h"
#include "reduce/memory.h"

namespace hcomm {

namespace {

constexpr uint64_t kMagic = 0x68636f6d6d48434cull;  // "hcommHCL"
constexpr hccl::DataType kBytes = hccl::HCCL_DATA_TYPE_UINT8;

}  // namespace

HcclTransport::HcclTransport(int rank, int size, const std::vector<std::string>& pairInfos, int device)
    : lib_(&loadHccl()), rank_(rank), size_(size), device_(device), peers_(size) {
  if (pairInfos.size() != size_t(size) * size_t(size))
    throw Error("hccl transport: expected " + std::to_string(size * size) + " pair root infos, got " +
                std::to_string(pairInfos.size()));
  setDevice();
  createPairComms(pairInfos);
}

HcclTransport::~HcclTransport() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!aborted_.empty()) return;  // leaked on purpose: see the header
  setDevice();
  for (Peer& p : peers_) {
    for (hccl::AclStream s : {p.outStream, p.inStream})
      if (s) {
        lib_->api.AclrtSynchronizeStream(s);
        lib_->api.AclrtDestroyStream(s);
      }
    for (hccl::Comm c : {p.outComm, p.inComm})
      if (c) lib_->api.CommDestroy(c);
  }
  for (hccl::AclEvent e : allEvents_) lib_->api.AclrtDestroyEvent(e);
  for (Block& b : allBlocks_) lib_->api.AclrtFree(b.dev);
}

void HcclTransport::check(int r, const char* what) const {
  if (r != 0)
    throw Error(std::string("hccl transport: ") + what + " failed with error " + std::to_string(r) + " [rank " +
                std::to_string(rank_) + ", npu:" + std::to_string(device_) + "]");
}

void HcclTransport::setDevice() const {
  // ACL's current device is per host thread; the progress thread and the caller's may
  // both drive this transport. Remembered per thread so the common case costs a load.
  thread_local int current = -1;
  if (current == device_) return;
  check(lib_->api.AclrtSetDevice(device_), "aclrtSetDevice");
  current = device_;
}

void HcclTransport::createPairComms(const std::vector<std::string>& pairInfos) {
  for (int a = 0; a < size_; ++a) {
    for (int b = 0; b < size_; ++b) {
      if (a == b || (rank_ != a && rank_ != b)) continue;
      const std::string& info = pairInfos[size_t(a) * size_ + b];
      if (info.size() != sizeof(hccl::RootInfo))
        throw Error("hccl transport: the root info of pair " + std::to_string(a) + " -> " + std::to_string(b) +
                    " is " + std::to_string(info.size()) + " bytes, not " + std::to_string(sizeof(hccl::RootInfo)));
      hccl::RootInfo ri;
      std::memcpy(ri.internal, info.data(), sizeof ri.internal);
      bool sender = rank_ == a;
      Peer& p = peers_[sender ? b : a];
      hccl::Comm* comm = sender ? &p.outComm : &p.inComm;
      check(lib_->api.CommInitRootInfo(2, &ri, sender ? 0 : 1, comm), "HcclCommInitRootInfo (pair communicator)");
      check(lib_->api.AclrtCreateStream(sender ? &p.outStream : &p.inStream), "aclrtCreateStream");
    }
  }
}

HcclTransport::Peer& HcclTransport::peerOf(int rank, const char* what) {
  if (rank < 0 || rank >= size_ || rank == rank_)
    throw Error(std::string("hccl transport: ") + what + " rank " + std::to_string(rank) + " is not a peer of rank " +
                std::to_string(rank_) + " in a group of " + std::to_string(size_));
  return peers_[rank];
}

// ---------------------------------------------------------------- pools

HcclTransport::Block HcclTransport::takeBlock(size_t bytes) {
  size_t cap = 512;
  while (cap < bytes) cap <<= 1;
  for (size_t i = 0; i < freeBlocks_.size(); ++i) {
    if (freeBlocks_[i].cap == cap) {
      Block b = freeBlocks_[i];
      freeBlocks_[i] = freeBlocks_.back();
      freeBlocks_.pop_back();
      return b;
    }
  }
  void* raw = nullptr;
  check(lib_->api.AclrtMalloc(&raw, cap, hccl::kMallocHugeFirst), "aclrtMalloc (transport buffer)");
  Block b{static_cast<char*>(raw), cap};
  allBlocks_.push_back(b);
  return b;
}

void HcclTransport::recycle(Block b) {
  if (b.dev) freeBlocks_.push_back(b);
}

hccl::AclEvent HcclTransport::takeEvent() {
  if (!freeEvents_.empty()) {
    hccl::AclEvent e = freeEvents_.back();
    freeEvents_.pop_back();
    return e;
  }
  hccl::AclEvent e = nullptr;
  check(lib_->api.AclrtCreateEvent(&e), "aclrtCreateEvent");
  allEvents_.push_back(e);
  return e;
}

void HcclTransport::recycle(hccl::AclEvent e) {
  if (e) freeEvents_.push_back(e);
}

hccl::AclEvent HcclTransport::recordOn(hccl::AclStream s) {
  hccl::AclEvent e = takeEvent();
  check(lib_->api.AclrtRecordEvent(e, s), "aclrtRecordEvent");
  return e;
}

bool HcclTransport::eventDone(hccl::AclEvent e) const {
  int status = hccl::kEventNotReady;
  check(lib_->api.AclrtQueryEventStatus(e, &status), "aclrtQueryEventStatus");
  return status == hccl::kEventComplete;
}

// ---------------------------------------------------------------- send

RequestPtr HcclTransport::isend(int peer, uint64_t tag, const void* buf, size_t nbytes, uint64_t fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer, "send to");
  RequestPtr req = makeRequest(peer, tag, nbytes, true, fingerprint);
  if (!aborted_.empty()) {
    complete(*req, aborted_);
    return req;
  }
  setDevice();
  Inflight f;
  f.req = req;
  f.block = takeBlock(sizeof(Header));
  Header h{kMagic, tag, nbytes, fingerprint};
  check(lib_->api.AclrtMemcpy(f.block.dev, sizeof h, &h, sizeof h, hccl::kHostToDevice), "aclrtMemcpy (header)");
  // The pair communicator's peer is its rank 1 (this rank made it as rank 0).
  check(lib_->api.Send(f.block.dev, sizeof h, kBytes, 1, p.outComm, p.outStream), "HcclSend (header)");
  if (nbytes)
    check(lib_->api.Send(const_cast<void*>(buf), nbytes, kBytes, 1, p.outComm, p.outStream), "HcclSend");
  f.event = recordOn(p.outStream);
  p.sending.push_back(std::move(f));
  return req;
}

// ---------------------------------------------------------------- receive

RequestPtr HcclTransport::irecv(int peer, uint64_t tag, void* buf, size_t nbytes, const ReduceSpec* reduce,
                                uint64_t fingerprint) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Peer& p = peerOf(peer, "receive from");
  PostedRecv r = postedRecv(peer, tag, buf, nbytes, reduce, fingerprint);
  if (!aborted_.empty()) {
    complete(*r.req, aborted_);
    return r.req;
  }
  if (reduce && !reduce->memory)
    throw Error("hccl transport: a reducing receive needs the NPU Memory (ReduceSpec.memory)");
  setDevice();
  for (auto it = p.unexpected.begin(); it != p.unexpected.end(); ++it) {
    if (it->hdr.tag == tag) {  // the first staged message with this tag: non-overtaking
      Staged s = *it;
      p.unexpected.erase(it);
      bindStaged(peer, p, s, r);
      return r.req;
    }
  }
  p.posted.push_back(r);
  if (!p.headerPosted) postHeaderRecv(p);
  return r.req;
}

void HcclTransport::postHeaderRecv(Peer& p) {
  if (!p.headerSlot.dev) p.headerSlot = takeBlock(sizeof(Header));
  // The pair communicator's sender is its rank 0.
  check(lib_->api.Recv(p.headerSlot.dev, sizeof(Header), kBytes, 0, p.inComm, p.inStream), "HcclRecv (header)");
  if (p.headerEvent) recycle(p.headerEvent);
  p.headerEvent = recordOn(p.inStream);
  p.headerPosted = true;
}

void HcclTransport::onHeader(int rank, Peer& p) {
  Header h;
  check(lib_->api.AclrtMemcpy(&h, sizeof h, p.headerSlot.dev, sizeof h, hccl::kDeviceToHost), "aclrtMemcpy (header)");
  if (h.magic != kMagic)
    throw Error("hccl transport: rank " + std::to_string(rank) + " sent something that is not an hcomm header");
  for (auto it = p.posted.begin(); it != p.posted.end(); ++it) {
    if (it->req->tag == h.tag) {
      PostedRecv r = *it;
      p.posted.erase(it);
      receive(rank, p, h, &r);
      return;
    }
  }
  receive(rank, p, h, nullptr);
}

// Posts the payload receive of the message `h` (it must come next on the link, before
// any later header): into the receive's buffer when it matches exactly and copies,
// otherwise into a staging block.
void HcclTransport::receive(int rank, Peer& p, const Header& h, PostedRecv* match) {
  std::string why = match ? mismatch(rank, h.tag, h.nbytes, h.fingerprint, *match->req) : "";
  bool direct = match && why.empty() && !match->reducing;
  Block stage;
  if (!direct && h.nbytes) stage = takeBlock(h.nbytes);
  void* into = direct ? static_cast<void*>(match->dst) : stage.dev;
  if (h.nbytes) check(lib_->api.Recv(into, h.nbytes, kBytes, 0, p.inComm, p.inStream), "HcclRecv");
  hccl::AclEvent e = recordOn(p.inStream);
  if (!match) {
    p.unexpected.push_back(Staged{h, stage, e});
    return;
  }
  Inflight f;
  f.event = e;
  f.req = match->req;
  f.block = stage;
  f.recv = *match;
  f.deliver = !direct && why.empty();
  f.error = why;
  p.receiving.push_back(std::move(f));
}

void HcclTransport::bindStaged(int rank, Peer& p, Staged s, const PostedRecv& r) {
  Inflight f;
  f.event = s.event;
  f.req = r.req;
  f.block = s.block;
  f.recv = r;
  f.error = mismatch(rank, s.hdr.tag, s.hdr.nbytes, s.hdr.fingerprint, *r.req);
  f.deliver = f.error.empty();
  p.receiving.push_back(std::move(f));
}

// The payload of a finished receive lands where it belongs: a copy for a late receive,
// a combining step (the Memory's reduce or fold step) for a reducing one.
void HcclTransport::finish(Inflight& f) {
  if (f.req->isSend || !f.deliver || !f.recv.nbytes) {
    complete(*f.req, f.error);
    return;
  }
  const PostedRecv& r = f.recv;
  if (!r.reducing) {
    check(lib_->api.AclrtMemcpy(r.dst, r.nbytes, f.block.dev, r.nbytes, hccl::kDeviceToDevice),
          "aclrtMemcpy (staged payload)");
  } else {
    const ReduceSpec& s = r.spec;
    size_t count = r.nbytes / dtypeSize(s.dtype);
    if (s.accumulate.on)
      s.memory->accumulate(s.dtype, s.op, r.dst, s.accumulate.dstWide, s.src, s.accumulate.srcWide, f.block.dev,
                           count);
    else
      s.memory->reduce(s.dtype, s.op, r.dst, s.src, f.block.dev, count, s.streamed);
  }
  complete(*f.req);
}

// Completes the finished operations of one queue; each is independent (a receive bound
// to an early message may finish before one posted earlier).
bool HcclTransport::pollQueue(std::deque<Inflight>& q) {
  bool moved = false;
  for (auto it = q.begin(); it != q.end();) {
    if (!eventDone(it->event)) {
      ++it;
      continue;
    }
    Inflight f = std::move(*it);
    it = q.erase(it);
    try {
      finish(f);
    } catch (const std::exception& e) {
      complete(*f.req, e.what());
    }
    recycle(f.event);
    recycle(f.block);
    moved = true;
  }
  return moved;
}

bool HcclTransport::progress() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!aborted_.empty()) return false;
  setDevice();
  bool moved = false;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    Peer& p = peers_[r];
    moved = pollQueue(p.sending) || moved;
    moved = pollQueue(p.receiving) || moved;
    if (p.headerPosted && eventDone(p.headerEvent)) {
      p.headerPosted = false;
      onHeader(r, p);
      moved = true;
    }
    if (!p.headerPosted && !p.posted.empty()) postHeaderRecv(p);
  }
  return moved;
}

void HcclTransport::sleepFor(int us) { std::this_thread::sleep_for(std::chrono::microseconds(us)); }

bool HcclTransport::probe(int, uint64_t, size_t*) {
  // Probing would have to park a header receive on every link (see the file comment).
  throw Error("hccl transport: receive from any source is not supported on NPU buffers; name the peer");
}

void HcclTransport::failAll(const std::string& why) {
  for (Peer& p : peers_) {
    for (auto& r : p.posted) complete(*r.req, why);
    for (auto* q : {&p.sending, &p.receiving})
      for (auto& f : *q) complete(*f.req, why);
    p.posted.clear();
    p.sending.clear();  // blocks stay allocated: queued HCCL work may still use them
    p.receiving.clear();
    p.unexpected.clear();
  }
}

bool HcclTransport::aborted() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return !aborted_.empty();
}

void HcclTransport::abort(const std::string& why) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!aborted_.empty()) return;
  aborted_ = why.empty() ? "hccl transport aborted" : why;
  failAll(aborted_);
}

}  // namespace hcomm
