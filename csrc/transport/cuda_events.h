// A pool of CUDA events (timing off) for a transport's in-flight device work: events are
// taken for a piece, given back once reached, and destroyed with the pool. Creating an
// event per piece would cost a driver call each; destroying one in flight is an error.
// Not thread-safe: each transport uses its own under its own lock.
#pragma once
#include <string>
#include <vector>

#include "common/types.h"
#include "transport/cuda_runtime.h"

namespace hcomm {

class CudaEventPool {
 public:
  explicit CudaEventPool(const CudaRuntime& rt) : rt_(&rt) {}
  ~CudaEventPool() {
    for (cuda::Event e : all_) rt_->api.EventDestroy(e);
  }
  CudaEventPool(const CudaEventPool&) = delete;
  CudaEventPool& operator=(const CudaEventPool&) = delete;

  cuda::Event take() {
    if (!free_.empty()) {
      cuda::Event e = free_.back();
      free_.pop_back();
      return e;
    }
    cuda::Event e = nullptr;
    cuda::Error err = rt_->api.EventCreateWithFlags(&e, cuda::kEventDisableTiming);
    if (err != cuda::cudaSuccess)
      throw Error(std::string("cudaEventCreateWithFlags failed: ") + rt_->api.GetErrorString(err));
    all_.push_back(e);
    return e;
  }
  void give(cuda::Event e) {
    if (e) free_.push_back(e);
  }

 private:
  const CudaRuntime* rt_;
  std::vector<cuda::Event> free_, all_;
};

}  // namespace hcomm
