// The CUDA runtime, resolved once per process: from HCOMM_CUDART_LIB when set (the
// tests' host-memory fake), else the runtime linked into hcomm (HCOMM_WITH_CUDA), else a
// dlopen'ed libcudart.so.13 / .12. Everything in hcomm that calls the runtime goes
// through this table (cuda_api.h declares it), so one process never mixes two.
#pragma once
#include <string>

#include "transport/cuda_api.h"

namespace hcomm {

struct CudaRuntime {
  std::string origin;  // "linked into hcomm (CUDA 13.0)" or the opened file
  cuda::Api api;
};
// The CUDA runtime, resolved once. Throws Error naming what is missing.
const CudaRuntime& loadCudaRuntime();
// Devices visible to the runtime; 0 with the runtime's reason when there are none
// (no driver, no device, or no runtime at all).
int cudaDeviceCount(std::string* why);
// True when the runtime in use is the one linked into hcomm, so hcomm's CUDA kernels
// (reduce/cuda_reduce.h) share its streams; false for a runtime opened by path.
bool cudaRuntimeIsLinked();

}  // namespace hcomm
