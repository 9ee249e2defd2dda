// native: the whole collective handed to MPI (MPI_Iallreduce, MPI_Ibcast, ...) on the
// MPI communicator that mirrors the hcomm one (transport/mpi.h).
//
// Cost: whatever the site's MPI picked (Open MPI's tuned / han rules, UCX underneath);
// it wins where that MPI knows the fabric better than hcomm's own algorithms do.
// Nonblocking calls polled with MPI_Test keep hcomm's timeout (a blocking MPI
// collective could never time out) and let other threads' MPI calls interleave when
// MPI serialises. f16 / bf16 reduce with hcomm's kernels through user-defined MPI ops;
// bool reduces with MPI_LOR (sum, max) and MPI_LAND (prod, min). The communicator
// handles size 1, count 0, AVG and PREMUL_SUM around these calls, as for every algorithm.
#pragma once
#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "algo/links.h"
#include "common/types.h"

namespace hcomm {

class MpiComm;

// How long and how to wait for MPI, and the words an error names the call with.
struct NativeWait {
  std::chrono::steady_clock::time_point deadline;
  WaitPolicy policy;
  std::string what;
};

namespace algo {

void allreduceNative(const MpiComm& c, const void* in, void* out, size_t count, DataType dt, ReduceOp op,
                     const NativeWait& w);
void reduceNative(const MpiComm& c, const void* in, void* out, size_t count, DataType dt, ReduceOp op, int root,
                  const NativeWait& w);
void broadcastNative(const MpiComm& c, void* buf, size_t count, DataType dt, int root, const NativeWait& w);
void allgathervNative(const MpiComm& c, const void* in, void* out, const std::vector<size_t>& counts, DataType dt,
                      const NativeWait& w);
void reduceScattervNative(const MpiComm& c, const void* in, void* out, const std::vector<size_t>& counts,
                          DataType dt, ReduceOp op, const NativeWait& w);
void barrierNative(const MpiComm& c, const NativeWait& w);

// native_mpi_probe.cc: MPI's own collectives timed at init (collective over `c`, n ranks):
// seconds = alpha + beta * bytes per collective, the slowest rank's, equal on every rank.
struct NativeTiming {
  std::string collective;
  double alpha = 0, beta = 0;
};
std::vector<NativeTiming> probeNativeMpi(const MpiComm& c, int n, const NativeWait& w);

}  // namespace algo
}  // namespace hcomm
