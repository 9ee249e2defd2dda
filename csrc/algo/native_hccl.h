// Native HCCL: a whole collective handed to HCCL's own implementation on NPU buffers
// (HcclAllReduce, HcclReduce, HcclBroadcast, HcclAllGather, HcclReduceScatter), queued on
// the communicator's NPU stream. The pattern of native_mpi.h, one engine further.
//
// Cost: whatever HCCL's own algorithm selection gives (ring, RHD, NHR, ... on the HCCS
// / RoCE links it knows); one host call and one stream synchronisation per collective.
// It wins whenever HCCL runs on real NPUs: its reductions run on the device, where
// hcomm's algorithms over the HCCL transport reduce through host copies
// (device/npu_memory.h). It is what device calls with no algorithm choice run.
//
// Ops HCCL lacks are built around it: PREMUL_SUM scales the input into the output with
// the NPU Memory, then sums in place; AVG sums, then divides by the group size (integer
// division for integers, as the host path does); bool sum / prod are max / min.
// allgather and reduce_scatter take equal counts only (HCCL's are not v-variants).
#pragma once
#include <cstddef>

#include "common/fingerprint.h"
#include "common/types.h"

namespace hcomm {

class HcclComm;
class Memory;

namespace algo {

// `m` is the NPU Memory of the buffers; `stream` the aclrtStream HCCL runs on. Each
// returns when the collective is done (synchronised with `timeoutSec`).
void allreduceHccl(HcclComm& c, const Memory& m, const void* in, void* out, size_t count, DataType dt, ReduceOp op,
                   double premul, void* stream, double timeoutSec);
void reduceHccl(HcclComm& c, const Memory& m, const void* in, void* out, size_t count, DataType dt, ReduceOp op,
                double premul, int root, void* stream, double timeoutSec);
void broadcastHccl(HcclComm& c, const Memory& m, const void* in, void* out, size_t count, DataType dt, int root,
                   void* stream, double timeoutSec);
void allgatherHccl(HcclComm& c, const void* in, void* out, size_t sendCount, DataType dt, void* stream,
                   double timeoutSec);
void reduceScatterHccl(HcclComm& c, const Memory& m, const void* in, void* out, size_t recvCount, DataType dt,
                       ReduceOp op, double premul, void* stream, double timeoutSec);

}  // namespace algo

// One collective as the Communicator hands it to native HCCL: its arguments, captured
// by value in the call's body. `count` is per rank for allgather and reduce_scatter
// (HCCL's sendCount / recvCount), the whole buffer otherwise.
struct HcclCall {
  CollKind kind;
  const void* in;
  void* out;
  size_t count;
  DataType dt;
  ReduceOp op = ReduceOp::SUM;
  double premul = 1.0;
  int root = -1;
};

// Runs `call` with the functions above.
void runHcclCall(const HcclCall& call, HcclComm& c, const Memory& m, void* stream, double timeoutSec);

}  // namespace hcomm
