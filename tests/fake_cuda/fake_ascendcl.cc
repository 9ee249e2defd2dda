// A host-memory fake of libascendcl (the AscendCL runtime), for tests on machines with
// no NPU; fake_hccl.cc queues its work on these streams. hcomm loads it through
// HCOMM_ASCENDCL_LIB (csrc/transport/hccl.cc resolves the HCOMM_ACL_FUNCTIONS of
// csrc/transport/hccl_api.h, checked here by static_assert).
//
// What it models, as AscendCL does it:
//   - aclInit once per process (a second call gives ACL_ERROR_REPEAT_INITIALIZE,
//     100002); HCOMM_FAKE_NPU_DEVICES devices (default 1); aclrtSetDevice per host
//     thread, an invalid id gives ACL_ERROR_RT_INVALID_DEVICEID (107001);
//     aclrtGetDevice and aclrtCreateStream before any aclrtSetDevice on the thread give
//     ACL_ERROR_RT_CONTEXT_NULL (107002).
//   - streams: FIFOs run by a worker thread each (a null stream is the thread's
//     device's default stream); aclrtSynchronizeStream waits, then reports (once) an
//     error that stream work recorded (an HCCL operation that failed:
//     ACL_ERROR_RT_INTERNAL_ERROR, 507899).
//   - host callbacks as AscendCL runs them: aclrtSubscribeReport(threadId, stream) binds
//     a stream to a host thread (a stream bound twice: ACL_ERROR_REPEAT_SUBSCRIBE,
//     100033); aclrtLaunchCallback on a stream no thread is bound to gives
//     ACL_ERROR_RT_STREAM_NO_CB_REG (107015); otherwise, in stream order, the callback
//     is handed to the bound thread, which runs it inside its aclrtProcessReport(timeout
//     ms, -1 forever; nothing within it: ACL_ERROR_WAIT_CALLBACK_TIMEOUT, 100036; a
//     thread bound to no stream: ACL_ERROR_RT_THREAD_SUBSCRIBE, 107012). With
//     ACL_CALLBACK_BLOCK (1) the stream waits until the callback has returned;
//     ACL_CALLBACK_NO_BLOCK (0) lets it go on. aclrtUnSubscribeReport unbinds.
//   - device memory: aclrtMalloc (needs aclrtSetDevice on the thread) hands out host
//     memory that the fake remembers as the device's; aclrtMemcpy / aclrtMemcpyAsync
//     check that `kind` matches where dst and src live (a device pointer on the host
//     side or the reverse, or count > destMax, gives ACL_ERROR_RT_PARAM_INVALID, 107000)
//     and run in stream order when async.
//   - events: aclrtRecordEvent marks the work queued on a stream so far;
//     aclrtQueryEventStatus says COMPLETE once that work ran (an event never recorded is
//     complete); aclrtStreamWaitEvent makes a stream wait for it.
//
// Where it differs (known, on purpose): device memory is host memory (HCCL's buffers may
// be host memory here, where HCCL needs device memory), no contexts beyond "the thread's
// device", a thread id is the pthread_t of the thread calling aclrtProcessReport, error
// codes other than those above are not modelled. hcommFakeAclStreamError and
// hcommFakeAclStreamRun are the fake's own entry points (not AscendCL's), through which
// fake_hccl.cc fails a stream and queues its operations on one (the device work a real
// HCCL would launch).
#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <type_traits>

#include "fake_common.h"
#include "transport/hccl_api.h"

using hcomm::hccl::AclError;
using hcomm::hccl::AclStream;

namespace {

constexpr AclError kRepeatInitialize = 100002;  // ACL_ERROR_REPEAT_INITIALIZE
constexpr AclError kParamInvalid = 107000;      // ACL_ERROR_RT_PARAM_INVALID
constexpr AclError kInvalidDevice = 107001;     // ACL_ERROR_RT_INVALID_DEVICEID
constexpr AclError kContextNull = 107002;       // ACL_ERROR_RT_CONTEXT_NULL
constexpr AclError kRepeatSubscribe = 100033;   // ACL_ERROR_REPEAT_SUBSCRIBE
constexpr AclError kCallbackTimeout = 100036;   // ACL_ERROR_WAIT_CALLBACK_TIMEOUT
constexpr AclError kThreadSubscribe = 107012;   // ACL_ERROR_RT_THREAD_SUBSCRIBE
constexpr AclError kStreamNoCallback = 107015;  // ACL_ERROR_RT_STREAM_NO_CB_REG

struct Stream {
  std::shared_ptr<fake::Worker> worker = fake::Worker::start();
  int device = 0;
  std::atomic<int> error{0};
};

struct Event {
  std::shared_ptr<fake::Worker> worker;  // null until recorded
  uint64_t ticket = 0;
  bool done() const { return !worker || worker->done() >= ticket; }
};

// The callbacks handed to one subscribed thread, run in its aclrtProcessReport.
struct Reports {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::function<void()>> queue;
};

struct State {
  std::mutex mu;
  std::map<Stream*, uint64_t> boundTo;                    // stream -> subscribed thread
  std::map<uint64_t, std::shared_ptr<Reports>> reports;  // thread -> its callbacks
  bool initialized = false;
  std::set<Stream*> streams;
  std::map<int, Stream*> defaults;
  std::map<uintptr_t, size_t> device;  // aclrtMalloc'ed blocks: start -> bytes
  std::set<Event*> events;
};

State& state() {
  static State* s = new State;  // never destroyed: workers may outlive exit
  return *s;
}

int deviceCount() {
  const char* v = std::getenv("HCOMM_FAKE_NPU_DEVICES");
  return v && *v ? std::atoi(v) : 1;
}

thread_local int currentDevice = -1;  // no device set on this thread yet

Stream* resolve(AclStream handle) {
  State& s = state();
  std::lock_guard<std::mutex> l(s.mu);
  if (!handle) {
    if (currentDevice < 0) return nullptr;
    Stream*& d = s.defaults[currentDevice];
    if (!d) d = new Stream;
    d->device = currentDevice;
    return d;
  }
  auto* st = static_cast<Stream*>(handle);
  return s.streams.count(st) ? st : nullptr;
}

// Is [p, p + n) inside one aclrtMalloc'ed block?
bool onDevice(const void* p, size_t n) {
  State& s = state();
  std::lock_guard<std::mutex> l(s.mu);
  auto a = uintptr_t(p);
  auto it = s.device.upper_bound(a);
  if (it == s.device.begin()) return false;
  --it;
  return a >= it->first && a + n <= it->first + it->second;
}

// The check aclrtMemcpy makes: kind says where each side lives.
AclError checkCopy(void* dst, size_t destMax, const void* src, size_t count, int kind) {
  if (count > destMax || kind < 0 || kind > 3) return kParamInvalid;
  if (count == 0) return 0;
  if (!dst || !src) return kParamInvalid;
  bool dstDev = kind == 1 || kind == 3, srcDev = kind == 2 || kind == 3;
  if (onDevice(dst, count) != dstDev || onDevice(src, count) != srcDev) return kParamInvalid;
  return 0;
}

}  // namespace

extern "C" {

AclError aclInit(const char* configPath) {
  (void)configPath;
  std::lock_guard<std::mutex> l(state().mu);
  if (state().initialized) return kRepeatInitialize;
  state().initialized = true;
  return 0;
}

AclError aclrtSetDevice(int32_t deviceId) {
  if (deviceId < 0 || deviceId >= deviceCount()) return kInvalidDevice;
  currentDevice = deviceId;
  return 0;
}

AclError aclrtGetDevice(int32_t* deviceId) {
  if (!deviceId) return kParamInvalid;
  if (currentDevice < 0) return kContextNull;
  *deviceId = currentDevice;
  return 0;
}

AclError aclrtGetDeviceCount(uint32_t* count) {
  if (!count) return kParamInvalid;
  *count = uint32_t(deviceCount());
  return 0;
}

AclError aclrtCreateStream(AclStream* stream) {
  if (!stream) return kParamInvalid;
  if (currentDevice < 0) return kContextNull;
  auto* s = new Stream;
  s->device = currentDevice;
  std::lock_guard<std::mutex> l(state().mu);
  state().streams.insert(s);
  *stream = s;
  return 0;
}

AclError aclrtSynchronizeStream(AclStream stream) {
  Stream* s = resolve(stream);
  if (!s) return stream ? kParamInvalid : kContextNull;
  s->worker->waitDone(s->worker->pushed());
  return s->error.exchange(0);
}

AclError aclrtDestroyStream(AclStream stream) {
  std::lock_guard<std::mutex> l(state().mu);
  auto* s = static_cast<Stream*>(stream);
  if (!stream || !state().streams.erase(s)) return kParamInvalid;
  state().boundTo.erase(s);
  s->worker->retire();  // queued work still runs
  delete s;
  return 0;
}

AclError aclrtSubscribeReport(uint64_t threadId, AclStream stream) {
  Stream* s = resolve(stream);
  if (!s) return kParamInvalid;
  std::lock_guard<std::mutex> l(state().mu);
  if (state().boundTo.count(s)) return kRepeatSubscribe;
  state().boundTo[s] = threadId;
  auto& r = state().reports[threadId];
  if (!r) r = std::make_shared<Reports>();
  return 0;
}

AclError aclrtUnSubscribeReport(uint64_t threadId, AclStream stream) {
  Stream* s = resolve(stream);
  if (!s) return kParamInvalid;
  std::lock_guard<std::mutex> l(state().mu);
  auto it = state().boundTo.find(s);
  if (it == state().boundTo.end() || it->second != threadId) return kStreamNoCallback;
  state().boundTo.erase(it);
  return 0;
}

// aclError aclrtLaunchCallback(aclrtCallback fn, void* userData, aclrtCallbackBlockType, aclrtStream)
AclError aclrtLaunchCallback(void (*fn)(void*), void* userData, int blockType, AclStream stream) {
  Stream* s = resolve(stream);
  if (!s || !fn || blockType < 0 || blockType > 1) return kParamInvalid;
  std::shared_ptr<Reports> to;
  {
    std::lock_guard<std::mutex> l(state().mu);
    auto it = state().boundTo.find(s);
    if (it == state().boundTo.end()) return kStreamNoCallback;
    to = state().reports[it->second];
  }
  bool block = blockType == 1;  // ACL_CALLBACK_BLOCK
  s->worker->push([to, fn, userData, block] {
    auto done = std::make_shared<std::atomic<bool>>(false);
    {
      std::lock_guard<std::mutex> l(to->mu);
      to->queue.push_back([fn, userData, done, to] {
        fn(userData);
        std::lock_guard<std::mutex> l2(to->mu);
        done->store(true);
        to->cv.notify_all();
      });
    }
    to->cv.notify_all();
    if (!block) return;
    std::unique_lock<std::mutex> l(to->mu);  // the stream goes on once the callback returned
    to->cv.wait(l, [&] { return done->load(); });
  });
  return 0;
}

AclError aclrtProcessReport(int32_t timeout) {
  if (timeout == 0 || timeout < -1) return kParamInvalid;
  std::shared_ptr<Reports> mine;
  {
    std::lock_guard<std::mutex> l(state().mu);
    auto it = state().reports.find(uint64_t(pthread_self()));
    if (it == state().reports.end()) return kThreadSubscribe;
    mine = it->second;
  }
  std::function<void()> next;
  {
    std::unique_lock<std::mutex> l(mine->mu);
    auto ready = [&] { return !mine->queue.empty(); };
    if (timeout < 0) mine->cv.wait(l, ready);
    else if (!mine->cv.wait_for(l, std::chrono::milliseconds(timeout), ready)) return kCallbackTimeout;
    next = std::move(mine->queue.front());
    mine->queue.pop_front();
  }
  next();
  return 0;
}

AclError aclrtMalloc(void** devPtr, size_t size, int policy) {
  (void)policy;
  if (!devPtr || size == 0) return kParamInvalid;
  if (currentDevice < 0) return kContextNull;
  void* p = std::aligned_alloc(512, (size + 511) / 512 * 512);
  if (!p) return 207001;  // ACL_ERROR_RT_MEMORY_ALLOCATION
  std::lock_guard<std::mutex> l(state().mu);
  state().device[uintptr_t(p)] = size;
  *devPtr = p;
  return 0;
}

AclError aclrtFree(void* devPtr) {
  {
    std::lock_guard<std::mutex> l(state().mu);
    if (!state().device.erase(uintptr_t(devPtr))) return kParamInvalid;
  }
  std::free(devPtr);
  return 0;
}

AclError aclrtMemcpy(void* dst, size_t destMax, const void* src, size_t count, int kind) {
  AclError e = checkCopy(dst, destMax, src, count, kind);
  if (e == 0 && count) std::memmove(dst, src, count);
  return e;
}

AclError aclrtMemcpyAsync(void* dst, size_t destMax, const void* src, size_t count, int kind, AclStream stream) {
  AclError e = checkCopy(dst, destMax, src, count, kind);
  if (e != 0) return e;
  Stream* s = resolve(stream);
  if (!s) return kParamInvalid;
  if (count) s->worker->push([dst, src, count] { std::memmove(dst, src, count); });
  return 0;
}

AclError aclrtCreateEvent(void** event) {
  if (!event) return kParamInvalid;
  auto* e = new Event;
  std::lock_guard<std::mutex> l(state().mu);
  state().events.insert(e);
  *event = e;
  return 0;
}

AclError aclrtDestroyEvent(void* event) {
  std::lock_guard<std::mutex> l(state().mu);
  if (!state().events.erase(static_cast<Event*>(event))) return kParamInvalid;
  delete static_cast<Event*>(event);
  return 0;
}

AclError aclrtRecordEvent(void* event, AclStream stream) {
  Stream* s = resolve(stream);
  if (!s || !event) return kParamInvalid;
  auto* e = static_cast<Event*>(event);
  e->worker = s->worker;
  e->ticket = s->worker->pushed();
  return 0;
}

AclError aclrtQueryEventStatus(void* event, int* status) {
  if (!event || !status) return kParamInvalid;
  *status = static_cast<Event*>(event)->done() ? 1 : 0;  // COMPLETE : NOT_READY
  return 0;
}

AclError aclrtStreamWaitEvent(AclStream stream, void* event) {
  Stream* s = resolve(stream);
  if (!s || !event) return kParamInvalid;
  Event at = *static_cast<Event*>(event);  // the record as it is now, as ACL takes it
  if (at.worker) s->worker->push([at] { at.worker->waitDone(at.ticket); });
  return 0;
}

// The fake's own: runs fn(userData) in `stream`'s order, as device work (fake_hccl.cc's
// operations); 0, or ACL_ERROR_RT_PARAM_INVALID for an unknown stream.
AclError hcommFakeAclStreamRun(AclStream stream, void (*fn)(void*), void* userData) {
  Stream* s = resolve(stream);
  if (!s || !fn) return kParamInvalid;
  s->worker->push([fn, userData] { fn(userData); });
  return 0;
}

// The fake's own: the next aclrtSynchronizeStream of `stream` reports `error`.
void hcommFakeAclStreamError(AclStream stream, int error) {
  Stream* s = resolve(stream);
  if (s) {
    int none = 0;
    s->error.compare_exchange_strong(none, error);
  }
}

}  // extern "C"

#define HCOMM_FAKE_CHECK(symbol, name)                                                       \
  static_assert(std::is_same<decltype(&::symbol), hcomm::hccl::name##Fn>::value, #symbol \
                ": the fake's type differs from hccl_api.h");
HCOMM_ACL_FUNCTIONS(HCOMM_FAKE_CHECK)
#undef HCOMM_FAKE_CHECK
