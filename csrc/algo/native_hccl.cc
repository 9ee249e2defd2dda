#include "algo/native_hccl.h"

#include "reduce/memory.h"
#include "transport/hccl.h"

namespace hcomm {
namespace algo {

namespace {

// PREMUL_SUM: the input scaled into `scratch` (HCCL then sums that). Other ops: `in`.
const void* prescaled(const Memory& m, const void* in, size_t count, DataType dt, ReduceOp op, double premul,
                      std::shared_ptr<char>* scratch) {
  if (op != ReduceOp::PREMUL_SUM) return in;
  *scratch = m.alloc(count * dtypeSize(dt));
  m.scale(dt, scratch->get(), in, count, premul);
  return scratch->get();
}

ReduceOp hcclSide(ReduceOp op) { return op == ReduceOp::AVG || op == ReduceOp::PREMUL_SUM ? ReduceOp::SUM : op; }

void averaged(const Memory& m, void* out, size_t count, DataType dt, ReduceOp op, int n) {
  if (op == ReduceOp::AVG) m.divide(dt, out, out, count, n);
}

}  // namespace

void allreduceHccl(HcclComm& c, const Memory& m, const void* in, void* out, size_t count, DataType dt, ReduceOp op,
                   double premul, void* stream, double timeoutSec) {
  std::shared_ptr<char> scratch;
  const void* src = prescaled(m, in, count, dt, op, premul, &scratch);
  c.allreduce(src, out, count, dt, hcclSide(op), stream);
  c.synchronize(stream, timeoutSec);
  averaged(m, out, count, dt, op, c.size());
}

void reduceHccl(HcclComm& c, const Memory& m, const void* in, void* out, size_t count, DataType dt, ReduceOp op,
                double premul, int root, void* stream, double timeoutSec) {
  std::shared_ptr<char> scratch, sink;
  const void* src = prescaled(m, in, count, dt, op, premul, &scratch);
  // HCCL writes recvBuf on the root only, but wants a valid one everywhere.
  void* dst = out;
  if (!dst) {
    sink = m.alloc(count * dtypeSize(dt));
    dst = sink.get();
  }
  c.reduce(src, dst, count, dt, hcclSide(op), root, stream);
  c.synchronize(stream, timeoutSec);
  if (c.rank() == root) averaged(m, out, count, dt, op, c.size());
}

void broadcastHccl(HcclComm& c, const Memory& m, const void* in, void* out, size_t count, DataType dt, int root,
                   void* stream, double timeoutSec) {
  // HCCL broadcasts in place: the root's data goes into `out` first.
  if (c.rank() == root && in && in != out) m.copy(out, in, count * dtypeSize(dt));
  c.broadcast(out, count, dt, root, stream);
  c.synchronize(stream, timeoutSec);
}

void allgatherHccl(HcclComm& c, const void* in, void* out, size_t sendCount, DataType dt, void* stream,
                   double timeoutSec) {
  c.allgather(in, out, sendCount, dt, stream);
  c.synchronize(stream, timeoutSec);
}

void reduceScatterHccl(HcclComm& c, const Memory& m, const void* in, void* out, size_t recvCount, DataType dt,
                       ReduceOp op, double premul, void* stream, double timeoutSec) {
  std::shared_ptr<char> scratch;
  const void* src = prescaled(m, in, recvCount * size_t(c.size()), dt, op, premul, &scratch);
  c.reduceScatter(src, out, recvCount, dt, hcclSide(op), stream);
  c.synchronize(stream, timeoutSec);
  averaged(m, out, recvCount, dt, op, c.size());
}

}  // namespace algo

void runHcclCall(const HcclCall& k, HcclComm& c, const Memory& m, void* stream, double timeoutSec) {
  switch (k.kind) {
    case CollKind::ALLREDUCE:
      return algo::allreduceHccl(c, m, k.in, k.out, k.count, k.dt, k.op, k.premul, stream, timeoutSec);
    case CollKind::REDUCE:
      return algo::reduceHccl(c, m, k.in, k.out, k.count, k.dt, k.op, k.premul, k.root, stream, timeoutSec);
    case CollKind::BROADCAST:
      return algo::broadcastHccl(c, m, k.in, k.out, k.count, k.dt, k.root, stream, timeoutSec);
    case CollKind::ALLGATHER:
      return algo::allgatherHccl(c, k.in, k.out, k.count, k.dt, stream, timeoutSec);
    case CollKind::REDUCE_SCATTER:
      return algo::reduceScatterHccl(c, m, k.in, k.out, k.count, k.dt, k.op, k.premul, stream, timeoutSec);
    default:
      throw Error(std::string("hccl: ") + collKindName(k.kind) + " has no native HCCL engine");
  }
}

}  // namespace hcomm
