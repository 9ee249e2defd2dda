// native (device buffers): the whole collective handed to NCCL (ncclAllReduce,
// ncclBroadcast, ...) on the world communicator of the Communicator's NcclTransport
// (transport/nccl.h), beside native_mpi.h which does the same with MPI for host buffers.
//
// Cost: NCCL's own (ring / tree / NVLS, chosen by NCCL's tuning.cc for the fabric it
// found). hcomm does not model NCCL's algorithms: it times NCCL's allreduce at two
// sizes when NCCL is set up and prices every native call from that fit
// (topo/native_cost.h), so native wins where the measurement says NCCL is faster than
// hcomm's own algorithms over cuda_ipc / NCCL point to point / staging.
//
// Work is queued on `stream` (the Communicator's device stream) and returns at once;
// the caller synchronises. AVG and PREMUL_SUM follow the core's definitions: NCCL's
// ncclAvg for floating types and a sum divided afterwards for integers; ncclPreMulSum
// for float32 / float64 and a scaled copy first for other types (allreduce,
// reduce_scatter; reduce refuses them, its non-roots having no buffer for the copy).
// bool reduces as logical or (sum, max) and and (prod, min) on 0/1 bytes. Counts are
// NCCL's (size_t), so no splitting is needed.
#pragma once
#include <cstddef>

#include "common/types.h"

namespace hcomm {

class NcclTransport;

namespace algo {

void allreduceNccl(NcclTransport& t, const void* in, void* out, size_t count, DataType dt, ReduceOp op,
                   double premul, void* stream);
void reduceNccl(NcclTransport& t, const void* in, void* out, size_t count, DataType dt, ReduceOp op, double premul,
                int root, void* stream);
void broadcastNccl(NcclTransport& t, const void* in, void* out, size_t count, DataType dt, int root, void* stream);
// Equal blocks only (ncclAllGather / ncclReduceScatter): `blockCount` elements per rank.
void allgatherNccl(NcclTransport& t, const void* in, void* out, size_t blockCount, DataType dt, void* stream);
void reduceScatterNccl(NcclTransport& t, const void* in, void* out, size_t blockCount, DataType dt, ReduceOp op,
                       double premul, void* stream);

}  // namespace algo
}  // namespace hcomm
