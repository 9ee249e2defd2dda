// CUDA reduction kernels: the device twin of kernels.inc (see cuda_reduce.h for the
// contract). One grid-stride kernel per (dtype, op); when all three pointers are
// 16-byte aligned each thread moves 16 bytes per load, so 1- and 2-byte types use the
// memory bus as well as f32 does. f16/bf16 widen to f32, combine, and round back to
// nearest-even, which gives the CPU kernels' bits (NaN payloads aside).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstring>
#include <type_traits>

#include "common/types.h"
#include "reduce/cuda_reduce.h"

namespace hcomm {
namespace {

constexpr int kThreads = 256;
constexpr size_t kMaxBlocks = 4096;  // grid-stride beyond this: enough to fill any current GPU

// How an element is widened for arithmetic and narrowed back.
template <typename T>
struct Elem {
  using Compute = T;
  __device__ static Compute load(T v) { return v; }
  __device__ static T store(Compute c) { return c; }
};
template <>
struct Elem<__half> {
  using Compute = float;
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float c) { return __float2half_rn(c); }
};
template <>
struct Elem<__nv_bfloat16> {
  using Compute = float;
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float c) { return __float2bfloat16_rn(c); }
};

// Integer sums and products wrap (two's complement) like numpy: computed unsigned.
template <typename T, bool = std::is_integral<T>::value>
struct WideOf { using type = T; };
template <typename T>
struct WideOf<T, true> { using type = std::make_unsigned_t<T>; };
template <typename T>
using Wide = typename WideOf<T>::type;

struct Sum { template <typename T> __device__ T operator()(T a, T b) const { return T(Wide<T>(a) + Wide<T>(b)); } };
struct Prod { template <typename T> __device__ T operator()(T a, T b) const { return T(Wide<T>(a) * Wide<T>(b)); } };
// The CPU kernels' comparisons, so NaN propagates the same way (a NaN in `a` wins).
struct Min { template <typename T> __device__ T operator()(T a, T b) const { return b < a ? b : a; } };
struct Max { template <typename T> __device__ T operator()(T a, T b) const { return a < b ? b : a; } };

template <typename T, typename Op>
__device__ T combine(T a, T b) {
  return Elem<T>::store(Op()(Elem<T>::load(a), Elem<T>::load(b)));
}

template <typename T, typename Op>
__global__ void reduceKernel(T* d, const T* a, const T* b, size_t n, bool vectorized) {
  constexpr size_t kPack = 16 / sizeof(T);
  size_t tid = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t packs = vectorized ? n / kPack : 0;
  for (size_t p = tid; p < packs; p += stride) {
    uint4 x = reinterpret_cast<const uint4*>(a)[p], y = reinterpret_cast<const uint4*>(b)[p], z;
    const T* xe = reinterpret_cast<const T*>(&x);
    const T* ye = reinterpret_cast<const T*>(&y);
    T* ze = reinterpret_cast<T*>(&z);
#pragma unroll
    for (size_t k = 0; k < kPack; ++k) ze[k] = combine<T, Op>(xe[k], ye[k]);
    reinterpret_cast<uint4*>(d)[p] = z;
  }
  for (size_t i = packs * kPack + tid; i < n; i += stride) d[i] = combine<T, Op>(a[i], b[i]);
}

template <typename T>
__global__ void scaleKernel(T* d, const T* s, size_t n, double factor) {
  size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if constexpr (std::is_integral<T>::value) {
      d[i] = T(Wide<T>(s[i]) * Wide<T>(int64_t(factor)));
    } else {
      using C = typename Elem<T>::Compute;
      d[i] = Elem<T>::store(Elem<T>::load(s[i]) * C(factor));
    }
  }
}

template <typename T>
__global__ void divideKernel(T* d, const T* s, size_t n, int64_t divisor) {
  size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if constexpr (std::is_integral<T>::value) {
      d[i] = T(int64_t(s[i]) / divisor);
    } else {
      using C = typename Elem<T>::Compute;
      d[i] = Elem<T>::store(Elem<T>::load(s[i]) / C(divisor));
    }
  }
}

// Memory::accumulate on the device (reduce/memory.h): one step of a fold carried in the
// compute type (float32 for f16/bf16), rounded to T only when dst is not wide.
template <typename T, typename Op>
__global__ void accumulateKernel(void* d, bool dWide, const void* a, bool aWide, const T* b, size_t n) {
  using C = typename Elem<T>::Compute;
  size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    C t = Elem<T>::load(b[i]);
    if (a) {
      C x = aWide ? C(static_cast<const float*>(a)[i]) : Elem<T>::load(static_cast<const T*>(a)[i]);
      t = Op()(x, t);
    }
    if (dWide) static_cast<float*>(d)[i] = float(t);
    else static_cast<T*>(d)[i] = Elem<T>::store(t);
  }
}

unsigned blocksFor(size_t work) {
  size_t blocks = (work + kThreads - 1) / kThreads;
  return unsigned(blocks < 1 ? 1 : blocks > kMaxBlocks ? kMaxBlocks : blocks);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T, typename Op>
int launchReduce(void* d, const void* a, const void* b, size_t n, cudaStream_t s) {
  bool vec = aligned16(d) && aligned16(a) && aligned16(b);
  size_t work = vec ? n / (16 / sizeof(T)) + n % (16 / sizeof(T)) : n;
  reduceKernel<T, Op><<<blocksFor(work), kThreads, 0, s>>>(static_cast<T*>(d), static_cast<const T*>(a),
                                                           static_cast<const T*>(b), n, vec);
  return int(cudaGetLastError());
}

template <typename Op>
int reduceByType(DataType dt, void* d, const void* a, const void* b, size_t n, cudaStream_t s) {
  switch (dt) {
    case DataType::F16: return launchReduce<__half, Op>(d, a, b, n, s);
    case DataType::BF16: return launchReduce<__nv_bfloat16, Op>(d, a, b, n, s);
    case DataType::F32: return launchReduce<float, Op>(d, a, b, n, s);
    case DataType::F64: return launchReduce<double, Op>(d, a, b, n, s);
    case DataType::I8: return launchReduce<int8_t, Op>(d, a, b, n, s);
    case DataType::U8: case DataType::BOOL: return launchReduce<uint8_t, Op>(d, a, b, n, s);
    case DataType::I32: return launchReduce<int32_t, Op>(d, a, b, n, s);
    case DataType::I64: return launchReduce<int64_t, Op>(d, a, b, n, s);
  }
  return int(cudaErrorInvalidValue);
}

// Calls fn(T*) with a null pointer of the element type of `dt` (bool as uint8).
template <typename Fn>
int byElementType(DataType dt, Fn fn) {
  switch (dt) {
    case DataType::F16: return fn(static_cast<__half*>(nullptr));
    case DataType::BF16: return fn(static_cast<__nv_bfloat16*>(nullptr));
    case DataType::F32: return fn(static_cast<float*>(nullptr));
    case DataType::F64: return fn(static_cast<double*>(nullptr));
    case DataType::I8: return fn(static_cast<int8_t*>(nullptr));
    case DataType::U8: case DataType::BOOL: return fn(static_cast<uint8_t*>(nullptr));
    case DataType::I32: return fn(static_cast<int32_t*>(nullptr));
    case DataType::I64: return fn(static_cast<int64_t*>(nullptr));
  }
  return int(cudaErrorInvalidValue);
}

bool validDtype(int dtype) { return dtype >= int(DataType::F16) && dtype <= int(DataType::BOOL); }

struct RuntimeSymbol {
  const char* name;
  void* addr;
};

// Explicit C signatures: cuda_runtime.h also declares C++ template overloads of some
// of these names.
const RuntimeSymbol kRuntimeSymbols[] = {
    {"cudaGetDeviceCount", reinterpret_cast<void*>(static_cast<cudaError_t (*)(int*)>(cudaGetDeviceCount))},
    {"cudaSetDevice", reinterpret_cast<void*>(static_cast<cudaError_t (*)(int)>(cudaSetDevice))},
    {"cudaGetDevice", reinterpret_cast<void*>(static_cast<cudaError_t (*)(int*)>(cudaGetDevice))},
    {"cudaStreamCreateWithFlags",
     reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaStream_t*, unsigned)>(cudaStreamCreateWithFlags))},
    {"cudaStreamDestroy", reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaStream_t)>(cudaStreamDestroy))},
    {"cudaStreamSynchronize",
     reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaStream_t)>(cudaStreamSynchronize))},
    {"cudaStreamWaitEvent",
     reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaStream_t, cudaEvent_t, unsigned)>(cudaStreamWaitEvent))},
    {"cudaEventCreateWithFlags",
     reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaEvent_t*, unsigned)>(cudaEventCreateWithFlags))},
    {"cudaEventRecord", reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaEvent_t, cudaStream_t)>(cudaEventRecord))},
    {"cudaEventQuery", reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaEvent_t)>(cudaEventQuery))},
    {"cudaEventDestroy", reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaEvent_t)>(cudaEventDestroy))},
    {"cudaMalloc", reinterpret_cast<void*>(static_cast<cudaError_t (*)(void**, size_t)>(cudaMalloc))},
    {"cudaFree", reinterpret_cast<void*>(static_cast<cudaError_t (*)(void*)>(cudaFree))},
    {"cudaHostAlloc", reinterpret_cast<void*>(static_cast<cudaError_t (*)(void**, size_t, unsigned)>(cudaHostAlloc))},
    {"cudaFreeHost", reinterpret_cast<void*>(static_cast<cudaError_t (*)(void*)>(cudaFreeHost))},
    {"cudaMemcpy",
     reinterpret_cast<void*>(static_cast<cudaError_t (*)(void*, const void*, size_t, cudaMemcpyKind)>(cudaMemcpy))},
    {"cudaMemcpyAsync",
     reinterpret_cast<void*>(
         static_cast<cudaError_t (*)(void*, const void*, size_t, cudaMemcpyKind, cudaStream_t)>(cudaMemcpyAsync))},
    {"cudaGetErrorString", reinterpret_cast<void*>(static_cast<const char* (*)(cudaError_t)>(cudaGetErrorString))},
    {"cudaDeviceGetPCIBusId",
     reinterpret_cast<void*>(static_cast<cudaError_t (*)(char*, int, int)>(cudaDeviceGetPCIBusId))},
    {"cudaStreamQuery", reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaStream_t)>(cudaStreamQuery))},
    {"cudaEventSynchronize", reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaEvent_t)>(cudaEventSynchronize))},
    {"cudaPointerGetAttributes",
     reinterpret_cast<void*>(
         static_cast<cudaError_t (*)(cudaPointerAttributes*, const void*)>(cudaPointerGetAttributes))},
    {"cudaIpcGetMemHandle",
     reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaIpcMemHandle_t*, void*)>(cudaIpcGetMemHandle))},
    {"cudaIpcOpenMemHandle",
     reinterpret_cast<void*>(
         static_cast<cudaError_t (*)(void**, cudaIpcMemHandle_t, unsigned)>(cudaIpcOpenMemHandle))},
    {"cudaIpcCloseMemHandle", reinterpret_cast<void*>(static_cast<cudaError_t (*)(void*)>(cudaIpcCloseMemHandle))},
    {"cudaIpcGetEventHandle",
     reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaIpcEventHandle_t*, cudaEvent_t)>(cudaIpcGetEventHandle))},
    {"cudaIpcOpenEventHandle",
     reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaEvent_t*, cudaIpcEventHandle_t)>(cudaIpcOpenEventHandle))},
    {"cudaLaunchHostFunc",
     reinterpret_cast<void*>(static_cast<cudaError_t (*)(cudaStream_t, cudaHostFn_t, void*)>(cudaLaunchHostFunc))},
};

}  // namespace
}  // namespace hcomm

using hcomm::DataType;
using hcomm::ReduceOp;

extern "C" int hcommCudaReduce(int dtype, int op, void* dst, const void* a, const void* b, size_t count,
                               void* stream) {
  if (!hcomm::validDtype(dtype)) return int(cudaErrorInvalidValue);
  if (count == 0) return int(cudaSuccess);
  DataType dt = DataType(dtype);
  ReduceOp rop = ReduceOp(op);
  if (dt == DataType::BOOL) {  // logical or / and on 0-1 bytes, as on the CPU
    if (rop == ReduceOp::SUM) rop = ReduceOp::MAX;
    if (rop == ReduceOp::PROD) rop = ReduceOp::MIN;
  }
  auto s = static_cast<cudaStream_t>(stream);
  switch (rop) {
    case ReduceOp::SUM: case ReduceOp::AVG: case ReduceOp::PREMUL_SUM:
      return hcomm::reduceByType<hcomm::Sum>(dt, dst, a, b, count, s);
    case ReduceOp::PROD: return hcomm::reduceByType<hcomm::Prod>(dt, dst, a, b, count, s);
    case ReduceOp::MIN: return hcomm::reduceByType<hcomm::Min>(dt, dst, a, b, count, s);
    case ReduceOp::MAX: return hcomm::reduceByType<hcomm::Max>(dt, dst, a, b, count, s);
  }
  return int(cudaErrorInvalidValue);
}

extern "C" int hcommCudaAccumulate(int dtype, int op, void* dst, int dstWide, const void* a, int aWide,
                                   const void* b, size_t count, void* stream) {
  if (!hcomm::validDtype(dtype)) return int(cudaErrorInvalidValue);
  if (count == 0) return int(cudaSuccess);
  DataType dt = DataType(dtype);
  bool half = dt == DataType::F16 || dt == DataType::BF16;
  if (!half && (dstWide || aWide)) return int(cudaErrorInvalidValue);
  ReduceOp rop = ReduceOp(op);
  if (dt == DataType::BOOL) rop = rop == ReduceOp::PROD ? ReduceOp::MIN : rop == ReduceOp::SUM ? ReduceOp::MAX : rop;
  auto s = static_cast<cudaStream_t>(stream);
  return hcomm::byElementType(dt, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto launch = [&](auto opTag) {
      using Op = decltype(opTag);
      hcomm::accumulateKernel<T, Op><<<hcomm::blocksFor(count), hcomm::kThreads, 0, s>>>(
          dst, dstWide != 0, a, aWide != 0, static_cast<const T*>(b), count);
      return int(cudaGetLastError());
    };
    switch (rop) {
      case ReduceOp::PROD: return launch(hcomm::Prod());
      case ReduceOp::MIN: return launch(hcomm::Min());
      case ReduceOp::MAX: return launch(hcomm::Max());
      default: return launch(hcomm::Sum());
    }
  });
}

extern "C" int hcommCudaScale(int dtype, void* dst, const void* src, size_t count, double factor, void* stream) {
  if (!hcomm::validDtype(dtype)) return int(cudaErrorInvalidValue);
  if (count == 0) return int(cudaSuccess);
  auto s = static_cast<cudaStream_t>(stream);
  return hcomm::byElementType(DataType(dtype), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    hcomm::scaleKernel<T><<<hcomm::blocksFor(count), hcomm::kThreads, 0, s>>>(
        static_cast<T*>(dst), static_cast<const T*>(src), count, factor);
    return int(cudaGetLastError());
  });
}

extern "C" int hcommCudaDivide(int dtype, void* dst, const void* src, size_t count, int64_t divisor, void* stream) {
  if (!hcomm::validDtype(dtype) || divisor == 0) return int(cudaErrorInvalidValue);
  if (count == 0) return int(cudaSuccess);
  auto s = static_cast<cudaStream_t>(stream);
  return hcomm::byElementType(DataType(dtype), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    hcomm::divideKernel<T><<<hcomm::blocksFor(count), hcomm::kThreads, 0, s>>>(
        static_cast<T*>(dst), static_cast<const T*>(src), count, divisor);
    return int(cudaGetLastError());
  });
}

extern "C" void* hcommCudaRuntimeSymbol(const char* name) {
  for (const auto& sym : hcomm::kRuntimeSymbols)
    if (std::strcmp(sym.name, name) == 0) return sym.addr;
  return nullptr;
}

extern "C" int hcommCudaBuildVersion() { return CUDART_VERSION; }
