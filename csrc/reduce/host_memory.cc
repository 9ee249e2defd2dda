#include "reduce/host_memory.h"

#include <cstring>

#include "reduce/reduce.h"

namespace hcomm {

void HostMemory::copy(void* dst, const void* src, size_t bytes) const {
  if (bytes && dst != src) std::memmove(dst, src, bytes);
}

void HostMemory::reduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t count,
                        bool streamed) const {
  if (streamed) reduceStreamed(dt, op, dst, a, b, count);
  else hcomm::reduce(dt, op, dst, a, b, count);
}

void HostMemory::accumulate(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide,
                            const void* b, size_t count) const {
  hcomm::accumulate(dt, op, dst, dstWide, a, aWide, b, count);
}

void HostMemory::scale(DataType dt, void* dst, const void* src, size_t count, double factor) const {
  hcomm::scale(dt, dst, src, count, factor);
}

void HostMemory::divide(DataType dt, void* dst, const void* src, size_t count, int64_t divisor) const {
  hcomm::divide(dt, dst, src, count, divisor);
}

std::shared_ptr<char> HostMemory::alloc(size_t bytes) const {
  return std::shared_ptr<char>(new char[bytes ? bytes : 1], std::default_delete<char[]>());
}

const Memory& hostMemory() {
  static const HostMemory host;  // stateless: one for the process
  return host;
}

}  // namespace hcomm
