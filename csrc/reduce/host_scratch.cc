// HostScratchMemory: host kernels, scratch from a free list (see host_scratch.h).
#include "reduce/host_scratch.h"

namespace hcomm {

HostScratchMemory::HostScratchMemory() : pool_(std::make_shared<Pool>()) {}

HostScratchMemory::~HostScratchMemory() {
  std::lock_guard<std::mutex> lock(pool_->mu);
  pool_->open = false;
  for (auto& kv : pool_->free) delete[] kv.second;
  pool_->free.clear();
}

void HostScratchMemory::copy(void* dst, const void* src, size_t bytes) const { hostMemory().copy(dst, src, bytes); }

void HostScratchMemory::reduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t count,
                               bool streamed) const {
  hostMemory().reduce(dt, op, dst, a, b, count, streamed);
}

void HostScratchMemory::accumulate(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide,
                                   const void* b, size_t count) const {
  hostMemory().accumulate(dt, op, dst, dstWide, a, aWide, b, count);
}

void HostScratchMemory::scale(DataType dt, void* dst, const void* src, size_t count, double factor) const {
  hostMemory().scale(dt, dst, src, count, factor);
}

void HostScratchMemory::divide(DataType dt, void* dst, const void* src, size_t count, int64_t divisor) const {
  hostMemory().divide(dt, dst, src, count, divisor);
}

std::shared_ptr<char> HostScratchMemory::alloc(size_t bytes) const {
  size_t cap = 4096;
  while (cap < bytes) cap <<= 1;
  char* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(pool_->mu);
    auto it = pool_->free.find(cap);
    if (it != pool_->free.end()) {
      p = it->second;
      pool_->free.erase(it);
    }
  }
  if (!p) p = new char[cap];
  std::weak_ptr<Pool> weak = pool_;
  return std::shared_ptr<char>(p, [weak, cap](char* q) {
    if (auto pool = weak.lock()) {
      std::lock_guard<std::mutex> lock(pool->mu);
      if (pool->open) {
        pool->free.emplace(cap, q);
        return;
      }
    }
    delete[] q;
  });
}

}  // namespace hcomm
