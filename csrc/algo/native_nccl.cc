#include "algo/native_nccl.h"

#include "device/kernels.h"
#include "transport/nccl.h"

namespace hcomm {
namespace algo {

namespace {

bool ncclPremulType(DataType dt) { return dt == DataType::F32 || dt == DataType::F64; }

// NCCL's reduction op for (dt, op) on `comm`; a premul-sum op made for the call is
// destroyed with this object (after the call was queued, as NCCL allows).
class RedOp {
 public:
  RedOp(NcclTransport& t, nccl::Comm comm, DataType dt, ReduceOp op, double premul) : t_(t), comm_(comm) {
    op_ = builtin(dt, op);
    if (op != ReduceOp::PREMUL_SUM || !ncclPremulType(dt)) return;
    float f = float(premul);
    void* scalar = dt == DataType::F32 ? static_cast<void*>(&f) : static_cast<void*>(&premul);
    t.check(t.api().RedOpCreatePreMulSum(&op_, scalar, ncclType(dt), nccl::ncclScalarHostImmediate, comm),
            "ncclRedOpCreatePreMulSum");
    custom_ = true;
  }
  ~RedOp() {
    if (custom_) t_.api().RedOpDestroy(op_, comm_);
  }
  RedOp(const RedOp&) = delete;
  RedOp& operator=(const RedOp&) = delete;
  nccl::RedOp get() const { return op_; }

 private:
  static nccl::RedOp builtin(DataType dt, ReduceOp op) {
    if (dt == DataType::BOOL) {  // logical or / and on 0-1 bytes
      if (op == ReduceOp::SUM) return nccl::ncclMax;
      if (op == ReduceOp::PROD) return nccl::ncclMin;
    }
    switch (op) {
      case ReduceOp::SUM: return nccl::ncclSum;
      case ReduceOp::PROD: return nccl::ncclProd;
      case ReduceOp::MIN: return nccl::ncclMin;
      case ReduceOp::MAX: return nccl::ncclMax;
      case ReduceOp::AVG: return isFloating(dt) ? nccl::ncclAvg : nccl::ncclSum;  // integers: divided after
      case ReduceOp::PREMUL_SUM: return nccl::ncclSum;  // other types: scaled copy first (preScale)
    }
    throw Error("nccl: unknown reduce op");
  }

  NcclTransport& t_;
  nccl::Comm comm_;
  nccl::RedOp op_;
  bool custom_ = false;
};

// For ops NCCL cannot do directly: a scaled copy before (into `out`) ...
const void* preScale(DataType dt, ReduceOp op, double premul, const void* in, void* out, size_t count,
                     nccl::Stream s) {
  if (op != ReduceOp::PREMUL_SUM || ncclPremulType(dt)) return in;
  deviceKernels().scale(dt, out, in, count, premul, s);
  return out;
}

// ... and an integer average divided after (device kernels, in stream order).
void postDivide(DataType dt, ReduceOp op, void* out, size_t count, int size, nccl::Stream s) {
  if (op != ReduceOp::AVG || isFloating(dt)) return;
  deviceKernels().divide(dt, out, out, count, size, s);
}

void refuseOddPremul(const char* collective, DataType dt, ReduceOp op) {
  if (op == ReduceOp::PREMUL_SUM && !ncclPremulType(dt))
    throw Error(std::string("nccl: ") + collective + " with premul_sum supports float32 and float64, not " +
                dtypeName(dt));
}

}  // namespace

void allreduceNccl(NcclTransport& t, const void* in, void* out, size_t count, DataType dt, ReduceOp op,
                   double premul, void* stream) {
  if (count == 0) return;
  t.withWorld(stream, [&](nccl::Comm comm, nccl::Stream s) {
    const void* src = preScale(dt, op, premul, in, out, count, s);
    RedOp r(t, comm, dt, op, premul);
    t.check(t.api().AllReduce(src, out, count, ncclType(dt), r.get(), comm, s), "ncclAllReduce");
    postDivide(dt, op, out, count, t.size(), s);
  });
}

void reduceNccl(NcclTransport& t, const void* in, void* out, size_t count, DataType dt, ReduceOp op, double premul,
                int root, void* stream) {
  if (count == 0) return;
  refuseOddPremul("reduce", dt, op);
  t.withWorld(stream, [&](nccl::Comm comm, nccl::Stream s) {
    RedOp r(t, comm, dt, op, premul);
    t.check(t.api().Reduce(in, out, count, ncclType(dt), r.get(), root, comm, s), "ncclReduce");
    if (t.rank() == root) postDivide(dt, op, out, count, t.size(), s);
  });
}

void broadcastNccl(NcclTransport& t, const void* in, void* out, size_t count, DataType dt, int root, void* stream) {
  if (count == 0) return;
  t.withWorld(stream, [&](nccl::Comm comm, nccl::Stream s) {
    t.check(t.api().Broadcast(in, out, count, ncclType(dt), root, comm, s), "ncclBroadcast");
  });
}

void allgatherNccl(NcclTransport& t, const void* in, void* out, size_t blockCount, DataType dt, void* stream) {
  if (blockCount == 0) return;
  t.withWorld(stream, [&](nccl::Comm comm, nccl::Stream s) {
    t.check(t.api().AllGather(in, out, blockCount, ncclType(dt), comm, s), "ncclAllGather");
  });
}

void reduceScatterNccl(NcclTransport& t, const void* in, void* out, size_t blockCount, DataType dt, ReduceOp op,
                       double premul, void* stream) {
  if (blockCount == 0) return;
  refuseOddPremul("reduce_scatter", dt, op);
  t.withWorld(stream, [&](nccl::Comm comm, nccl::Stream s) {
    RedOp r(t, comm, dt, op, premul);
    t.check(t.api().ReduceScatter(in, out, blockCount, ncclType(dt), r.get(), comm, s), "ncclReduceScatter");
    postDivide(dt, op, out, blockCount, t.size(), s);
  });
}

}  // namespace algo
}  // namespace hcomm
