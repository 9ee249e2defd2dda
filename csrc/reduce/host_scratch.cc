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
