// Memory (reduce/memory.h) on one CUDA device: copies with cudaMemcpyAsync, reductions
// with the device kernel table (device/kernels.h), scratch from a pool of cudaMalloc'ed
// blocks, all on one stream the owner passes in.
//
// Every operation returns once its work is done on the device (it synchronises the
// stream). Why: algorithms are host-driven — the host decides the next step when a
// transport request completes — so a local copy or reduction must be finished before the
// next send reads its result. Local steps are few per collective (the first copy, AVG's
// division, a hierarchical repack); the bulk moves through the transports, which queue
// asynchronously and complete requests from events.
//
// Scratch blocks are kept for reuse and freed when the CudaMemory is destroyed:
// cudaFree synchronises the whole device, which must not happen inside a collective.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "reduce/memory.h"
#include "transport/cuda_api.h"

namespace hcomm {

struct DeviceKernels;
struct CudaRuntime;

class CudaMemory final : public Memory {
 public:
  // `stream` stays owned by the caller and must outlive this object.
  CudaMemory(int device, cuda::Stream stream);
  ~CudaMemory() override;

  const char* name() const override { return name_.c_str(); }
  int device() const override { return device_; }
  cuda::Stream stream() const { return stream_; }
  void copy(void* dst, const void* src, size_t bytes) const override;
  void reduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t count,
              bool streamed) const override;
  void accumulate(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide, const void* b,
                  size_t count) const override;
  void scale(DataType dt, void* dst, const void* src, size_t count, double factor) const override;
  void divide(DataType dt, void* dst, const void* src, size_t count, int64_t divisor) const override;
  std::shared_ptr<char> alloc(size_t bytes) const override;
  void synchronize() const override;

 private:
  void check(int err, const char* what) const;
  void giveBack(char* p, size_t cap) const;

  int device_;
  std::string name_;
  cuda::Stream stream_;
  const CudaRuntime* rt_;
  const DeviceKernels* kernels_;
  // Free scratch blocks by capacity (a power of two), and every block ever made.
  mutable std::mutex mu_;
  mutable std::multimap<size_t, char*> free_;
  mutable std::vector<char*> all_;
  std::shared_ptr<bool> alive_;  // lets a block outliving this object skip the pool
};

// Queries the runtime: -1 for host memory (or no runtime), else the device index.
int cudaPointerDevice(const void* ptr);

}  // namespace hcomm
