#include "device/cuda_memory.h"

#include <string>

#include "device/kernels.h"
#include "transport/cuda_runtime.h"

namespace hcomm {

CudaMemory::CudaMemory(int device, cuda::Stream stream)
    : device_(device), name_("cuda:" + std::to_string(device)), stream_(stream), rt_(&loadCudaRuntime()),
      kernels_(&deviceKernels()), alive_(std::make_shared<bool>(true)) {}

CudaMemory::~CudaMemory() {
  std::lock_guard<std::mutex> lock(mu_);
  *alive_ = false;
  rt_->api.SetDevice(device_);
  for (char* p : all_) rt_->api.Free(p);
}

void CudaMemory::check(int err, const char* what) const {
  if (err == 0) return;
  throw Error(name_ + ": " + what + " failed: " + rt_->api.GetErrorString(cuda::Error(err)));
}

void CudaMemory::synchronize() const { check(rt_->api.StreamSynchronize(stream_), "cudaStreamSynchronize"); }

void CudaMemory::copy(void* dst, const void* src, size_t bytes) const {
  if (!bytes || dst == src) return;
  check(rt_->api.MemcpyAsync(dst, src, bytes, cuda::cudaMemcpyDefault, stream_), "cudaMemcpyAsync");
  synchronize();
}

void CudaMemory::reduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t count,
                        bool) const {
  kernels_->reduce(dt, op, dst, a, b, count, stream_);
  synchronize();
}

void CudaMemory::accumulate(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide,
                            const void* b, size_t count) const {
  kernels_->accumulate(dt, op, dst, dstWide, a, aWide, b, count, stream_);
  synchronize();
}

void CudaMemory::scale(DataType dt, void* dst, const void* src, size_t count, double factor) const {
  kernels_->scale(dt, dst, src, count, factor, stream_);
  synchronize();
}

void CudaMemory::divide(DataType dt, void* dst, const void* src, size_t count, int64_t divisor) const {
  kernels_->divide(dt, dst, src, count, divisor, stream_);
  synchronize();
}

std::shared_ptr<char> CudaMemory::alloc(size_t bytes) const {
  size_t cap = 256;
  while (cap < bytes) cap <<= 1;
  char* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(cap);
    if (it != free_.end()) {
      p = it->second;
      free_.erase(it);
    }
  }
  if (!p) {
    check(rt_->api.SetDevice(device_), "cudaSetDevice");
    void* raw = nullptr;
    check(rt_->api.Malloc(&raw, cap), "cudaMalloc of scratch");
    p = static_cast<char*>(raw);
    std::lock_guard<std::mutex> lock(mu_);
    all_.push_back(p);
  }
  std::weak_ptr<bool> alive = alive_;
  return std::shared_ptr<char>(p, [this, alive, cap](char* q) {
    if (auto a = alive.lock()) giveBack(q, cap);  // else the destructor freed it already
  });
}

void CudaMemory::giveBack(char* p, size_t cap) const {
  std::lock_guard<std::mutex> lock(mu_);
  free_.emplace(cap, p);
}

int cudaPointerDevice(const void* ptr) {
  const CudaRuntime& rt = loadCudaRuntime();
  cuda::PointerAttributes attr{};
  if (rt.api.PointerGetAttributes(&attr, ptr) != cuda::cudaSuccess) return -1;
  return attr.type == cuda::cudaMemoryTypeDevice || attr.type == cuda::cudaMemoryTypeManaged ? attr.device : -1;
}

}  // namespace hcomm
