// A host-memory fake of libcudart for tests on machines with no GPU. hcomm loads it
// through HCOMM_CUDART_LIB; tests/fake_device.py builds it and wraps it for Python.
// It exports every function of HCOMM_CUDART_FUNCTIONS (csrc/transport/cuda_api.h) with
// exactly those types (declared through them in fake_cudart.h). Its memory half is
// fake_cudart_memory.cc.
//
// What it models, as CUDA does it:
//   - devices: HCOMM_FAKE_CUDA_DEVICES of them (default 1); the current device is per
//     host thread and starts at 0; cudaDeviceGetPCIBusId gives "0000:%02x:00.0" with the
//     bus 0x18 + device, the same in every process (NCCL's duplicate-GPU check uses it).
//   - device memory: cudaMalloc maps a memfd of its own, tagged with the current device;
//     cudaPointerGetAttributes says cudaMemoryTypeDevice + that device for any pointer
//     inside it, cudaMemoryTypeHost for cudaHostAlloc memory, and
//     cudaMemoryTypeUnregistered (device -2, cudaSuccess) for any other host pointer.
//     cudaFree and cudaFreeHost do not block: the pages are unmapped once every stream
//     (of the allocation's device; of all devices for pinned memory) has finished the
//     work queued before the free, so queued work never touches unmapped memory.
//   - IPC: cudaIpcGetMemHandle gives 64 bytes naming (pid, fd, inode) of the memfd;
//     another process opens /proc/<pid>/fd/<fd> and maps the same pages, at the
//     allocation's base. Opening in the exporting process fails with
//     cudaErrorDeviceUninitialized (CUDA's "invalid device context"), bytes that are no
//     handle with cudaErrorInvalidResourceHandle, a handle whose memory is gone with
//     cudaErrorMapBufferObjectFailed; a second open in one process returns the same
//     pointer and counts references (closed by as many cudaIpcCloseMemHandle).
//   - streams: each a FIFO run by its own worker thread, the legacy default stream
//     (0 or cudaStreamLegacy) and cudaStreamPerThread included. The legacy stream
//     synchronises with every blocking stream of its device in both directions;
//     cudaStreamNonBlocking streams do not. cudaMemcpy is synchronous and ordered on the
//     legacy stream; cudaMemcpyAsync and cudaLaunchHostFunc run in stream order.
//   - events: a record counter and a completion counter. cudaEventRecord bumps the
//     record count at the call and marks it complete when the stream reaches it;
//     cudaStreamWaitEvent holds a stream until the record that was most recent AT THE
//     CALL completes; a never-recorded event counts as complete (as CUDA's does).
//     Events made with cudaEventInterprocess|cudaEventDisableTiming keep the counters
//     in a shared memfd page, so cudaIpcOpenEventHandle in another process sees records,
//     queries, synchronises and stream waits of both sides; cudaIpcGetEventHandle on an
//     event without cudaEventInterprocess fails with cudaErrorInvalidResourceHandle.
//
// Where it differs from CUDA (known, on purpose):
//   - "device" memory is host memory: the host can read it directly, and nothing stops
//     a kernel-less program from doing so. cudaMemcpy checks the device side of a copy
//     (the destination of H2D/D2D, the source of D2H/D2D must be device or pinned
//     memory, and the whole range inside one allocation); cudaMemcpyDefault and the host
//     side are not checked, as with UVA.
//   - errors are returned by the failing call only: no sticky context errors, no
//     asynchronous errors from stream work (every check happens at the call).
//   - no timing events (cudaEventElapsedTime is not provided), no graphs, no peer
//     access control, no limit on memory; events and streams are not tied to a device.
//   - IPC-opened memory reports the exporting allocation's device.
//   - cudaFree never synchronises. CUDA's "may perform implicit synchronization" (and
//     in practice waits for the device): freeing while a stream waits on a peer (a
//     posted NCCL receive) can hang on a real GPU and does not here.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <vector>

#include "fake_cudart.h"

using namespace fake_cudart;

namespace {

constexpr Error kNoDevice = Error(100);        // cudaErrorNoDevice
constexpr unsigned kEventBlockingSync = 0x01;  // cudaEventBlockingSync
constexpr uintptr_t kStreamLegacy = 0x1, kStreamPerThread = 0x2;
constexpr char kEventMagic[8] = {'H', 'C', 'F', 'K', 'E', 'V', 'T', '1'};

}  // namespace

int fake_cudart::deviceCount() {
  static const int n = [] {
    const char* v = std::getenv("HCOMM_FAKE_CUDA_DEVICES");
    return v && *v ? std::atoi(v) : 1;
  }();
  return n;
}

thread_local int fake_cudart::currentDevice = 0;

struct CUstream_st {
  std::shared_ptr<fake::Worker> worker = fake::Worker::start();
  int device = 0;
  bool blocking = true;  // synchronises with the legacy default stream
  bool legacy = false;
};

struct EventCounters {
  std::atomic<uint64_t> recorded{0}, completed{0};
};
static_assert(std::atomic<uint64_t>::is_always_lock_free, "counters shared between processes");

// The counters, in the heap or (interprocess events) in a shared memfd page. Held by
// shared_ptr: stream work keeps them alive after cudaEventDestroy, as CUDA allows.
struct EventStore {
  EventCounters* c = nullptr;
  int fd = -1;
  ~EventStore() {
    if (fd >= 0) {
      munmap(c, sizeof *c);
      close(fd);
    } else {
      delete c;
    }
  }
};

struct CUevent_st {
  std::shared_ptr<EventStore> store;
  unsigned flags = 0;
};

namespace {

struct Streams {
  std::mutex mu;                 // taken while enqueueing, so dependencies are acyclic
  std::set<CUstream_st*> all;    // every live stream, default ones included
  std::map<int, CUstream_st*> legacy;
};

Streams& streams() {
  static Streams* s = new Streams;
  return *s;
}

CUstream_st* newStream(int device, bool blocking, bool legacy) {
  auto* s = new CUstream_st;
  s->device = device;
  s->blocking = blocking;
  s->legacy = legacy;
  streams().all.insert(s);
  return s;
}

// Resolves the special handles; caller holds streams().mu.
CUstream_st* resolve(Stream handle) {
  auto h = reinterpret_cast<uintptr_t>(handle);
  Streams& ss = streams();
  if (h == 0 || h == kStreamLegacy) {
    CUstream_st*& s = ss.legacy[currentDevice];
    if (!s) s = newStream(currentDevice, true, true);
    return s;
  }
  if (h == kStreamPerThread) {
    thread_local std::map<int, CUstream_st*> perThread;  // leaked at thread exit, like CUDA's
    CUstream_st*& s = perThread[currentDevice];
    if (!s) s = newStream(currentDevice, true, false);
    return s;
  }
  return ss.all.count(handle) ? handle : nullptr;
}

using Dep = std::pair<std::shared_ptr<fake::Worker>, uint64_t>;

std::shared_ptr<fake::Worker> workerOf(Stream handle) {
  std::lock_guard<std::mutex> l(streams().mu);
  CUstream_st* s = resolve(handle);
  return s ? s->worker : nullptr;
}

}  // namespace

// Queues op on the stream after the implicit legacy-stream dependencies.
Error fake_cudart::enqueue(Stream handle, std::function<void()> op) {
  Streams& ss = streams();
  std::lock_guard<std::mutex> l(ss.mu);
  CUstream_st* s = resolve(handle);
  if (!s) return cudaErrorInvalidResourceHandle;
  std::vector<Dep> deps;
  if (s->legacy) {
    for (CUstream_st* o : ss.all)
      if (o != s && o->blocking && !o->legacy && o->device == s->device) deps.emplace_back(o->worker, o->worker->pushed());
  } else if (s->blocking) {
    auto it = ss.legacy.find(s->device);
    if (it != ss.legacy.end()) deps.emplace_back(it->second->worker, it->second->worker->pushed());
  }
  if (deps.empty()) {
    s->worker->push(std::move(op));
  } else {
    s->worker->push([deps = std::move(deps), op = std::move(op)] {
      for (const Dep& d : deps) d.first->waitDone(d.second);
      op();
    });
  }
  return cudaSuccess;
}

// Runs `release` once every stream of `device` (-1: of every device) has finished the
// work queued so far, without blocking the caller: freed memory stays mapped while
// queued work may still touch it.
void fake_cudart::releaseLater(int device, std::function<void()> release) {
  std::vector<std::shared_ptr<fake::Worker>> workers;
  {
    std::lock_guard<std::mutex> l(streams().mu);
    for (CUstream_st* s : streams().all)
      if (device < 0 || s->device == device) workers.push_back(s->worker);
  }
  if (workers.empty()) return release();
  auto left = std::make_shared<std::atomic<size_t>>(workers.size());
  auto shared = std::make_shared<std::function<void()>>(std::move(release));
  for (auto& w : workers)
    w->push([left, shared] {
      if (left->fetch_sub(1) == 1) (*shared)();
    });
}

namespace {

bool validEvent(Event e) { return e && e->store && e->store->c; }

// Marks record number `target` complete; completion only moves forward.
void complete(EventCounters* c, uint64_t target) {
  uint64_t seen = c->completed.load();
  while (seen < target && !c->completed.compare_exchange_weak(seen, target)) {
  }
}

struct EventHandle {  // the layout inside cudaIpcEventHandle_t's 64 bytes
  char magic[8];
  int32_t pid, fd;
  uint64_t inode;
};

}  // namespace

extern "C" {

// ---------------------------------------------------------------- devices

Error cudaGetDeviceCount(int* count) {
  if (!count) return cudaErrorInvalidValue;
  *count = deviceCount();
  return *count > 0 ? cudaSuccess : kNoDevice;
}

Error cudaSetDevice(int device) {
  if (device < 0 || device >= deviceCount()) return cudaErrorInvalidDevice;
  currentDevice = device;
  return cudaSuccess;
}

Error cudaGetDevice(int* device) {
  if (!device) return cudaErrorInvalidValue;
  *device = currentDevice;
  return cudaSuccess;
}

Error cudaDeviceGetPCIBusId(char* pciBusId, int len, int device) {
  if (device < 0 || device >= deviceCount()) return cudaErrorInvalidDevice;
  if (!pciBusId || len < 13) return cudaErrorInvalidValue;
  std::snprintf(pciBusId, size_t(len), "0000:%02x:00.0", 0x18 + device);
  return cudaSuccess;
}

// ---------------------------------------------------------------- streams

Error cudaStreamCreateWithFlags(Stream* stream, unsigned int flags) {
  if (!stream || (flags & ~kStreamNonBlocking)) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> l(streams().mu);
  *stream = newStream(currentDevice, !(flags & kStreamNonBlocking), false);
  return cudaSuccess;
}

Error cudaStreamDestroy(Stream stream) {
  std::lock_guard<std::mutex> l(streams().mu);
  if (reinterpret_cast<uintptr_t>(stream) <= kStreamPerThread || !streams().all.erase(stream))
    return cudaErrorInvalidResourceHandle;
  stream->worker->retire();  // queued work still runs, then the thread ends
  delete stream;
  return cudaSuccess;
}

Error cudaStreamSynchronize(Stream stream) {
  auto w = workerOf(stream);
  if (!w) return cudaErrorInvalidResourceHandle;
  w->waitDone(w->pushed());
  return cudaSuccess;
}

Error cudaStreamQuery(Stream stream) {
  auto w = workerOf(stream);
  if (!w) return cudaErrorInvalidResourceHandle;
  return w->done() >= w->pushed() ? cudaSuccess : cudaErrorNotReady;
}

Error cudaStreamWaitEvent(Stream stream, Event event, unsigned int flags) {
  if (!validEvent(event)) return cudaErrorInvalidResourceHandle;
  if (flags > 1) return cudaErrorInvalidValue;  // cudaEventWaitDefault or cudaEventWaitExternal
  std::shared_ptr<EventStore> store = event->store;
  uint64_t target = store->c->recorded.load();
  if (target == 0) return workerOf(stream) ? cudaSuccess : cudaErrorInvalidResourceHandle;
  return enqueue(stream, [store, target] { fake::pollUntil([&] { return store->c->completed.load() >= target; }); });
}

Error cudaLaunchHostFunc(Stream stream, HostFn fn, void* userData) {
  if (!fn) return cudaErrorInvalidValue;
  return enqueue(stream, [fn, userData] { fn(userData); });
}

// ---------------------------------------------------------------- events

Error cudaEventCreateWithFlags(Event* event, unsigned int flags) {
  if (!event || (flags & ~(kEventBlockingSync | kEventDisableTiming | kEventInterprocess))) return cudaErrorInvalidValue;
  if ((flags & kEventInterprocess) && !(flags & kEventDisableTiming)) return cudaErrorInvalidValue;
  auto store = std::make_shared<EventStore>();
  if (flags & kEventInterprocess) {
    store->fd = int(syscall(SYS_memfd_create, "hcomm-fake-cuda-event", 1u /* MFD_CLOEXEC */));
    if (store->fd < 0 || ftruncate(store->fd, sizeof(EventCounters)) != 0) return cudaErrorMemoryAllocation;
    void* p = mmap(nullptr, sizeof(EventCounters), PROT_READ | PROT_WRITE, MAP_SHARED, store->fd, 0);
    if (p == MAP_FAILED) return cudaErrorMemoryAllocation;
    store->c = new (p) EventCounters;
  } else {
    store->c = new EventCounters;
  }
  *event = new CUevent_st{store, flags};
  return cudaSuccess;
}

Error cudaEventDestroy(Event event) {
  if (!validEvent(event)) return cudaErrorInvalidResourceHandle;
  delete event;  // queued work holds the counters until it ran
  return cudaSuccess;
}

Error cudaEventRecord(Event event, Stream stream) {
  if (!validEvent(event)) return cudaErrorInvalidResourceHandle;
  if (!workerOf(stream)) return cudaErrorInvalidResourceHandle;
  std::shared_ptr<EventStore> store = event->store;
  uint64_t target = ++store->c->recorded;
  return enqueue(stream, [store, target] { complete(store->c, target); });
}

Error cudaEventQuery(Event event) {
  if (!validEvent(event)) return cudaErrorInvalidResourceHandle;
  EventCounters* c = event->store->c;
  return c->completed.load() >= c->recorded.load() ? cudaSuccess : cudaErrorNotReady;
}

Error cudaEventSynchronize(Event event) {
  if (!validEvent(event)) return cudaErrorInvalidResourceHandle;
  EventCounters* c = event->store->c;
  uint64_t target = c->recorded.load();
  fake::pollUntil([&] { return c->completed.load() >= target; });
  return cudaSuccess;
}

Error cudaIpcGetEventHandle(IpcEventHandle* handle, Event event) {
  if (!handle) return cudaErrorInvalidValue;
  if (!validEvent(event) || !(event->flags & kEventInterprocess) || event->store->fd < 0)
    return cudaErrorInvalidResourceHandle;
  struct stat st;
  if (fstat(event->store->fd, &st) != 0) return cudaErrorMapBufferObjectFailed;
  EventHandle h{};
  std::memcpy(h.magic, kEventMagic, sizeof h.magic);
  h.pid = getpid();
  h.fd = event->store->fd;
  h.inode = st.st_ino;
  std::memset(handle, 0, sizeof *handle);
  std::memcpy(handle->reserved, &h, sizeof h);
  return cudaSuccess;
}

Error cudaIpcOpenEventHandle(Event* event, IpcEventHandle handle) {
  if (!event) return cudaErrorInvalidValue;
  EventHandle h;
  std::memcpy(&h, handle.reserved, sizeof h);
  if (std::memcmp(h.magic, kEventMagic, sizeof h.magic) != 0) return cudaErrorInvalidValue;
  if (h.pid == getpid()) return cudaErrorDeviceUninitialized;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/fd/%d", h.pid, h.fd);
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return cudaErrorMapBufferObjectFailed;
  struct stat st;
  void* p = MAP_FAILED;
  if (fstat(fd, &st) == 0 && uint64_t(st.st_ino) == h.inode)
    p = mmap(nullptr, sizeof(EventCounters), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    close(fd);
    return cudaErrorMapBufferObjectFailed;
  }
  auto store = std::make_shared<EventStore>();
  store->fd = fd;
  store->c = static_cast<EventCounters*>(p);
  *event = new CUevent_st{store, kEventDisableTiming | kEventInterprocess};
  return cudaSuccess;
}

// ---------------------------------------------------------------- errors

const char* cudaGetErrorString(Error error) {
  switch (int(error)) {
    case 0: return "no error (cudaSuccess)";
    case 1: return "invalid argument (cudaErrorInvalidValue)";
    case 2: return "out of memory (cudaErrorMemoryAllocation)";
    case 21: return "invalid copy direction for memcpy (cudaErrorInvalidMemcpyDirection)";
    case 100: return "no CUDA-capable device is detected (cudaErrorNoDevice)";
    case 101: return "invalid device ordinal (cudaErrorInvalidDevice)";
    case 201: return "invalid device context (cudaErrorDeviceUninitialized)";
    case 205: return "mapping of buffer object failed (cudaErrorMapBufferObjectFailed)";
    case 400: return "invalid resource handle (cudaErrorInvalidResourceHandle)";
    case 600: return "device not ready (cudaErrorNotReady)";
    default: return "unrecognized error code";
  }
}

}  // extern "C"
