// hcomm's own declarations of the parts of Huawei's HCCL and AscendCL (aclrt) C APIs
// it calls, so hcomm builds without the CANN toolkit and loads libhccl.so and
// libascendcl.so at run time (transport/hccl.cc). Values and signatures follow CANN's
// public hccl.h / hccl_types.h / acl_rt.h; handles are opaque pointers there too.
#pragma once
#include <cstddef>
#include <cstdint>

namespace hcomm {
namespace hccl {

using Comm = void*;       // HcclComm
using AclStream = void*;  // aclrtStream
using AclError = int;     // aclError; 0 is ACL_SUCCESS
using AclEvent = void*;   // aclrtEvent

constexpr size_t kRootInfoBytes = 4108;  // HCCL_ROOT_INFO_BYTES
struct RootInfo {
  char internal[kRootInfoBytes];
};

enum Result : int {
  HCCL_SUCCESS = 0,
  HCCL_E_PARA = 1,
  HCCL_E_PTR = 2,
  HCCL_E_MEMORY = 3,
  HCCL_E_INTERNAL = 4,
  HCCL_E_NOT_SUPPORT = 5,
  HCCL_E_NOT_FOUND = 6,
  HCCL_E_UNAVAIL = 7,
  HCCL_E_SYSCALL = 8,
  HCCL_E_TIMEOUT = 9,
};

enum ReduceOp : int { HCCL_REDUCE_SUM = 0, HCCL_REDUCE_PROD = 1, HCCL_REDUCE_MAX = 2, HCCL_REDUCE_MIN = 3 };

enum DataType : int {
  HCCL_DATA_TYPE_INT8 = 0,
  HCCL_DATA_TYPE_INT16 = 1,
  HCCL_DATA_TYPE_INT32 = 2,
  HCCL_DATA_TYPE_FP16 = 3,
  HCCL_DATA_TYPE_FP32 = 4,
  HCCL_DATA_TYPE_INT64 = 5,
  HCCL_DATA_TYPE_UINT64 = 6,
  HCCL_DATA_TYPE_UINT8 = 7,
  HCCL_DATA_TYPE_UINT16 = 8,
  HCCL_DATA_TYPE_UINT32 = 9,
  HCCL_DATA_TYPE_FP64 = 10,
  HCCL_DATA_TYPE_BFP16 = 11,
};

// libhccl.so
using GetRootInfoFn = Result (*)(RootInfo* rootInfo);
using CommInitRootInfoFn = Result (*)(uint32_t nRanks, const RootInfo* rootInfo, uint32_t rank, Comm* comm);
using AllReduceFn = Result (*)(void* sendBuf, void* recvBuf, uint64_t count, DataType dataType, ReduceOp op,
                               Comm comm, AclStream stream);
using ReduceFn = Result (*)(void* sendBuf, void* recvBuf, uint64_t count, DataType dataType, ReduceOp op,
                            uint32_t root, Comm comm, AclStream stream);
using BroadcastFn = Result (*)(void* buf, uint64_t count, DataType dataType, uint32_t root, Comm comm,
                               AclStream stream);
using AllGatherFn = Result (*)(void* sendBuf, void* recvBuf, uint64_t sendCount, DataType dataType, Comm comm,
                               AclStream stream);
using ReduceScatterFn = Result (*)(void* sendBuf, void* recvBuf, uint64_t recvCount, DataType dataType,
                                   ReduceOp op, Comm comm, AclStream stream);
using SendFn = Result (*)(void* sendBuf, uint64_t count, DataType dataType, uint32_t destRank, Comm comm,
                          AclStream stream);
using RecvFn = Result (*)(void* recvBuf, uint64_t count, DataType dataType, uint32_t srcRank, Comm comm,
                          AclStream stream);
using CommDestroyFn = Result (*)(Comm comm);

#define HCOMM_HCCL_FUNCTIONS(X)                                                                        \
  X(GetRootInfo) X(CommInitRootInfo) X(AllReduce) X(Reduce) X(Broadcast) X(AllGather) X(ReduceScatter) \
  X(Send) X(Recv) X(CommDestroy)

// libascendcl.so
using AclInitFn = AclError (*)(const char* configPath);
using AclrtSetDeviceFn = AclError (*)(int32_t deviceId);
using AclrtGetDeviceCountFn = AclError (*)(uint32_t* count);
using AclrtCreateStreamFn = AclError (*)(AclStream* stream);
using AclrtSynchronizeStreamFn = AclError (*)(AclStream stream);
using AclrtDestroyStreamFn = AclError (*)(AclStream stream);
// Device memory and events: what the NPU Memory (device/npu_memory.h) and the HCCL
// transport (transport/hccl_transport.h) use.
enum MemcpyKind : int { kHostToHost = 0, kHostToDevice = 1, kDeviceToHost = 2, kDeviceToDevice = 3 };
constexpr int kMallocHugeFirst = 0;    // ACL_MEM_MALLOC_HUGE_FIRST
constexpr int kEventNotReady = 0;      // ACL_EVENT_RECORDED_STATUS_NOT_READY
constexpr int kEventComplete = 1;      // ACL_EVENT_RECORDED_STATUS_COMPLETE
using AclrtMallocFn = AclError (*)(void** devPtr, size_t size, int policy);
using AclrtFreeFn = AclError (*)(void* devPtr);
using AclrtMemcpyFn = AclError (*)(void* dst, size_t destMax, const void* src, size_t count, int kind);
using AclrtMemcpyAsyncFn = AclError (*)(void* dst, size_t destMax, const void* src, size_t count, int kind,
                                        AclStream stream);
using AclrtCreateEventFn = AclError (*)(AclEvent* event);
using AclrtDestroyEventFn = AclError (*)(AclEvent event);
using AclrtRecordEventFn = AclError (*)(AclEvent event, AclStream stream);
using AclrtQueryEventStatusFn = AclError (*)(AclEvent event, int* status);
using AclrtStreamWaitEventFn = AclError (*)(AclStream stream, AclEvent event);
// Host callbacks on a stream: run by the host thread bound to the stream
// (aclrtSubscribeReport) inside its aclrtProcessReport; ACL_CALLBACK_BLOCK holds the
// stream until the callback returns.
constexpr int kCallbackBlock = 1;               // ACL_CALLBACK_BLOCK
constexpr AclError kCallbackTimeout = 100036;   // ACL_ERROR_WAIT_CALLBACK_TIMEOUT (nothing to run)
constexpr AclError kRepeatSubscribe = 100033;   // ACL_ERROR_REPEAT_SUBSCRIBE (bound to another thread)
using AclrtSubscribeReportFn = AclError (*)(uint64_t threadId, AclStream stream);
using AclrtUnSubscribeReportFn = AclError (*)(uint64_t threadId, AclStream stream);
using AclrtProcessReportFn = AclError (*)(int32_t timeout);
using AclrtLaunchCallbackFn = AclError (*)(void (*fn)(void*), void* userData, int blockType, AclStream stream);

#define HCOMM_ACL_FUNCTIONS(X)                                                                  \
  X(aclInit, AclInit) X(aclrtSetDevice, AclrtSetDevice) X(aclrtGetDeviceCount, AclrtGetDeviceCount) \
  X(aclrtCreateStream, AclrtCreateStream) X(aclrtSynchronizeStream, AclrtSynchronizeStream)         \
  X(aclrtDestroyStream, AclrtDestroyStream) X(aclrtMalloc, AclrtMalloc) X(aclrtFree, AclrtFree)               \
  X(aclrtMemcpy, AclrtMemcpy) X(aclrtMemcpyAsync, AclrtMemcpyAsync) X(aclrtCreateEvent, AclrtCreateEvent)    \
  X(aclrtDestroyEvent, AclrtDestroyEvent) X(aclrtRecordEvent, AclrtRecordEvent)                              \
  X(aclrtQueryEventStatus, AclrtQueryEventStatus) X(aclrtStreamWaitEvent, AclrtStreamWaitEvent)             \
  X(aclrtSubscribeReport, AclrtSubscribeReport) X(aclrtUnSubscribeReport, AclrtUnSubscribeReport)            \
  X(aclrtProcessReport, AclrtProcessReport) X(aclrtLaunchCallback, AclrtLaunchCallback)

struct Api {
#define HCOMM_HCCL_MEMBER(name) name##Fn name = nullptr;
  HCOMM_HCCL_FUNCTIONS(HCOMM_HCCL_MEMBER)
#undef HCOMM_HCCL_MEMBER
#define HCOMM_ACL_MEMBER(symbol, name) name##Fn name = nullptr;
  HCOMM_ACL_FUNCTIONS(HCOMM_ACL_MEMBER)
#undef HCOMM_ACL_MEMBER
};

}  // namespace hccl
}  // namespace hcomm
