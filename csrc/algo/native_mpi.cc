#include "algo/native_mpi.h"

#include "transport/mpi.h"

#if HCOMM_WITH_MPI
#include <sched.h>

#include <climits>
#include <cstring>
#include <thread>

#include "transport/mpi_impl.h"

namespace hcomm {
namespace algo {

namespace {

constexpr size_t kMaxCount = INT_MAX;  // MPI counts are ints: longer buffers go in pieces

MPI_Datatype mpiType(DataType dt) {
  switch (dt) {
    case DataType::F32: return MPI_FLOAT;
    case DataType::F64: return MPI_DOUBLE;
    case DataType::I8: return MPI_INT8_T;
    case DataType::U8: return MPI_UINT8_T;
    case DataType::I32: return MPI_INT32_T;
    case DataType::I64: return MPI_INT64_T;
    case DataType::BOOL: return MPI_C_BOOL;
    case DataType::F16:
    case DataType::BF16: return MpiRuntime::instance().halfType();
  }
  throw Error(std::string("no MPI datatype for ") + dtypeName(dt));
}

MPI_Op mpiOp(DataType dt, ReduceOp op) {
  if (dt == DataType::F16 || dt == DataType::BF16) return MpiRuntime::instance().halfOp(dt, op);
  if (dt == DataType::BOOL) return op == ReduceOp::SUM || op == ReduceOp::MAX ? MPI_LOR : MPI_LAND;
  switch (op) {
    case ReduceOp::SUM: return MPI_SUM;
    case ReduceOp::PROD: return MPI_PROD;
    case ReduceOp::MIN: return MPI_MIN;
    case ReduceOp::MAX: return MPI_MAX;
    default: throw Error(std::string("native: op ") + opName(op) + " must be lowered to SUM first");
  }
}

void check(int rc, const NativeWait& w, const char* call) {
  if (rc == MPI_SUCCESS) return;
  try {
    mpiCheck(rc, call);
  } catch (const Error& e) {
    throw Error(w.what + ": " + e.what());
  }
}

// Polls one nonblocking MPI call to completion, backing off like Links::wait does.
void waitFor(MPI_Request& req, const NativeWait& w, const char* call) {
  auto& rt = MpiRuntime::instance();
  auto spinStart = std::chrono::steady_clock::now();
  for (long idle = 0;; ++idle) {
    int flag = 0, rc;
    {
      auto g = rt.guard();
      rc = MPI_Test(&req, &flag, MPI_STATUS_IGNORE);
    }
    check(rc, w, call);
    if (flag) return;
    if (idle < w.policy.spins) {
      // Capped in time as Links::backoff's spin is (policy.spinUs): a peer that shares
      // this core runs only once we yield, so a whole spin of polls would be a wasted
      // slice per message on a loaded machine.
      if ((idle & 63) == 63 &&
          std::chrono::steady_clock::now() - spinStart > std::chrono::microseconds(w.policy.spinUs))
        idle = w.policy.spins - 1;  // on to yielding
      continue;
    }
    if (std::chrono::steady_clock::now() > w.deadline)
      throw TimeoutError(w.what + ": " + call + " did not complete within the timeout (HCOMM_TIMEOUT); a rank " +
                         "did not call it, or called a different collective");
    if (idle < w.policy.spins + w.policy.yields) sched_yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

// Posts one nonblocking call (post(&request) returns MPI's code) and waits for it.
template <typename Post>
void run(const NativeWait& w, const char* call, Post post) {
  MPI_Request req = MPI_REQUEST_NULL;
  {
    auto g = MpiRuntime::instance().guard();
    check(post(&req), w, call);
  }
  waitFor(req, w, call);
}

std::vector<int> intCounts(const std::vector<size_t>& v, const NativeWait& w) {
  std::vector<int> out;
  for (size_t x : v) {
    if (x > kMaxCount) throw Error(w.what + ": native counts are limited to 2^31-1 elements per rank");
    out.push_back(static_cast<int>(x));
  }
  return out;
}

bool overlaps(const void* a, size_t an, const void* b, size_t bn) {
  auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + bn && pb < pa + an;
}

}  // namespace

void allreduceNative(const MpiComm& c, const void* in, void* out, size_t count, DataType dt, ReduceOp op,
                     const NativeWait& w) {
  MPI_Datatype t = mpiType(dt);
  MPI_Op o = mpiOp(dt, op);
  size_t es = dtypeSize(dt);
  for (size_t off = 0; off < count; off += kMaxCount) {
    int n = static_cast<int>(std::min(kMaxCount, count - off));
    const void* send = in == out ? MPI_IN_PLACE : static_cast<const char*>(in) + off * es;
    char* recv = static_cast<char*>(out) + off * es;
    run(w, "MPI_Iallreduce", [&](MPI_Request* r) { return MPI_Iallreduce(send, recv, n, t, o, c.get(), r); });
  }
}

void reduceNative(const MpiComm& c, const void* in, void* out, size_t count, DataType dt, ReduceOp op, int root,
                  const NativeWait& w) {
  MPI_Datatype t = mpiType(dt);
  MPI_Op o = mpiOp(dt, op);
  size_t es = dtypeSize(dt);
  bool isRoot = c.rank() == root;
  for (size_t off = 0; off < count; off += kMaxCount) {
    int n = static_cast<int>(std::min(kMaxCount, count - off));
    const void* send = isRoot && in == out ? MPI_IN_PLACE : static_cast<const char*>(in) + off * es;
    char* recv = isRoot ? static_cast<char*>(out) + off * es : nullptr;  // only the root's is read
    run(w, "MPI_Ireduce", [&](MPI_Request* r) { return MPI_Ireduce(send, recv, n, t, o, root, c.get(), r); });
  }
}

void broadcastNative(const MpiComm& c, void* buf, size_t count, DataType dt, int root, const NativeWait& w) {
  MPI_Datatype t = mpiType(dt);
  size_t es = dtypeSize(dt);
  for (size_t off = 0; off < count; off += kMaxCount) {
    int n = static_cast<int>(std::min(kMaxCount, count - off));
    char* p = static_cast<char*>(buf) + off * es;
    run(w, "MPI_Ibcast", [&](MPI_Request* r) { return MPI_Ibcast(p, n, t, root, c.get(), r); });
  }
}

void allgathervNative(const MpiComm& c, const void* in, void* out, const std::vector<size_t>& counts, DataType dt,
                      const NativeWait& w) {
  std::vector<size_t> displs(counts.size(), 0);
  for (size_t r = 1; r < counts.size(); ++r) displs[r] = displs[r - 1] + counts[r - 1];
  std::vector<int> n = intCounts(counts, w), d = intCounts(displs, w);
  MPI_Datatype t = mpiType(dt);
  int me = c.rank();
  // This rank's block already in place (torch's all_gather_into_tensor does that).
  const void* send = in == static_cast<const char*>(out) + displs[me] * dtypeSize(dt) ? MPI_IN_PLACE : in;
  run(w, "MPI_Iallgatherv", [&](MPI_Request* r) {
    return MPI_Iallgatherv(send, n[me], t, out, n.data(), d.data(), t, c.get(), r);
  });
}

void reduceScattervNative(const MpiComm& c, const void* in, void* out, const std::vector<size_t>& counts,
                          DataType dt, ReduceOp op, const NativeWait& w) {
  std::vector<int> n = intCounts(counts, w);
  size_t es = dtypeSize(dt), total = 0;
  for (size_t x : counts) total += x;
  const void* send = in == out ? MPI_IN_PLACE : in;
  std::vector<char> copy;
  if (in != out && overlaps(in, total * es, out, counts[c.rank()] * es)) {  // MPI forbids partial aliasing
    copy.assign(static_cast<const char*>(in), static_cast<const char*>(in) + total * es);
    send = copy.data();
  }
  MPI_Datatype t = mpiType(dt);
  MPI_Op o = mpiOp(dt, op);
  run(w, "MPI_Ireduce_scatter", [&](MPI_Request* r) {
    return MPI_Ireduce_scatter(send, out, n.data(), t, o, c.get(), r);
  });
}

void barrierNative(const MpiComm& c, const NativeWait& w) {
  run(w, "MPI_Ibarrier", [&](MPI_Request* r) { return MPI_Ibarrier(c.get(), r); });
}

}  // namespace algo
}  // namespace hcomm

#else  // built without MPI: transport/mpi.cc is not compiled, so its entry points live here

namespace hcomm {

namespace {
[[noreturn]] void noMpi() {
  throw Error("hcomm was built without MPI (HCOMM_WITH_MPI=0): install Open MPI's development files "
              "(mpicc) and rebuild to use the mpi transport or the native algorithm");
}
}  // namespace

std::string mpiIdentity(bool required) {
  if (required) noMpi();
  return "-";
}
MpiCommPtr mpiCommFor(const std::vector<std::string>&, bool required) {
  if (required) noMpi();
  return nullptr;
}
MpiCommPtr mpiSplit(const MpiComm&, int, int) { noMpi(); }
std::shared_ptr<Transport> makeMpiTransport(const MpiCommPtr&, double) { noMpi(); }

namespace algo {
void allreduceNative(const MpiComm&, const void*, void*, size_t, DataType, ReduceOp, const NativeWait&) { noMpi(); }
void reduceNative(const MpiComm&, const void*, void*, size_t, DataType, ReduceOp, int, const NativeWait&) { noMpi(); }
void broadcastNative(const MpiComm&, void*, size_t, DataType, int, const NativeWait&) { noMpi(); }
void allgathervNative(const MpiComm&, const void*, void*, const std::vector<size_t>&, DataType, const NativeWait&) {
  noMpi();
}
void reduceScattervNative(const MpiComm&, const void*, void*, const std::vector<size_t>&, DataType, ReduceOp,
                          const NativeWait&) {
  noMpi();
}
void barrierNative(const MpiComm&, const NativeWait&) { noMpi(); }
}  // namespace algo

}  // namespace hcomm

#endif
