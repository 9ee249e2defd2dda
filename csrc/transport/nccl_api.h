// hcomm's own declarations of the parts of the NCCL C API it calls (the CUDA runtime's
// are in cuda_api.h).
//
// Both libraries are loaded at run time (transport/nccl.cc), so building hcomm needs
// neither nccl.h nor cuda_runtime.h, and `import hcomm` works where neither library
// exists. Only what hcomm calls is declared; values and signatures are copied from the
// public headers by hand, and tests/test_gpu_loader.py compiles this file next to the
// real nccl.h and cuda_runtime_api.h and checks every enumerator, size and function
// type against them.
//
// Handles keep the global struct names the real headers use (struct ncclComm,
// struct CUstream_st, struct CUevent_st), so a stream from torch or CuPy is the same
// pointer type here. Enums are plain ints in namespace hcomm::nccl / hcomm::cuda.
#pragma once
#include <cstddef>
#include <cstdint>

#include "transport/cuda_api.h"

struct ncclComm;

namespace hcomm {
namespace nccl {

using Comm = ::ncclComm*;
using Stream = ::CUstream_st*;

constexpr int kUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
struct UniqueId {
  char internal[kUniqueIdBytes];
};

enum Result : int {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
};

enum DataType : int {
  ncclInt8 = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat16 = 6,
  ncclFloat32 = 7,
  ncclFloat64 = 8,
  ncclBfloat16 = 9,
};

enum RedOp : int { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 };

enum ScalarResidence : int { ncclScalarDevice = 0, ncclScalarHostImmediate = 1 };

constexpr int kSplitNoColor = -1;  // NCCL_SPLIT_NOCOLOR

// ncclConfig_t is passed as a pointer and always as null here (the defaults).
struct Config;

// Function types, named after the NCCL function without the "nccl" prefix.
using GetVersionFn = Result (*)(int* version);
using GetUniqueIdFn = Result (*)(UniqueId* uniqueId);
using CommInitRankFn = Result (*)(Comm* comm, int nranks, UniqueId commId, int rank);
using CommSplitFn = Result (*)(Comm comm, int color, int key, Comm* newcomm, Config* config);
using CommDestroyFn = Result (*)(Comm comm);
using CommAbortFn = Result (*)(Comm comm);
using CommGetAsyncErrorFn = Result (*)(Comm comm, Result* asyncError);
using GetErrorStringFn = const char* (*)(Result result);
using GetLastErrorFn = const char* (*)(Comm comm);
using GroupStartFn = Result (*)();
using GroupEndFn = Result (*)();
using SendFn = Result (*)(const void* sendbuff, size_t count, DataType datatype, int peer, Comm comm, Stream stream);
using RecvFn = Result (*)(void* recvbuff, size_t count, DataType datatype, int peer, Comm comm, Stream stream);
using AllReduceFn = Result (*)(const void* sendbuff, void* recvbuff, size_t count, DataType datatype, RedOp op,
                               Comm comm, Stream stream);
using ReduceFn = Result (*)(const void* sendbuff, void* recvbuff, size_t count, DataType datatype, RedOp op,
                            int root, Comm comm, Stream stream);
using BroadcastFn = Result (*)(const void* sendbuff, void* recvbuff, size_t count, DataType datatype, int root,
                               Comm comm, Stream stream);
using AllGatherFn = Result (*)(const void* sendbuff, void* recvbuff, size_t sendcount, DataType datatype, Comm comm,
                               Stream stream);
using ReduceScatterFn = Result (*)(const void* sendbuff, void* recvbuff, size_t recvcount, DataType datatype,
                                   RedOp op, Comm comm, Stream stream);
using RedOpCreatePreMulSumFn = Result (*)(RedOp* op, void* scalar, DataType datatype, ScalarResidence residence,
                                          Comm comm);
using RedOpDestroyFn = Result (*)(RedOp op, Comm comm);

// The resolved entry points of one loaded libnccl. X-macro so the loader, the
// declaration test and this table never disagree about the list.
#define HCOMM_NCCL_FUNCTIONS(X)                                                                         \
  X(GetVersion) X(GetUniqueId) X(CommInitRank) X(CommSplit) X(CommDestroy) X(CommAbort)              \
  X(CommGetAsyncError) X(GetErrorString) X(GetLastError) X(GroupStart) X(GroupEnd) X(Send) X(Recv)   \
  X(AllReduce) X(Reduce) X(Broadcast) X(AllGather) X(ReduceScatter) X(RedOpCreatePreMulSum)          \
  X(RedOpDestroy)

struct Api {
#define HCOMM_NCCL_MEMBER(name) name##Fn name = nullptr;
  HCOMM_NCCL_FUNCTIONS(HCOMM_NCCL_MEMBER)
#undef HCOMM_NCCL_MEMBER
};

}  // namespace nccl


}  // namespace hcomm
