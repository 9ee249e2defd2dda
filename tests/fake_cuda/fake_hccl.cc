// A host-memory fake of libhccl (Huawei's collective library) for tests on machines
// with no NPU, over the fake AscendCL (fake_ascendcl.cc: work is queued on its streams
// with its hcommFakeAclStreamRun). hcomm loads it through HCOMM_HCCL_LIB; it exports the
// HCOMM_HCCL_FUNCTIONS of csrc/transport/hccl_api.h with exactly those types
// (static_assert at the end), plus HcclGetCommAsyncError and HcclGetErrorString, and
// hcommFakeHcclCalls (the fake's own: calls queued per entry point, for tests).
//
// What it models, as HCCL does it:
//   - communicators across PROCESSES: HcclGetRootInfo names a shared-memory file in
//     its 4108 bytes; HcclCommInitRootInfo blocks until all ranks joined; the rank's
//     device is the thread's aclrtSetDevice.
//   - AllReduce, Reduce, Broadcast (in place), AllGather, ReduceScatter on every HcclDataType
//     and op (sum, prod, max, min), Send/Recv matched in order per (sender, receiver),
//     all in stream order; the arithmetic is fake_coll.h's (rank order, one rounding
//     for fp16/bf16).
//   - errors: bad arguments fail the call (HCCL_E_PARA, HCCL_E_PTR); a collective whose
//     count, dtype, op or root differs across ranks (or a receive whose size differs
//     from the send) fails on every rank without writing output: the stream's next
//     aclrtSynchronizeStream returns ACL_ERROR_RT_INTERNAL_ERROR (507899), the reason
//     goes to stderr ("[fake HCCL] ..."), HcclGetCommAsyncError says HCCL_E_PARA and
//     later calls on the communicator return HCCL_E_INTERNAL.
//
// Where it differs from HCCL (known, on purpose): buffers are host memory; sends are
// buffered (4 x 128 KiB per pair) where HCCL's wait for the receive; a mismatch is
// detected (HCCL times out); a peer whose process exited fails the waits on it (HCCL
// times out, HCCL_E_TIMEOUT); several ranks may share a device; HCCL_* variables,
// HcclCommConfig and the ranktable path are absent.
//
// Built with -DHCOMM_FAKE_HCCL_NO_SEND it lacks HcclSend (a loader test's broken library).
#include <sys/random.h>

#include <map>
#include <memory>
#include <mutex>
#include <type_traits>

#include "fake_coll.h"
#include "transport/hccl_api.h"

using namespace hcomm::hccl;

extern "C" {
AclError aclrtGetDevice(int32_t* deviceId);
AclError hcommFakeAclStreamRun(AclStream stream, void (*fn)(void*), void* userData);
void hcommFakeAclStreamError(AclStream stream, int error);
}

namespace {

constexpr char kMagic[8] = {'H', 'C', 'F', 'K', 'H', 'C', 'C', 'L'};
constexpr int kAclInternalError = 507899;  // ACL_ERROR_RT_INTERNAL_ERROR

struct FakeComm {
  fake::Core core;
  std::mutex mu;
  Result asyncError = HCCL_SUCCESS;
  uint64_t launched = 0;
  std::atomic<uint64_t> turn{0};  // operations finished, in call order
  std::vector<uint64_t> sends, recvs;

  Result error() {
    std::lock_guard<std::mutex> l(mu);
    return asyncError;
  }
};

struct Op {
  FakeComm* comm;
  AclStream stream;
  uint64_t ticket;
  bool p2p;
  fake::Collective coll;
  fake::P2P msg;
  const char* what;
};

void run(void* arg) {
  std::unique_ptr<Op> op(static_cast<Op*>(arg));
  FakeComm* c = op->comm;
  fake::pollUntil([&] { return c->turn.load() == op->ticket; });
  if (c->error() == HCCL_SUCCESS) {
    std::string why;
    if (op->p2p) {
      std::vector<fake::P2P> one{op->msg};
      why = fake::runP2P(&c->core, one);
    } else {
      why = fake::runCollective(&c->core, op->coll);
    }
    if (!why.empty()) {
      {
        std::lock_guard<std::mutex> l(c->mu);
        if (c->asyncError == HCCL_SUCCESS) c->asyncError = HCCL_E_PARA;
      }
      std::fprintf(stderr, "[fake HCCL] rank %d: %s failed: %s\n", c->core.rank, op->what, why.c_str());
      hcommFakeAclStreamError(op->stream, kAclInternalError);
    }
  } else {
    hcommFakeAclStreamError(op->stream, kAclInternalError);
  }
  c->turn.fetch_add(1);
}

// Calls made per entry point in this process, for tests that must tell the native engine
// from hcomm's algorithms over HcclSend/HcclRecv (hcommFakeHcclCalls).
std::mutex countsMu;
std::map<std::string, uint64_t>& counts() {
  static auto* m = new std::map<std::string, uint64_t>;
  return *m;
}

Result submit(Op* op) {
  {
    std::lock_guard<std::mutex> l(countsMu);
    ++counts()[op->what];
  }
  // Ticket and launch under the lock: a launch that fails gives its ticket back.
  std::lock_guard<std::mutex> l(op->comm->mu);
  op->ticket = op->comm->launched;
  if (hcommFakeAclStreamRun(op->stream, run, op) != 0) {
    delete op;
    return HCCL_E_PARA;
  }
  ++op->comm->launched;
  return HCCL_SUCCESS;
}

bool toDType(DataType t, fake::DType* out) {
  static const fake::DType map[] = {fake::I8, fake::I16, fake::I32, fake::F16, fake::F32, fake::I64,
                                    fake::U64, fake::U8, fake::U16, fake::U32, fake::F64, fake::BF16};
  if (int(t) < 0 || int(t) > 11) return false;
  *out = map[int(t)];
  return true;
}

Result check(void* comm, DataType dt, fake::DType* t) {
  if (!comm) return HCCL_E_PTR;
  if (static_cast<FakeComm*>(comm)->error() != HCCL_SUCCESS) return HCCL_E_INTERNAL;
  return toDType(dt, t) ? HCCL_SUCCESS : HCCL_E_PARA;
}

Result collective(const char* what, fake::Kind kind, void* send, void* recv, uint64_t count, DataType dt,
                  int op, int root, Comm comm, AclStream stream) {
  fake::DType t;
  Result r = check(comm, dt, &t);
  if (r != HCCL_SUCCESS) return r;
  auto* c = static_cast<FakeComm*>(comm);
  if (op < HCCL_REDUCE_SUM || op > HCCL_REDUCE_MIN) return HCCL_E_PARA;
  if (root < 0 || root >= c->core.nranks) return HCCL_E_PARA;
  if (count == 0) return HCCL_SUCCESS;
  if (!send || !recv) return HCCL_E_PTR;
  auto* o = new Op{};
  o->comm = c;
  o->stream = stream;
  o->what = what;
  o->coll.call = fake::Call{int32_t(kind), int32_t(t), int32_t(op), int32_t(root), count, 1.0};
  o->coll.send = send;
  o->coll.recv = recv;
  return submit(o);
}

Result pointToPoint(const char* what, bool isSend, void* buf, uint64_t count, DataType dt, uint32_t peer, Comm comm,
                    AclStream stream) {
  fake::DType t;
  Result r = check(comm, dt, &t);
  if (r != HCCL_SUCCESS) return r;
  auto* c = static_cast<FakeComm*>(comm);
  if (int(peer) >= c->core.nranks || int(peer) == c->core.rank) return HCCL_E_PARA;
  if (!buf && count) return HCCL_E_PTR;
  auto* o = new Op{};
  o->comm = c;
  o->stream = stream;
  o->p2p = true;
  o->what = what;
  o->msg.isSend = isSend;
  o->msg.peer = int(peer);
  o->msg.buf = static_cast<char*>(buf);
  o->msg.bytes = count * fake::dtypeSize(t);
  {
    std::lock_guard<std::mutex> l(c->mu);
    o->msg.ticket = (isSend ? c->sends : c->recvs)[peer]++;
  }
  return submit(o);
}

}  // namespace

extern "C" {

Result HcclGetRootInfo(RootInfo* rootInfo) {
  if (!rootInfo) return HCCL_E_PTR;
  unsigned char rnd[12];
  if (getrandom(rnd, sizeof rnd, 0) != ssize_t(sizeof rnd)) return HCCL_E_SYSCALL;
  std::memset(rootInfo->internal, 0, sizeof rootInfo->internal);
  std::memcpy(rootInfo->internal, kMagic, sizeof kMagic);
  std::string name = "hcomm-fake-hccl-";
  for (unsigned char b : rnd) name += "0123456789abcdef"[b >> 4], name += "0123456789abcdef"[b & 15];
  std::memcpy(rootInfo->internal + 8, name.data(), name.size());
  return HCCL_SUCCESS;
}

Result HcclCommInitRootInfo(uint32_t nRanks, const RootInfo* rootInfo, uint32_t rank, Comm* comm) {
  if (!rootInfo || !comm) return HCCL_E_PTR;
  if (nRanks < 1 || rank >= nRanks || std::memcmp(rootInfo->internal, kMagic, sizeof kMagic) != 0)
    return HCCL_E_PARA;
  int32_t device = 0;
  if (aclrtGetDevice(&device) != 0) return HCCL_E_PARA;  // HCCL needs aclrtSetDevice first
  std::string name(rootInfo->internal + 8, strnlen(rootInfo->internal + 8, 64));
  char busId[32];
  std::snprintf(busId, sizeof busId, "npu%d", device);
  auto* c = new FakeComm;
  std::string why = fake::joinCore(&c->core, name, int(nRanks), int(rank), device, busId);
  if (!why.empty()) {
    std::fprintf(stderr, "[fake HCCL] HcclCommInitRootInfo: %s\n", why.c_str());
    fake::leaveCore(&c->core);
    delete c;
    return HCCL_E_INTERNAL;
  }
  c->sends.assign(nRanks, 0);
  c->recvs.assign(nRanks, 0);
  *comm = c;
  return HCCL_SUCCESS;
}

Result HcclAllReduce(void* sendBuf, void* recvBuf, uint64_t count, DataType dataType, ReduceOp op, Comm comm,
                     AclStream stream) {
  return collective("HcclAllReduce", fake::KAllReduce, sendBuf, recvBuf, count, dataType, op, 0, comm, stream);
}

Result HcclReduce(void* sendBuf, void* recvBuf, uint64_t count, DataType dataType, ReduceOp op, uint32_t root,
                  Comm comm, AclStream stream) {
  return collective("HcclReduce", fake::KReduce, sendBuf, recvBuf, count, dataType, op, int(root), comm, stream);
}

Result HcclBroadcast(void* buf, uint64_t count, DataType dataType, uint32_t root, Comm comm, AclStream stream) {
  return collective("HcclBroadcast", fake::KBroadcast, buf, buf, count, dataType, HCCL_REDUCE_SUM, int(root), comm,
                    stream);
}

Result HcclAllGather(void* sendBuf, void* recvBuf, uint64_t sendCount, DataType dataType, Comm comm,
                     AclStream stream) {
  return collective("HcclAllGather", fake::KAllGather, sendBuf, recvBuf, sendCount, dataType, HCCL_REDUCE_SUM, 0,
                    comm, stream);
}

Result HcclReduceScatter(void* sendBuf, void* recvBuf, uint64_t recvCount, DataType dataType, ReduceOp op,
                         Comm comm, AclStream stream) {
  return collective("HcclReduceScatter", fake::KReduceScatter, sendBuf, recvBuf, recvCount, dataType, op, 0, comm,
                    stream);
}

#ifndef HCOMM_FAKE_HCCL_NO_SEND
Result HcclSend(void* sendBuf, uint64_t count, DataType dataType, uint32_t destRank, Comm comm, AclStream stream) {
  return pointToPoint("HcclSend", true, sendBuf, count, dataType, destRank, comm, stream);
}
#endif

Result HcclRecv(void* recvBuf, uint64_t count, DataType dataType, uint32_t srcRank, Comm comm, AclStream stream) {
  return pointToPoint("HcclRecv", false, recvBuf, count, dataType, srcRank, comm, stream);
}

Result HcclCommDestroy(Comm comm) {
  if (!comm) return HCCL_E_PTR;
  auto* c = static_cast<FakeComm*>(comm);
  uint64_t launched;
  {
    std::lock_guard<std::mutex> l(c->mu);
    launched = c->launched;
  }
  fake::pollUntil([&] { return c->turn.load() >= launched; });  // queued work finishes first
  fake::leaveCore(&c->core);
  delete c;
  return HCCL_SUCCESS;
}

Result HcclGetCommAsyncError(Comm comm, Result* asyncError) {
  if (!comm || !asyncError) return HCCL_E_PTR;
  *asyncError = static_cast<FakeComm*>(comm)->error();
  return HCCL_SUCCESS;
}

// The fake's own: how many calls of `what` ("HcclAllReduce", "HcclSend", ...) were queued.
uint64_t hcommFakeHcclCalls(const char* what) {
  std::lock_guard<std::mutex> l(countsMu);
  auto it = counts().find(what);
  return it == counts().end() ? 0 : it->second;
}

const char* HcclGetErrorString(Result code) {
  static const char* text[] = {"no error", "parameter error", "empty pointer", "memory error", "internal error",
                               "not support feature", "not found specific resource", "resource unavailable",
                               "call system interface error", "timeout"};
  return int(code) >= 0 && int(code) <= 9 ? text[int(code)] : "unknown error";
}

}  // extern "C"

#define HCOMM_FAKE_CHECK(name)                                                             \
  static_assert(std::is_same<decltype(&::Hccl##name), hcomm::hccl::name##Fn>::value, \
                "Hccl" #name ": the fake's type differs from hccl_api.h");
#ifdef HCOMM_FAKE_HCCL_NO_SEND
#define HCOMM_FAKE_CHECK_ALL(X) X(GetRootInfo) X(CommInitRootInfo) X(AllReduce) X(Reduce) X(Broadcast) \
  X(AllGather) X(ReduceScatter) X(Recv) X(CommDestroy)
HCOMM_FAKE_CHECK_ALL(HCOMM_FAKE_CHECK)
#else
HCOMM_HCCL_FUNCTIONS(HCOMM_FAKE_CHECK)
#endif
#undef HCOMM_FAKE_CHECK
