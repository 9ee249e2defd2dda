// CUDA reduction kernels (cuda_kernels.cu), callable from plain C++.
//
// Compiled by nvcc only when HCOMM_WITH_CUDA=1; the rest of the core includes this
// header without any CUDA header. Same contract as the CPU kernels in reduce.h:
// dtype and op are hcomm::DataType / hcomm::ReduceOp values, f16 and bf16 are combined
// in f32 and rounded back to nearest-even, integer SUM and PROD wrap like numpy, bool
// SUM is logical or and PROD logical and. Pointers are device (or managed) memory;
// work is queued on `stream` (a cudaStream_t; null is the legacy default stream) and
// the call returns at once. Each returns a cudaError_t value (0 on success); a dtype
// or op the kernels do not know returns cudaErrorInvalidValue.
//
// The runtime is linked statically (libcudart_static), which opens the driver only on
// the first call, so loading hcomm._C needs no GPU and no driver.
#pragma once
#include <cstddef>
#include <cstdint>

extern "C" {

// dst[i] = a[i] op b[i]; dst may alias a or b. op is SUM, PROD, MIN or MAX (AVG and
// PREMUL_SUM reduce as SUM; the caller applies the scale).
int hcommCudaReduce(int dtype, int op, void* dst, const void* a, const void* b, size_t count, void* stream);
// Memory::accumulate (reduce/memory.h) on the device: one fold step carried in float32
// for f16/bf16 (dstWide / aWide: that side holds float32), a null `a` converts b alone.
int hcommCudaAccumulate(int dtype, int op, void* dst, int dstWide, const void* a, int aWide, const void* b,
                        size_t count, void* stream);
// dst[i] = src[i] * factor (integers: times (int64)factor, wrapping).
int hcommCudaScale(int dtype, void* dst, const void* src, size_t count, double factor, void* stream);
// dst[i] = src[i] / divisor (integers truncate), the post-step of AVG.
int hcommCudaDivide(int dtype, void* dst, const void* src, size_t count, int64_t divisor, void* stream);

// The address of a CUDA runtime function of the statically linked runtime, by its
// name ("cudaMalloc"), so code built without nvcc (transport/nccl.cc) uses the same
// runtime instead of loading a second one; null for a name not offered.
void* hcommCudaRuntimeSymbol(const char* name);
// The CUDA runtime version the kernels were built with (e.g. 13000).
int hcommCudaBuildVersion();
}
