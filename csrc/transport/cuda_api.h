// hcomm's own declarations of the parts of the CUDA runtime C API it calls.
//
// The runtime is reached through these (transport/cuda_runtime.h resolves them from the
// runtime linked into hcomm, or from a library named by HCOMM_CUDART_LIB, e.g. the
// host-memory fake the tests use), so building hcomm needs no cuda_runtime.h. Values and
// signatures are copied from the public headers by hand; tests/test_gpu_loader.py
// compiles this file next to the real cuda_runtime_api.h and checks every enumerator,
// struct layout, size and function type against it.
//
// Handles keep the global struct names the real headers use (struct CUstream_st,
// struct CUevent_st), so a stream from torch or CuPy is the same pointer type here.
#pragma once
#include <cstddef>
#include <cstdint>

struct CUstream_st;
struct CUevent_st;

namespace hcomm {
namespace cuda {

using Stream = ::CUstream_st*;
using Event = ::CUevent_st*;

enum Error : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidDevice = 101,
  cudaErrorDeviceUninitialized = 201,
  cudaErrorMapBufferObjectFailed = 205,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
};

enum MemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum MemoryType : int {
  cudaMemoryTypeUnregistered = 0,
  cudaMemoryTypeHost = 1,
  cudaMemoryTypeDevice = 2,
  cudaMemoryTypeManaged = 3,
};

constexpr unsigned kStreamNonBlocking = 0x01;          // cudaStreamNonBlocking
constexpr unsigned kEventDisableTiming = 0x02;         // cudaEventDisableTiming
constexpr unsigned kEventInterprocess = 0x04;          // cudaEventInterprocess (with DisableTiming)
constexpr unsigned kHostAllocDefault = 0x00;           // cudaHostAllocDefault
constexpr unsigned kIpcMemLazyEnablePeerAccess = 0x01; // cudaIpcMemLazyEnablePeerAccess
constexpr int kIpcHandleBytes = 64;                    // CUDA_IPC_HANDLE_SIZE

// cudaIpcMemHandle_t / cudaIpcEventHandle_t: opaque, passed by value.
struct IpcMemHandle {
  char reserved[kIpcHandleBytes];
};
struct IpcEventHandle {
  char reserved[kIpcHandleBytes];
};
// struct cudaPointerAttributes (type is enum cudaMemoryType).
struct PointerAttributes {
  MemoryType type;
  int device;
  void* devicePointer;
  void* hostPointer;
  long reserved[8];  // CUDA 13 (12.x has none; a larger buffer is harmless there)
};
using HostFn = void (*)(void* userData);  // cudaHostFn_t (CUDART_CB is empty on Linux)

using GetDeviceCountFn = Error (*)(int* count);
using SetDeviceFn = Error (*)(int device);
using GetDeviceFn = Error (*)(int* device);
using DeviceGetPCIBusIdFn = Error (*)(char* pciBusId, int len, int device);
using StreamCreateWithFlagsFn = Error (*)(Stream* stream, unsigned int flags);
using StreamDestroyFn = Error (*)(Stream stream);
using StreamSynchronizeFn = Error (*)(Stream stream);
using StreamQueryFn = Error (*)(Stream stream);
using StreamWaitEventFn = Error (*)(Stream stream, Event event, unsigned int flags);
using EventCreateWithFlagsFn = Error (*)(Event* event, unsigned int flags);
using EventRecordFn = Error (*)(Event event, Stream stream);
using EventQueryFn = Error (*)(Event event);
using EventSynchronizeFn = Error (*)(Event event);
using EventDestroyFn = Error (*)(Event event);
using MallocFn = Error (*)(void** devPtr, size_t size);
using FreeFn = Error (*)(void* devPtr);
using HostAllocFn = Error (*)(void** pHost, size_t size, unsigned int flags);
using FreeHostFn = Error (*)(void* ptr);
using MemcpyFn = Error (*)(void* dst, const void* src, size_t count, MemcpyKind kind);
using MemcpyAsyncFn = Error (*)(void* dst, const void* src, size_t count, MemcpyKind kind, Stream stream);
using PointerGetAttributesFn = Error (*)(PointerAttributes* attributes, const void* ptr);
using IpcGetMemHandleFn = Error (*)(IpcMemHandle* handle, void* devPtr);
using IpcOpenMemHandleFn = Error (*)(void** devPtr, IpcMemHandle handle, unsigned int flags);
using IpcCloseMemHandleFn = Error (*)(void* devPtr);
using IpcGetEventHandleFn = Error (*)(IpcEventHandle* handle, Event event);
using IpcOpenEventHandleFn = Error (*)(Event* event, IpcEventHandle handle);
using LaunchHostFuncFn = Error (*)(Stream stream, HostFn fn, void* userData);
using GetErrorStringFn = const char* (*)(Error error);

#define HCOMM_CUDART_FUNCTIONS(X)                                                                      \
  X(GetDeviceCount) X(SetDevice) X(GetDevice) X(DeviceGetPCIBusId) X(StreamCreateWithFlags)           \
  X(StreamDestroy) X(StreamSynchronize) X(StreamQuery) X(StreamWaitEvent) X(EventCreateWithFlags)     \
  X(EventRecord) X(EventQuery) X(EventSynchronize) X(EventDestroy) X(Malloc) X(Free) X(HostAlloc)     \
  X(FreeHost) X(Memcpy) X(MemcpyAsync) X(PointerGetAttributes) X(IpcGetMemHandle) X(IpcOpenMemHandle) \
  X(IpcCloseMemHandle) X(IpcGetEventHandle) X(IpcOpenEventHandle) X(LaunchHostFunc) X(GetErrorString)

struct Api {
#define HCOMM_CUDART_MEMBER(name) name##Fn name = nullptr;
  HCOMM_CUDART_FUNCTIONS(HCOMM_CUDART_MEMBER)
#undef HCOMM_CUDART_MEMBER
};

}  // namespace cuda
}  // namespace hcomm
