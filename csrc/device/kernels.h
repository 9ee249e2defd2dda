// The device kernels a collective on GPU memory runs (reduce, scale, divide), queued on
// a stream. Two tables stand behind one interface:
//   - "cuda": hcomm's CUDA kernels (reduce/cuda_kernels.cu), used when the CUDA runtime
//     in use is the one linked into hcomm (HCOMM_WITH_CUDA=1, HCOMM_CUDART_LIB unset),
//     so kernels and runtime share streams;
//   - "host functions on the stream": the CPU kernels run in stream order through
//     cudaLaunchHostFunc. Only for a runtime named by HCOMM_CUDART_LIB whose "device"
//     memory the host can address (the tests' host-memory fake); on a real GPU this
//     table would touch device memory from the host, so it is never chosen there.
// `_C.cuda_self_test` and the device script check the CUDA table bit for bit against
// the CPU kernels on a real GPU.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/types.h"
#include "transport/transport.h"

namespace hcomm {

struct DeviceKernels {
  const char* name;
  // Each queues its work on `stream` and returns at once; throws Error on failure.
  void (*reduce)(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t count, void* stream);
  void (*scale)(DataType dt, void* dst, const void* src, size_t count, double factor, void* stream);
  void (*divide)(DataType dt, void* dst, const void* src, size_t count, int64_t divisor, void* stream);
  // Memory::accumulate (reduce/memory.h).
  void (*accumulate)(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide, const void* b,
                     size_t count, void* stream);
};

// A receive's combining step on the device: the `len` payload bytes that belong at
// `offset` of the message, combined into `dst` as `spec` says (a plain reduction with
// spec.src, or a fold step in the accumulation type, whose wide sides scale offsets).
void deviceCombine(const DeviceKernels& k, const ReduceSpec& spec, char* dst, size_t offset, const void* payload,
                   size_t len, void* stream);

// The table for the runtime in use (see above); throws Error when there is none (a real
// runtime opened by path while hcomm was built without CUDA kernels).
const DeviceKernels& deviceKernels();

}  // namespace hcomm
