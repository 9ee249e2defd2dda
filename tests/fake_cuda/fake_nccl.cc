// A host-memory fake of libnccl for tests on machines with no GPU, over the fake CUDA
// runtime (linked against libhcomm_fake_cudart.so: work is queued on its streams with
// cudaLaunchHostFunc). hcomm loads it through HCOMM_NCCL_LIB. It exports every function
// of HCOMM_NCCL_FUNCTIONS (csrc/transport/nccl_api.h) with exactly those types.
//
// What it models, as NCCL does it:
//   - communicators across PROCESSES: ncclGetUniqueId names a shared-memory file,
//     ncclCommInitRank blocks until all ranks joined and refuses two ranks on one
//     device (same PCI bus id) with ncclInvalidUsage and NCCL's "Duplicate GPU
//     detected : rank %d and rank %d both on CUDA device %lx" in ncclGetLastError;
//     ncclCommSplit is collective over the parent and orders members by (key, rank).
//   - collectives (AllReduce, Reduce, Broadcast, AllGather, ReduceScatter) on every
//     ncclDataType_t and op (sum, prod, max, min, avg, premul-sum from
//     ncclRedOpCreatePreMulSum with host or device scalar), in place or not, run in
//     stream order on the given stream; count 0 returns at once, as in NCCL. The
//     arithmetic is fake_coll.h's: rank order, one rounding for 16-bit floats.
//   - ncclSend/ncclRecv match in posting order per (sender, receiver), self included;
//     ncclGroupStart/End (nestable, per thread) run a group's operations together, so
//     grouped send/recv pairs never deadlock, and a group over several streams starts
//     when all of them reached it and holds them all until it finished.
//   - errors: bad arguments fail the call (ncclInvalidArgument, text in
//     ncclGetLastError); a collective whose count, dtype, op or root differs across
//     ranks, or a receive whose size differs from the send, sets the communicator's
//     asynchronous error (ncclCommGetAsyncError -> ncclInvalidUsage, ncclGetLastError
//     names the ranks and calls) and writes no output; later calls on it return that
//     error. ncclCommAbort makes this rank's waits end at once; a peer that destroyed
//     or aborted its communicator is waited for, as in NCCL.
//
// Where it differs from NCCL (known, on purpose):
//   - sends are buffered (a ring of 4 x 128 KiB per pair): a send smaller than that
//     completes before its receive is posted, where NCCL's may block. Tests must keep
//     to patterns valid under NCCL's rule (group the send with the matching receive).
//   - a peer whose process exited makes waits on it fail with ncclRemoteError (NCCL
//     does so over the network, and may hang within a host); a mismatch is detected and reported (NCCL hangs or
//     computes garbage).
//   - 16-bit float reductions round once (NCCL rounds at every ring step).
//   - operations of one communicator run one at a time in call order, whatever their
//     streams; a group's send/recv on several communicators progress one
//     communicator after the other.
//   - no pointer checks: host memory works where NCCL would fault; NCCL_* variables
//     are ignored; ncclConfig_t is ignored.
#include <sys/random.h>

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <type_traits>

#include "fake_coll.h"
#include "transport/nccl_api.h"

using namespace hcomm::nccl;
namespace cu = hcomm::cuda;

extern "C" {
cu::Error cudaLaunchHostFunc(cu::Stream stream, cu::HostFn fn, void* userData);
cu::Error cudaStreamQuery(cu::Stream stream);
cu::Error cudaGetDevice(int* device);
cu::Error cudaDeviceGetPCIBusId(char* pciBusId, int len, int device);
}

namespace {

constexpr char kIdMagic[8] = {'H', 'C', 'F', 'K', 'N', 'C', 'C', 'L'};
constexpr int kNumOps = 5;  // ncclNumOps: custom (premul-sum) ops count from here

struct PreMul {
  fake::DType dtype;
  double value;        // host-immediate scalars
  const void* device;  // device-resident scalars, read when the collective runs
};

std::mutex lastErrorMu;
std::string& lastErrorText() {
  static std::string* s = new std::string;
  return *s;
}

Result fail(Result r, const std::string& text) {
  if (std::getenv("NCCL_DEBUG")) std::fprintf(stderr, "[pid %d] NCCL WARN %s\n", int(getpid()), text.c_str());
  std::lock_guard<std::mutex> l(lastErrorMu);
  lastErrorText() = text;
  return r;
}

}  // namespace

struct ncclComm {
  fake::Core core;
  std::string name;
  int device = 0;
  char busId[32] = {};
  std::mutex mu;  // guards the fields below
  Result asyncError = ncclSuccess;
  uint64_t launched = 0;          // operations handed to streams (turn tickets)
  std::atomic<uint64_t> turn{0};  // operations finished, in call order
  std::vector<uint64_t> sends, recvs;  // messages posted per peer
  std::map<int, PreMul> premuls;
  int nextOp = kNumOps, splits = 0;

  Result error() {
    std::lock_guard<std::mutex> l(mu);
    return asyncError;
  }
  void setError(Result r, const std::string& text) {
    {
      std::lock_guard<std::mutex> l(mu);
      if (asyncError == ncclSuccess) asyncError = r;
    }
    fail(r, text);
  }
};

namespace {

// One queued operation: a collective or a send/receive, on a communicator and a stream.
struct Pending {
  ncclComm* comm;
  Stream stream;
  bool p2p;
  fake::Collective coll;
  PreMul premul;  // premul-sum: copied at the call (the op may be destroyed right after)
  fake::P2P msg;
  const char* what;
};

thread_local int groupDepth = 0;
thread_local std::vector<Pending> grouped;

struct Launch {  // one group, shared by the host functions queued on each of its streams
  std::vector<Pending> ops;
  std::vector<std::pair<ncclComm*, uint64_t>> turns;  // (comm, ticket), in address order
  int streams = 0;
  std::atomic<int> arrived{0};
  std::atomic<bool> finished{false};
};

double readScalar(fake::DType t, const void* p) {
  switch (t) {
    case fake::I8: return *static_cast<const int8_t*>(p);
    case fake::U8: return *static_cast<const uint8_t*>(p);
    case fake::I16: return *static_cast<const int16_t*>(p);
    case fake::U16: return *static_cast<const uint16_t*>(p);
    case fake::I32: return *static_cast<const int32_t*>(p);
    case fake::U32: return *static_cast<const uint32_t*>(p);
    case fake::I64: return double(*static_cast<const int64_t*>(p));
    case fake::U64: return double(*static_cast<const uint64_t*>(p));
    case fake::F16: return double(*static_cast<const _Float16*>(p));
    case fake::BF16: return fake::bf16ToFloat(*static_cast<const uint16_t*>(p));
    case fake::F32: return *static_cast<const float*>(p);
    case fake::F64: return *static_cast<const double*>(p);
  }
  return 0;
}

void execute(Pending& op) {
  ncclComm* c = op.comm;
  if (c->error() != ncclSuccess || c->core.aborted.load()) return;  // a failed communicator does nothing
  std::string why;
  if (!op.p2p) {
    if (op.premul.device) op.coll.call.scale = readScalar(op.premul.dtype, op.premul.device);
    why = fake::runCollective(&c->core, op.coll);
  }
  if (!why.empty()) {
    bool remote = why.find(") exited") != std::string::npos;
    c->setError(remote ? ncclRemoteError : ncclInvalidUsage, std::string("nccl") + op.what + ": " + why);
  }
}

void runGroup(Launch& g) {
  for (auto& t : g.turns) fake::pollUntil([&] { return t.first->turn.load() == t.second; });
  std::map<ncclComm*, std::vector<fake::P2P>> p2p;
  for (Pending& op : g.ops) {
    if (op.p2p)
      p2p[op.comm].push_back(op.msg);
    else
      execute(op);
  }
  for (auto& kv : p2p) {
    ncclComm* c = kv.first;
    if (c->error() != ncclSuccess || c->core.aborted.load()) continue;
    std::string why = fake::runP2P(&c->core, kv.second);
    if (!why.empty()) {
      bool remote = why.find(") exited") != std::string::npos;
      c->setError(remote ? ncclRemoteError : ncclInvalidUsage, "ncclSend/ncclRecv: " + why);
    }
  }
  for (auto& t : g.turns) t.first->turn.fetch_add(1);
}

void onStream(void* arg) {
  auto* holder = static_cast<std::pair<std::shared_ptr<Launch>, bool>*>(arg);
  std::shared_ptr<Launch> g = holder->first;
  bool primary = holder->second;
  delete holder;
  g->arrived.fetch_add(1);
  if (primary) {
    fake::pollUntil([&] { return g->arrived.load() == g->streams; });  // every stream's earlier work is done
    runGroup(*g);
    g->finished.store(true);
  } else {
    fake::pollUntil([&] { return g->finished.load(); });
  }
}

std::mutex launchMu;  // tickets of a multi-communicator group are taken together

Result launch(std::vector<Pending> ops) {
  if (ops.empty()) return ncclSuccess;
  auto g = std::make_shared<Launch>();
  std::vector<Stream> streams;
  std::set<ncclComm*> comms;
  for (const Pending& op : ops) {
    if (std::find(streams.begin(), streams.end(), op.stream) == streams.end()) streams.push_back(op.stream);
    comms.insert(op.comm);
  }
  for (Stream s : streams) {  // check every stream before any ticket is taken: a group starts whole or not at all
    cu::Error e = cudaStreamQuery(s);
    if (e != cu::cudaSuccess && e != cu::cudaErrorNotReady)
      return fail(ncclUnhandledCudaError, "invalid stream (cudaStreamQuery: " + std::to_string(int(e)) + ")");
  }
  {
    std::lock_guard<std::mutex> l(launchMu);
    for (ncclComm* c : comms) {
      std::lock_guard<std::mutex> cl(c->mu);
      g->turns.emplace_back(c, c->launched++);
    }
  }
  g->ops = std::move(ops);
  g->streams = int(streams.size());
  for (size_t i = 0; i < streams.size(); ++i) {
    auto* holder = new std::pair<std::shared_ptr<Launch>, bool>(g, i == 0);
    cudaLaunchHostFunc(streams[i], onStream, holder);  // cannot fail: the stream was checked
  }
  return ncclSuccess;
}

Result submit(Pending op) {
  if (groupDepth > 0) {
    grouped.push_back(std::move(op));
    return ncclSuccess;
  }
  std::vector<Pending> one;
  one.push_back(std::move(op));
  return launch(std::move(one));
}

bool toDType(DataType t, fake::DType* out) {
  static const fake::DType map[] = {fake::I8, fake::U8, fake::I32, fake::U32, fake::I64,
                                    fake::U64, fake::F16, fake::F32, fake::F64, fake::BF16};
  if (int(t) < 0 || int(t) > 9) return false;
  *out = map[int(t)];
  return true;
}

// Checks what every call checks; fills the dtype. Returns ncclSuccess or the failure.
Result checkCommon(const char* what, ncclComm* comm, DataType dt, fake::DType* t) {
  if (!comm) return fail(ncclInvalidArgument, std::string(what) + ": comm argument is NULL");
  if (comm->core.aborted.load()) return fail(ncclInvalidUsage, std::string(what) + ": the communicator was aborted");
  Result e = comm->error();
  if (e != ncclSuccess) return fail(e, std::string(what) + ": the communicator has an asynchronous error");
  if (!toDType(dt, t)) return fail(ncclInvalidArgument, std::string(what) + ": invalid type " + std::to_string(dt));
  return ncclSuccess;
}

Result collective(const char* what, fake::Kind kind, const void* send, void* recv, size_t count, DataType dt,
                  RedOp op, int root, ncclComm* comm, Stream stream) {
  fake::DType t;
  Result r = checkCommon(what, comm, dt, &t);
  if (r != ncclSuccess) return r;
  std::string w = std::string("nccl") + what;
  Pending p{};
  int fop = int(op);
  if (int(op) >= kNumOps) {
    std::lock_guard<std::mutex> l(comm->mu);
    auto it = comm->premuls.find(int(op));
    if (it == comm->premuls.end()) return fail(ncclInvalidArgument, w + ": invalid reduction operation " + std::to_string(op));
    if (it->second.dtype != t) return fail(ncclInvalidArgument, w + ": the premul-sum op was made for another type");
    fop = fake::OpPreMulSum;
    p.premul = it->second;
  } else if (int(op) < 0) {
    return fail(ncclInvalidArgument, w + ": invalid reduction operation " + std::to_string(op));
  }
  if ((kind == fake::KReduce || kind == fake::KBroadcast) && (root < 0 || root >= comm->core.nranks))
    return fail(ncclInvalidArgument, w + ": root " + std::to_string(root) + " out of range for " +
                                         std::to_string(comm->core.nranks) + " ranks");
  if (count == 0) return ncclSuccess;  // NCCL returns before any synchronisation
  bool needSend = kind != fake::KBroadcast || root == comm->core.rank;
  bool needRecv = kind != fake::KReduce || root == comm->core.rank;
  if ((needSend && !send) || (needRecv && !recv)) return fail(ncclInvalidArgument, w + ": NULL buffer");
  p.comm = comm;
  p.stream = stream;
  p.what = what;
  p.coll.call = fake::Call{int32_t(kind), int32_t(t), int32_t(fop), int32_t(root), uint64_t(count),
                           p.premul.device ? 0.0 : p.premul.value};
  p.coll.send = send;
  p.coll.recv = recv;
  return submit(std::move(p));
}

Result pointToPoint(const char* what, bool isSend, const void* buf, size_t count, DataType dt, int peer,
                    ncclComm* comm, Stream stream) {
  fake::DType t;
  Result r = checkCommon(what, comm, dt, &t);
  if (r != ncclSuccess) return r;
  if (peer < 0 || peer >= comm->core.nranks)
    return fail(ncclInvalidArgument, std::string("nccl") + what + ": peer " + std::to_string(peer) +
                                         " out of range for " + std::to_string(comm->core.nranks) + " ranks");
  if (!buf && count) return fail(ncclInvalidArgument, std::string("nccl") + what + ": NULL buffer");
  Pending p{};
  p.comm = comm;
  p.stream = stream;
  p.p2p = true;
  p.what = what;
  p.msg.isSend = isSend;
  p.msg.peer = peer;
  p.msg.buf = static_cast<char*>(const_cast<void*>(buf));
  p.msg.bytes = count * fake::dtypeSize(t);
  {
    std::lock_guard<std::mutex> l(comm->mu);
    p.msg.ticket = (isSend ? comm->sends : comm->recvs)[size_t(peer)]++;
  }
  return submit(std::move(p));
}

uint64_t busIdNumber(const char* busId) {  // NCCL's busIdToInt64: the hex digits, in order
  uint64_t v = 0;
  for (const char* p = busId; *p; ++p) {
    char ch = *p;
    int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
    if (d >= 0) v = v * 16 + uint64_t(d);
  }
  return v;
}

Result join(ncclComm** out, const std::string& name, int nranks, int rank) {
  auto* c = new ncclComm;
  cudaGetDevice(&c->device);
  cudaDeviceGetPCIBusId(c->busId, sizeof c->busId, c->device);
  std::string why = fake::joinCore(&c->core, name, nranks, rank, c->device, c->busId);
  if (!why.empty()) {
    fake::leaveCore(&c->core);
    delete c;
    return fail(ncclSystemError, "ncclCommInitRank: " + why);
  }
  for (int r = 0; r < nranks; ++r)
    if (r != rank && std::strcmp(c->core.slot(r)->busId, c->busId) == 0) {
      char text[160];
      std::snprintf(text, sizeof text, "Duplicate GPU detected : rank %d and rank %d both on CUDA device %lx",
                    std::min(r, rank), std::max(r, rank), (unsigned long)busIdNumber(c->busId));
      fake::leaveCore(&c->core);
      delete c;
      return fail(ncclInvalidUsage, text);
    }
  c->name = name;
  c->sends.assign(size_t(nranks), 0);
  c->recvs.assign(size_t(nranks), 0);
  *out = c;
  return ncclSuccess;
}

// Waits for this rank's queued operations on the communicator (they end at once if it
// was aborted), then lets go of it.
void release(ncclComm* c, bool abort) {
  if (abort) c->core.aborted.store(true);
  uint64_t launched;
  {
    std::lock_guard<std::mutex> l(c->mu);
    launched = c->launched;
  }
  fake::pollUntil([&] { return c->turn.load() >= launched; });
  fake::leaveCore(&c->core);
  delete c;
}

}  // namespace

extern "C" {

Result ncclGetVersion(int* version) {
  if (!version) return ncclInvalidArgument;
  *version = 22803;  // 2.28.3
  return ncclSuccess;
}

Result ncclGetUniqueId(UniqueId* uniqueId) {
  if (!uniqueId) return fail(ncclInvalidArgument, "ncclGetUniqueId: NULL argument");
  unsigned char rnd[12];
  if (getrandom(rnd, sizeof rnd, 0) != ssize_t(sizeof rnd)) return fail(ncclSystemError, "getrandom failed");
  std::memset(uniqueId->internal, 0, sizeof uniqueId->internal);
  std::memcpy(uniqueId->internal, kIdMagic, sizeof kIdMagic);
  std::string name = "hcomm-fake-nccl-";
  for (unsigned char b : rnd) name += "0123456789abcdef"[b >> 4], name += "0123456789abcdef"[b & 15];
  std::memcpy(uniqueId->internal + 8, name.data(), name.size());
  return ncclSuccess;
}

Result ncclCommInitRank(Comm* comm, int nranks, UniqueId commId, int rank) {
  if (!comm) return fail(ncclInvalidArgument, "ncclCommInitRank: comm argument is NULL");
  *comm = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return fail(ncclInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) + " nranks " +
                                         std::to_string(nranks) + " is not a valid rank/size");
  if (std::memcmp(commId.internal, kIdMagic, sizeof kIdMagic) != 0)
    return fail(ncclInvalidArgument, "ncclCommInitRank: not a unique id from ncclGetUniqueId");
  std::string name(commId.internal + 8, strnlen(commId.internal + 8, kUniqueIdBytes - 8));
  return join(comm, name, nranks, rank);
}

Result ncclCommSplit(Comm comm, int color, int key, Comm* newcomm, Config* config) {
  (void)config;
  if (!comm || !newcomm) return fail(ncclInvalidArgument, "ncclCommSplit: NULL argument");
  if (color < 0 && color != kSplitNoColor) return fail(ncclInvalidArgument, "ncclCommSplit: negative color");
  *newcomm = nullptr;
  fake::Core& core = comm->core;
  core.slot(core.rank)->color = color;
  core.slot(core.rank)->key = key;
  if (!core.barrier(1)) return fail(ncclRemoteError, "ncclCommSplit: " + core.why);
  std::vector<std::pair<int, int>> members;  // (key, parent rank)
  for (int r = 0; r < core.nranks; ++r)
    if (core.slot(r)->color == color) members.emplace_back(core.slot(r)->key, r);
  if (!core.barrier(1)) return fail(ncclRemoteError, "ncclCommSplit: " + core.why);
  int round = comm->splits++;
  if (color == kSplitNoColor) return ncclSuccess;
  std::sort(members.begin(), members.end());
  int me = int(std::find(members.begin(), members.end(), std::make_pair(key, core.rank)) - members.begin());
  std::string name = comm->name + "-s" + std::to_string(round) + "c" + std::to_string(color);
  return join(newcomm, name, int(members.size()), me);
}

Result ncclCommDestroy(Comm comm) {
  if (!comm) return fail(ncclInvalidArgument, "ncclCommDestroy: comm argument is NULL");
  release(comm, false);
  return ncclSuccess;
}

Result ncclCommAbort(Comm comm) {
  if (!comm) return ncclSuccess;
  release(comm, true);
  return ncclSuccess;
}

Result ncclCommGetAsyncError(Comm comm, Result* asyncError) {
  if (!comm || !asyncError) return fail(ncclInvalidArgument, "ncclCommGetAsyncError: NULL argument");
  *asyncError = comm->error();
  return ncclSuccess;
}

const char* ncclGetErrorString(Result result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
  }
  return "unknown result code";
}

const char* ncclGetLastError(Comm comm) {  // process-wide, as NCCL's (comm is unused there too)
  (void)comm;
  thread_local std::string copy;
  std::lock_guard<std::mutex> l(lastErrorMu);
  copy = lastErrorText();
  return copy.c_str();
}

Result ncclGroupStart() {
  ++groupDepth;
  return ncclSuccess;
}

Result ncclGroupEnd() {
  if (groupDepth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd: not in a group call");
  if (--groupDepth > 0) return ncclSuccess;
  std::vector<Pending> ops;
  ops.swap(grouped);
  return launch(std::move(ops));
}

Result ncclSend(const void* sendbuff, size_t count, DataType datatype, int peer, Comm comm, Stream stream) {
  return pointToPoint("Send", true, sendbuff, count, datatype, peer, comm, stream);
}

Result ncclRecv(void* recvbuff, size_t count, DataType datatype, int peer, Comm comm, Stream stream) {
  return pointToPoint("Recv", false, recvbuff, count, datatype, peer, comm, stream);
}

Result ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, DataType datatype, RedOp op, Comm comm,
                     Stream stream) {
  return collective("AllReduce", fake::KAllReduce, sendbuff, recvbuff, count, datatype, op, 0, comm, stream);
}

Result ncclReduce(const void* sendbuff, void* recvbuff, size_t count, DataType datatype, RedOp op, int root,
                  Comm comm, Stream stream) {
  return collective("Reduce", fake::KReduce, sendbuff, recvbuff, count, datatype, op, root, comm, stream);
}

Result ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, DataType datatype, int root, Comm comm,
                     Stream stream) {
  return collective("Broadcast", fake::KBroadcast, sendbuff, recvbuff, count, datatype, ncclSum, root, comm, stream);
}

Result ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, DataType datatype, Comm comm,
                     Stream stream) {
  return collective("AllGather", fake::KAllGather, sendbuff, recvbuff, sendcount, datatype, ncclSum, 0, comm, stream);
}

Result ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, DataType datatype, RedOp op,
                         Comm comm, Stream stream) {
  return collective("ReduceScatter", fake::KReduceScatter, sendbuff, recvbuff, recvcount, datatype, op, 0, comm,
                    stream);
}

Result ncclRedOpCreatePreMulSum(RedOp* op, void* scalar, DataType datatype, ScalarResidence residence, Comm comm) {
  fake::DType t;
  Result r = checkCommon("ncclRedOpCreatePreMulSum", comm, datatype, &t);
  if (r != ncclSuccess) return r;
  if (!op || !scalar) return fail(ncclInvalidArgument, "ncclRedOpCreatePreMulSum: NULL argument");
  if (residence != ncclScalarDevice && residence != ncclScalarHostImmediate)
    return fail(ncclInvalidArgument, "ncclRedOpCreatePreMulSum: invalid residence");
  PreMul pm{t, 0.0, nullptr};
  if (residence == ncclScalarHostImmediate)
    pm.value = readScalar(t, scalar);
  else
    pm.device = scalar;
  std::lock_guard<std::mutex> l(comm->mu);
  int id = comm->nextOp++;
  comm->premuls[id] = pm;
  *op = RedOp(id);
  return ncclSuccess;
}

Result ncclRedOpDestroy(RedOp op, Comm comm) {
  if (!comm) return fail(ncclInvalidArgument, "ncclRedOpDestroy: comm argument is NULL");
  std::lock_guard<std::mutex> l(comm->mu);
  if (int(op) < kNumOps || !comm->premuls.erase(int(op)))
    return fail(ncclInvalidArgument, "ncclRedOpDestroy: " + std::to_string(op) + " is not a custom op of this comm");
  return ncclSuccess;
}

}  // extern "C"

#define HCOMM_FAKE_CHECK(name)                                                             \
  static_assert(std::is_same<decltype(&::nccl##name), hcomm::nccl::name##Fn>::value, \
                "nccl" #name ": the fake's type differs from nccl_api.h");
HCOMM_NCCL_FUNCTIONS(HCOMM_FAKE_CHECK)
#undef HCOMM_FAKE_CHECK
