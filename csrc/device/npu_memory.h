// Memory (reduce/memory.h) on one Ascend NPU: copies with aclrtMemcpyAsync on one
// stream the owner passes in, scratch from a pool of aclrtMalloc'ed blocks, and
// reductions, scales and divisions run by hcomm's CPU kernels on host copies of the
// operands (device -> host, kernel, host -> device).
//
// Why host kernels: hcomm ships no Ascend C kernels, and the CANN operator library
// (aclnn) would be a second large dependency. The reducing steps are the ones hcomm's
// own algorithms take over the HCCL transport (a ring's recvReduce, AVG's division,
// PREMUL_SUM's scaling); native HCCL collectives reduce on the device and never come
// here. The price is two device-host round trips per reducing step: on an NPU the
// native engine is the fast path, this one is for algorithm choice and for ops HCCL
// lacks. Under the tests' fake AscendCL "device" memory is host memory, so the copies
// are real memcpy calls checked for the right direction (fake_ascendcl.cc).
//
// Every operation returns once its work is done (it synchronises the stream), for the
// reason given in device/cuda_memory.h: algorithms are host-driven.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "reduce/memory.h"
#include "transport/hccl.h"

namespace hcomm {

class NpuMemory final : public Memory {
 public:
  // `stream` stays owned by the caller and must outlive this object.
  NpuMemory(int device, hccl::AclStream stream);
  ~NpuMemory() override;

  const char* name() const override { return name_.c_str(); }
  int device() const override { return device_; }
  void copy(void* dst, const void* src, size_t bytes) const override;
  void reduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t count,
              bool streamed) const override;
  void accumulate(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide, const void* b,
                  size_t count) const override;
  void scale(DataType dt, void* dst, const void* src, size_t count, double factor) const override;
  void divide(DataType dt, void* dst, const void* src, size_t count, int64_t divisor) const override;
  std::shared_ptr<char> alloc(size_t bytes) const override;
  void synchronize() const override;

  // Host <-> device copies on this memory's stream, finished when they return.
  void toHost(void* host, const void* dev, size_t bytes) const;
  void toDevice(void* dev, const void* host, size_t bytes) const;

 private:
  void check(int err, const char* what) const;
  void giveBack(char* p, size_t cap) const;

  int device_;
  std::string name_;
  hccl::AclStream stream_;
  const HcclLibrary* lib_;
  // Free scratch blocks by capacity (a power of two), and every block ever made; freed
  // by the destructor only (aclrtFree may synchronise the device).
  mutable std::mutex mu_;
  mutable std::multimap<size_t, char*> free_;
  mutable std::vector<char*> all_;
  std::shared_ptr<bool> alive_;
};

}  // namespace hcomm
