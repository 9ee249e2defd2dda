// A host-memory stand-in for libcudart and libnccl, for tests on machines with no GPU
// (tests/test_gpu_transport_fake.py builds it and points HCOMM_CUDART_LIB and
// HCOMM_NCCL_LIB at it). It models what hcomm's NCCL transport relies on:
//   - streams run their operations in order on a worker thread; events complete when
//     a stream reaches them; cudaStreamWaitEvent holds a stream until then;
//   - ncclCommSplit is collective over the parent and groups ranks by (color, key);
//   - ncclSend/ncclRecv match per (communicator, sender, receiver) in posting order,
//     and a size mismatch is an asynchronous error, as in NCCL.
// Sends are eager here (NCCL's block until the receive is posted), so the tests keep to
// patterns that are also valid under NCCL's rules. "Device memory" is host memory.
// No collectives: the native path needs a real GPU.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace {

struct Stream {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::function<void()>> ops;
  bool stop = false, busy = false;
  std::thread worker;

  Stream() : worker([this] { loop(); }) {}
  ~Stream() {
    {
      std::lock_guard<std::mutex> l(mu);
      stop = true;
    }
    cv.notify_all();
    worker.join();
  }
  void loop() {
    for (;;) {
      std::function<void()> op;
      {
        std::unique_lock<std::mutex> l(mu);
        cv.wait(l, [&] { return stop || !ops.empty(); });
        if (ops.empty()) return;
        op = std::move(ops.front());
        ops.pop_front();
        busy = true;
      }
      op();
      {
        std::lock_guard<std::mutex> l(mu);
        busy = false;
      }
      cv.notify_all();
    }
  }
  void push(std::function<void()> f) {
    {
      std::lock_guard<std::mutex> l(mu);
      ops.push_back(std::move(f));
    }
    cv.notify_all();
  }
  void drain() {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return ops.empty() && !busy; });
  }
};

// Handles 0, 1, 2 name the default streams: one more worker, never destroyed (it may
// outlive static destruction at exit).
Stream* streamOf(void* s) {
  static Stream* byDefault = new Stream;
  return reinterpret_cast<uintptr_t>(s) <= 2 ? byDefault : static_cast<Stream*>(s);
}

void enqueue(void* s, std::function<void()> f) { streamOf(s)->push(std::move(f)); }

struct Event {
  std::atomic<uint64_t> recorded{0}, completed{0};
};

struct Group {
  explicit Group(int n) : size(n) {}
  int size;
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::pair<int, int>, std::deque<std::vector<char>>> channels;  // (from, to)
  bool aborted = false;
  bool sizeMismatch = false;
  struct Split {
    std::vector<std::tuple<int, int, int>> entries;  // color, key, rank
    std::map<int, std::shared_ptr<Group>> made;
  };
  std::map<int, Split> splits;
};

struct Comm {
  std::shared_ptr<Group> group;
  int rank;
  int splits = 0;
};

struct UniqueId {
  char internal[128];
};

std::mutex registryMu;
std::map<std::string, std::shared_ptr<Group>> registry;

size_t typeSize(int t) {
  static const size_t sizes[] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2};
  return t >= 0 && t < 10 ? sizes[t] : 1;
}

}  // namespace

extern "C" {

// ---- CUDA runtime
int cudaGetDeviceCount(int* n) { *n = 4; return 0; }
int cudaSetDevice(int d) { return d >= 0 && d < 4 ? 0 : 101; }
int cudaGetDevice(int* d) { *d = 0; return 0; }
int cudaStreamCreateWithFlags(void** s, unsigned) { *s = new Stream; return 0; }
int cudaStreamDestroy(void* s) { delete static_cast<Stream*>(s); return 0; }
int cudaStreamSynchronize(void* s) { streamOf(s)->drain(); return 0; }
int cudaEventCreateWithFlags(void** e, unsigned) { *e = new Event; return 0; }
int cudaEventDestroy(void* e) { delete static_cast<Event*>(e); return 0; }
int cudaEventRecord(void* e, void* s) {
  auto* ev = static_cast<Event*>(e);
  uint64_t target = ++ev->recorded;
  enqueue(s, [ev, target] {
    uint64_t c = ev->completed;
    while (c < target && !ev->completed.compare_exchange_weak(c, target)) {
    }
  });
  return 0;
}
int cudaEventQuery(void* e) {
  auto* ev = static_cast<Event*>(e);
  return ev->completed >= ev->recorded ? 0 : 600;
}
int cudaStreamWaitEvent(void* s, void* e, unsigned) {
  auto* ev = static_cast<Event*>(e);
  uint64_t target = ev->recorded;
  enqueue(s, [ev, target] {
    while (ev->completed < target) std::this_thread::sleep_for(std::chrono::microseconds(20));
  });
  return 0;
}
int cudaMalloc(void** p, size_t n) { *p = std::malloc(n ? n : 1); return *p ? 0 : 2; }
int cudaFree(void* p) { std::free(p); return 0; }
int cudaHostAlloc(void** p, size_t n, unsigned) { return cudaMalloc(p, n); }
int cudaFreeHost(void* p) { return cudaFree(p); }
int cudaMemcpy(void* d, const void* s, size_t n, int) { std::memcpy(d, s, n); return 0; }
int cudaMemcpyAsync(void* d, const void* s, size_t n, int, void* stream) {
  enqueue(stream, [d, s, n] { std::memcpy(d, s, n); });
  return 0;
}
const char* cudaGetErrorString(int) { return "fake cuda error"; }
struct IpcH {
  char r[64];
};
// Not modelled by this single-process fake (every call reports cudaErrorNotSupported,
// 801), present so that the loader finds the whole table.
int cudaDeviceGetPCIBusId(char*, int, int) { return 801; }
int cudaStreamQuery(void* s) { streamOf(s)->drain(); return 0; }
int cudaEventSynchronize(void*) { return 801; }
int cudaPointerGetAttributes(void*, const void*) { return 801; }
int cudaIpcGetMemHandle(void*, void*) { return 801; }
int cudaIpcOpenMemHandle(void**, IpcH, unsigned) { return 801; }
int cudaIpcCloseMemHandle(void*) { return 801; }
int cudaIpcGetEventHandle(void*, void*) { return 801; }
int cudaIpcOpenEventHandle(void**, IpcH) { return 801; }
int cudaLaunchHostFunc(void*, void (*)(void*), void*) { return 801; }

// ---- NCCL
int ncclGetVersion(int* v) { *v = 23203; return 0; }
int ncclGetUniqueId(UniqueId* id) {
  static std::atomic<uint64_t> counter{1};
  std::memset(id->internal, 0, sizeof id->internal);
  uint64_t c = counter++;
  std::memcpy(id->internal, &c, sizeof c);
  return 0;
}
const char* ncclGetErrorString(int) { return "fake nccl error"; }
const char* ncclGetLastError(Comm*) { return ""; }
int ncclGroupStart() { return 0; }
int ncclGroupEnd() { return 0; }

int ncclCommInitRank(Comm** comm, int n, UniqueId id, int rank) {
  std::lock_guard<std::mutex> l(registryMu);
  auto& g = registry[std::string(id.internal, sizeof id.internal)];
  if (!g) g = std::make_shared<Group>(n);
  *comm = new Comm{g, rank};
  return 0;
}

int ncclCommSplit(Comm* parent, int color, int key, Comm** out, void*) {
  Group& g = *parent->group;
  std::unique_lock<std::mutex> l(g.mu);
  Group::Split& round = g.splits[parent->splits++];
  round.entries.emplace_back(color, key, parent->rank);
  g.cv.notify_all();
  g.cv.wait(l, [&] { return int(round.entries.size()) == g.size || g.aborted; });
  if (g.aborted) return 6;
  *out = nullptr;
  if (color < 0) return 0;
  std::vector<std::pair<int, int>> members;  // (key, parent rank)
  for (auto& e : round.entries)
    if (std::get<0>(e) == color) members.emplace_back(std::get<1>(e), std::get<2>(e));
  std::sort(members.begin(), members.end());
  int me = int(std::find(members.begin(), members.end(), std::make_pair(key, parent->rank)) - members.begin());
  auto& made = round.made[color];
  if (!made) made = std::make_shared<Group>(int(members.size()));
  *out = new Comm{made, me};
  return 0;
}

// Communicators are never freed: queued stream work may still point at them.
int ncclCommDestroy(Comm*) { return 0; }
int ncclCommAbort(Comm* c) {
  {
    std::lock_guard<std::mutex> l(c->group->mu);
    c->group->aborted = true;
  }
  c->group->cv.notify_all();
  return 0;
}
int ncclCommGetAsyncError(Comm* c, int* err) {
  std::lock_guard<std::mutex> l(c->group->mu);
  *err = c->group->sizeMismatch ? 5 : 0;
  return 0;
}

int ncclSend(const void* buf, size_t count, int type, int peer, Comm* c, void* s) {
  size_t bytes = count * typeSize(type);
  enqueue(s, [=] {
    const char* p = static_cast<const char*>(buf);
    std::vector<char> msg(p, p + bytes);
    Group& g = *c->group;
    {
      std::lock_guard<std::mutex> l(g.mu);
      g.channels[{c->rank, peer}].push_back(std::move(msg));
    }
    g.cv.notify_all();
  });
  return 0;
}

int ncclRecv(void* buf, size_t count, int type, int peer, Comm* c, void* s) {
  size_t bytes = count * typeSize(type);
  enqueue(s, [=] {
    Group& g = *c->group;
    std::unique_lock<std::mutex> l(g.mu);
    auto& q = g.channels[{peer, c->rank}];
    g.cv.wait(l, [&] { return !q.empty() || g.aborted; });
    if (q.empty()) return;
    std::vector<char> msg = std::move(q.front());
    q.pop_front();
    if (msg.size() != bytes) g.sizeMismatch = true;
    std::memcpy(buf, msg.data(), std::min(bytes, msg.size()));
  });
  return 0;
}

int ncclAllReduce(const void*, void*, size_t, int, int, Comm*, void*) { return 5; }
int ncclReduce(const void*, void*, size_t, int, int, int, Comm*, void*) { return 5; }
int ncclBroadcast(const void*, void*, size_t, int, int, Comm*, void*) { return 5; }
int ncclAllGather(const void*, void*, size_t, int, Comm*, void*) { return 5; }
int ncclReduceScatter(const void*, void*, size_t, int, int, Comm*, void*) { return 5; }
int ncclRedOpCreatePreMulSum(int*, void*, int, int, Comm*) { return 5; }
int ncclRedOpDestroy(int, Comm*) { return 5; }

}  // extern "C"
