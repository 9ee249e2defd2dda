#include "device/npu_memory.h"

#include <vector>

namespace hcomm {

NpuMemory::NpuMemory(int device, hccl::AclStream stream)
    : device_(device), name_("npu:" + std::to_string(device)), stream_(stream), lib_(&loadHccl()),
      alive_(std::make_shared<bool>(true)) {}

NpuMemory::~NpuMemory() {
  std::lock_guard<std::mutex> lock(mu_);
  *alive_ = false;
  lib_->api.AclrtSetDevice(device_);
  for (char* p : all_) lib_->api.AclrtFree(p);
}

void NpuMemory::check(int err, const char* what) const {
  if (err != 0) throw Error(name_ + ": " + what + " failed with aclError " + std::to_string(err));
}

void NpuMemory::synchronize() const { check(lib_->api.AclrtSynchronizeStream(stream_), "aclrtSynchronizeStream"); }

void NpuMemory::copy(void* dst, const void* src, size_t bytes) const {
  if (!bytes || dst == src) return;
  check(lib_->api.AclrtMemcpyAsync(dst, bytes, src, bytes, hccl::kDeviceToDevice, stream_),
        "aclrtMemcpyAsync (device to device)");
  synchronize();
}

void NpuMemory::toHost(void* host, const void* dev, size_t bytes) const {
  if (!bytes) return;
  check(lib_->api.AclrtMemcpyAsync(host, bytes, dev, bytes, hccl::kDeviceToHost, stream_),
        "aclrtMemcpyAsync (device to host)");
  synchronize();
}

void NpuMemory::toDevice(void* dev, const void* host, size_t bytes) const {
  if (!bytes) return;
  check(lib_->api.AclrtMemcpyAsync(dev, bytes, host, bytes, hccl::kHostToDevice, stream_),
        "aclrtMemcpyAsync (host to device)");
  synchronize();
}

namespace {

// A host copy of a device operand (empty for a null pointer).
std::vector<char> fetch(const NpuMemory& m, const void* dev, size_t bytes) {
  std::vector<char> h(dev ? bytes : 0);
  if (dev) m.toHost(h.data(), dev, bytes);
  return h;
}

}  // namespace

void NpuMemory::reduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t count,
                       bool) const {
  size_t bytes = count * dtypeSize(dt);
  std::vector<char> ha = fetch(*this, a, bytes), hb = fetch(*this, b, bytes);
  hostMemory().reduce(dt, op, ha.data(), ha.data(), hb.data(), count);
  toDevice(dst, ha.data(), bytes);
}

void NpuMemory::accumulate(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide,
                           const void* b, size_t count) const {
  size_t es = dtypeSize(dt);
  std::vector<char> ha = fetch(*this, a, count * (aWide ? 4 : es)), hb = fetch(*this, b, count * es);
  std::vector<char> hd(count * (dstWide ? 4 : es));
  hostMemory().accumulate(dt, op, hd.data(), dstWide, a ? ha.data() : nullptr, aWide, hb.data(), count);
  toDevice(dst, hd.data(), hd.size());
}

void NpuMemory::scale(DataType dt, void* dst, const void* src, size_t count, double factor) const {
  std::vector<char> h = fetch(*this, src, count * dtypeSize(dt));
  hostMemory().scale(dt, h.data(), h.data(), count, factor);
  toDevice(dst, h.data(), h.size());
}

void NpuMemory::divide(DataType dt, void* dst, const void* src, size_t count, int64_t divisor) const {
  std::vector<char> h = fetch(*this, src, count * dtypeSize(dt));
  hostMemory().divide(dt, h.data(), h.data(), count, divisor);
  toDevice(dst, h.data(), h.size());
}

std::shared_ptr<char> NpuMemory::alloc(size_t bytes) const {
  size_t cap = 512;
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
    // ACL's current device is per thread; the progress thread may be a new one.
    check(lib_->api.AclrtSetDevice(device_), "aclrtSetDevice");
    void* raw = nullptr;
    check(lib_->api.AclrtMalloc(&raw, cap, hccl::kMallocHugeFirst), "aclrtMalloc of scratch");
    p = static_cast<char*>(raw);
    std::lock_guard<std::mutex> lock(mu_);
    all_.push_back(p);
  }
  std::weak_ptr<bool> alive = alive_;
  return std::shared_ptr<char>(p, [this, alive, cap](char* q) {
    if (auto a = alive.lock()) giveBack(q, cap);  // else the destructor freed it already
  });
}

void NpuMemory::giveBack(char* p, size_t cap) const {
  std::lock_guard<std::mutex> lock(mu_);
  free_.emplace(cap, p);
}

}  // namespace hcomm
