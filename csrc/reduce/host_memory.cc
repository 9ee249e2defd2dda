#include <cstring>

#include "reduce/memory.h"
#include "reduce/reduce.h"

namespace hcomm {

namespace {

class HostMemory final : public Memory {
 public:
  const char* name() const override { return "host"; }
  void copy(void* dst, const void* src, size_t bytes) const override {
    if (bytes && dst != src) std::memmove(dst, src, bytes);
  }
  void reduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t count,
              bool streamed) const override {
    if (streamed) reduceStreamed(dt, op, dst, a, b, count);
    else hcomm::reduce(dt, op, dst, a, b, count);
  }
  void accumulate(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide, const void* b,
                  size_t count) const override {
    hcomm::accumulate(dt, op, dst, dstWide, a, aWide, b, count);
  }
  void scale(DataType dt, void* dst, const void* src, size_t count, double factor) const override {
    hcomm::scale(dt, dst, src, count, factor);
  }
  void divide(DataType dt, void* dst, const void* src, size_t count, int64_t divisor) const override {
    hcomm::divide(dt, dst, src, count, divisor);
  }
  std::shared_ptr<char> alloc(size_t bytes) const override {
    return std::shared_ptr<char>(new char[bytes ? bytes : 1], std::default_delete<char[]>());
  }
};

}  // namespace

const Memory& hostMemory() {
  static const HostMemory host;  // stateless: one for the process
  return host;
}

}  // namespace hcomm
