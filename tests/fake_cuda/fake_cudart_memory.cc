// The memory half of the fake CUDA runtime (fake_cudart.cc has the model and its
// differences from CUDA in its header): cudaMalloc'd memory is a memfd of its own mapped
// here and tagged with the current device; IPC handles name (pid, fd, inode) and are
// opened through /proc/<pid>/fd/<fd> by another process.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "fake_cudart.h"

using namespace fake_cudart;

namespace {

constexpr Error kInvalidMemcpyDirection = Error(21);  // cudaErrorInvalidMemcpyDirection
constexpr char kMemMagic[8] = {'H', 'C', 'F', 'K', 'M', 'E', 'M', '1'};

// One mapping: a cudaMalloc allocation (memfd), a cudaHostAlloc block, or an IPC import.
struct Region {
  size_t size = 0;
  MemoryType type = cudaMemoryTypeDevice;
  int device = 0;
  int fd = -1;          // the memfd (device allocations only)
  uint64_t id = 0;      // exporter's allocation id (imports), this process's (allocations)
  int importPid = 0;    // nonzero for an IPC import
  int refs = 1;         // opens of one import
};

struct Memory {
  std::mutex mu;
  std::map<uintptr_t, Region> regions;  // by base address
  uint64_t nextId = 1;

  // The region holding [p, p + n), or nullptr.
  std::pair<uintptr_t, Region*> find(const void* p, size_t n = 1) {
    auto a = reinterpret_cast<uintptr_t>(p);
    auto it = regions.upper_bound(a);
    if (it == regions.begin()) return {0, nullptr};
    --it;
    if (a >= it->first && a + n <= it->first + std::max<size_t>(it->second.size, 1)) return {it->first, &it->second};
    return {0, nullptr};
  }
};

Memory& memory() {
  static Memory* m = new Memory;  // never destroyed: stream workers may outlive exit
  return *m;
}

size_t pageRound(size_t n) {
  size_t page = size_t(sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}

// Tests allocate many buffers, each holding an fd: lift the soft limit once.
void raiseFdLimit() {
  static bool once = [] {
    rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
      r.rlim_cur = r.rlim_max;
      setrlimit(RLIMIT_NOFILE, &r);
    }
    return true;
  }();
  (void)once;
}

struct MemHandle {  // the layout inside cudaIpcMemHandle_t's 64 bytes
  char magic[8];
  int32_t pid, fd;
  uint64_t inode, size, id;
  int32_t device;
};
static_assert(sizeof(MemHandle) <= kIpcHandleBytes, "handle layout");

bool deviceSide(const void* p, size_t n) {
  std::lock_guard<std::mutex> l(memory().mu);
  Region* r = memory().find(p, n).second;
  return r != nullptr;  // device, pinned host or imported memory, all device-accessible under UVA
}

Error checkCopy(void* dst, const void* src, size_t count, MemcpyKind kind) {
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) return kInvalidMemcpyDirection;
  if (count == 0) return cudaSuccess;
  if (!dst || !src) return cudaErrorInvalidValue;
  bool deviceDst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  bool deviceSrc = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (deviceDst && !deviceSide(dst, count)) return cudaErrorInvalidValue;
  if (deviceSrc && !deviceSide(src, count)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

}  // namespace

extern "C" {

// ---------------------------------------------------------------- memory

Error cudaMalloc(void** devPtr, size_t size) {
  if (!devPtr) return cudaErrorInvalidValue;
  *devPtr = nullptr;
  if (size == 0) return cudaSuccess;
  raiseFdLimit();
  int fd = int(syscall(SYS_memfd_create, "hcomm-fake-cuda", 1u /* MFD_CLOEXEC */));
  if (fd < 0) return cudaErrorMemoryAllocation;
  size_t mapped = pageRound(size);
  void* p = ftruncate(fd, off_t(mapped)) == 0 ? mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                                              : MAP_FAILED;
  if (p == MAP_FAILED) {
    close(fd);
    return cudaErrorMemoryAllocation;
  }
  Memory& m = memory();
  std::lock_guard<std::mutex> l(m.mu);
  Region r;
  r.size = size;
  r.device = currentDevice;
  r.fd = fd;
  r.id = m.nextId++;
  m.regions[reinterpret_cast<uintptr_t>(p)] = r;
  *devPtr = p;
  return cudaSuccess;
}

Error cudaFree(void* devPtr) {
  if (!devPtr) return cudaSuccess;
  Region r;
  {
    Memory& m = memory();
    std::lock_guard<std::mutex> l(m.mu);
    auto it = m.regions.find(reinterpret_cast<uintptr_t>(devPtr));
    if (it == m.regions.end() || it->second.type != cudaMemoryTypeDevice || it->second.importPid)
      return cudaErrorInvalidValue;
    r = it->second;
    m.regions.erase(it);
  }
  releaseLater(r.device, [devPtr, r] {
    munmap(devPtr, pageRound(r.size));
    close(r.fd);  // the pages live on while another process has them mapped
  });
  return cudaSuccess;
}

Error cudaHostAlloc(void** pHost, size_t size, unsigned int flags) {
  if (!pHost || flags > 0x0f) return cudaErrorInvalidValue;  // Default|Portable|Mapped|WriteCombined
  *pHost = nullptr;
  if (size == 0) return cudaSuccess;
  void* p = mmap(nullptr, pageRound(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return cudaErrorMemoryAllocation;
  Region r;
  r.size = size;
  r.type = cudaMemoryTypeHost;
  r.device = currentDevice;
  std::lock_guard<std::mutex> l(memory().mu);
  memory().regions[reinterpret_cast<uintptr_t>(p)] = r;
  *pHost = p;
  return cudaSuccess;
}

Error cudaFreeHost(void* ptr) {
  if (!ptr) return cudaSuccess;
  size_t size;
  {
    Memory& m = memory();
    std::lock_guard<std::mutex> l(m.mu);
    auto it = m.regions.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == m.regions.end() || it->second.type != cudaMemoryTypeHost) return cudaErrorInvalidValue;
    size = it->second.size;
    m.regions.erase(it);
  }
  releaseLater(-1, [ptr, size] { munmap(ptr, pageRound(size)); });
  return cudaSuccess;
}

Error cudaMemcpyAsync(void* dst, const void* src, size_t count, MemcpyKind kind, Stream stream) {
  Error e = checkCopy(dst, src, count, kind);
  if (e != cudaSuccess) return e;
  return enqueue(stream, [dst, src, count] {
    if (count) std::memmove(dst, src, count);
  });
}

Error cudaMemcpy(void* dst, const void* src, size_t count, MemcpyKind kind) {
  Error e = cudaMemcpyAsync(dst, src, count, kind, nullptr);
  return e != cudaSuccess ? e : cudaStreamSynchronize(nullptr);
}

Error cudaPointerGetAttributes(PointerAttributes* attributes, const void* ptr) {
  if (!attributes) return cudaErrorInvalidValue;
  std::memset(attributes, 0, sizeof *attributes);
  std::lock_guard<std::mutex> l(memory().mu);
  Region* r = memory().find(ptr).second;
  if (!r) {
    attributes->type = cudaMemoryTypeUnregistered;
    attributes->device = -2;  // what CUDA 11+ reports for unregistered host memory
    attributes->hostPointer = const_cast<void*>(ptr);
    return cudaSuccess;
  }
  attributes->type = r->type;
  attributes->device = r->device;
  attributes->devicePointer = const_cast<void*>(ptr);
  attributes->hostPointer = r->type == cudaMemoryTypeHost ? const_cast<void*>(ptr) : nullptr;
  return cudaSuccess;
}

// ---------------------------------------------------------------- IPC

Error cudaIpcGetMemHandle(IpcMemHandle* handle, void* devPtr) {
  if (!handle || !devPtr) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> l(memory().mu);
  auto found = memory().find(devPtr);
  Region* r = found.second;
  if (!r || r->type != cudaMemoryTypeDevice || r->importPid) return cudaErrorInvalidValue;
  struct stat st;
  if (fstat(r->fd, &st) != 0) return cudaErrorMapBufferObjectFailed;
  MemHandle h{};
  std::memcpy(h.magic, kMemMagic, sizeof h.magic);
  h.pid = getpid();
  h.fd = r->fd;
  h.inode = st.st_ino;
  h.size = r->size;
  h.id = r->id;
  h.device = r->device;
  std::memset(handle, 0, sizeof *handle);
  std::memcpy(handle->reserved, &h, sizeof h);
  return cudaSuccess;
}

Error cudaIpcOpenMemHandle(void** devPtr, IpcMemHandle handle, unsigned int flags) {
  if (!devPtr || flags > kIpcMemLazyEnablePeerAccess) return cudaErrorInvalidValue;
  MemHandle h;
  std::memcpy(&h, handle.reserved, sizeof h);
  if (std::memcmp(h.magic, kMemMagic, sizeof h.magic) != 0 || h.size == 0) return cudaErrorInvalidResourceHandle;
  if (h.pid == getpid()) return cudaErrorDeviceUninitialized;  // CUDA: "invalid device context"
  Memory& m = memory();
  std::lock_guard<std::mutex> l(m.mu);
  for (auto& kv : m.regions)
    if (kv.second.importPid == h.pid && kv.second.id == h.id) {
      ++kv.second.refs;
      *devPtr = reinterpret_cast<void*>(kv.first);
      return cudaSuccess;
    }
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/fd/%d", h.pid, h.fd);
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return cudaErrorMapBufferObjectFailed;
  struct stat st;
  void* p = MAP_FAILED;
  if (fstat(fd, &st) == 0 && uint64_t(st.st_ino) == h.inode && uint64_t(st.st_size) >= h.size)
    p = mmap(nullptr, pageRound(h.size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);  // the mapping keeps the pages
  if (p == MAP_FAILED) return cudaErrorMapBufferObjectFailed;
  Region r;
  r.size = h.size;
  r.device = h.device;
  r.id = h.id;
  r.importPid = h.pid;
  m.regions[reinterpret_cast<uintptr_t>(p)] = r;
  *devPtr = p;
  return cudaSuccess;
}

Error cudaIpcCloseMemHandle(void* devPtr) {
  Memory& m = memory();
  std::lock_guard<std::mutex> l(m.mu);
  auto it = m.regions.find(reinterpret_cast<uintptr_t>(devPtr));
  if (it == m.regions.end() || !it->second.importPid) return cudaErrorInvalidValue;
  if (--it->second.refs == 0) {
    munmap(devPtr, pageRound(it->second.size));
    m.regions.erase(it);
  }
  return cudaSuccess;
}

}  // extern "C"
