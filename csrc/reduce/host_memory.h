// Host memory: the CPU SIMD kernels and plain new[] scratch. One stateless instance serves
// the process (hostMemory()); HostScratchMemory (host_scratch.h) reuses its kernels and
// only keeps scratch between calls.
#pragma once
#include "reduce/memory.h"

namespace hcomm {

class HostMemory : public Memory {
 public:
  const char* name() const override { return "host"; }
  void copy(void* dst, const void* src, size_t bytes) const override;
  void reduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t count,
              bool streamed) const override;
  void accumulate(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide, const void* b,
                  size_t count) const override;
  void scale(DataType dt, void* dst, const void* src, size_t count, double factor) const override;
  void divide(DataType dt, void* dst, const void* src, size_t count, int64_t divisor) const override;
  std::shared_ptr<char> alloc(size_t bytes) const override;
};

}  // namespace hcomm
