#include "transport/hccl.h"

#include <dlfcn.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <thread>
#include <memory>
#include <mutex>

#include "common/param.h"

namespace hcomm {

namespace {

constexpr hccl::AclError kAclRepeatInitialize = 100002;  // aclInit called before: fine

std::vector<std::string> candidates(const char* envVar, const char* file) {
  std::vector<std::string> out;
  std::string env = envStr(envVar);
  if (!env.empty()) out.push_back(env);
  for (const char* home : {"ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"}) {
    std::string dir = envStr(home);
    if (!dir.empty()) out.push_back(dir + "/lib64/" + file);
  }
  out.push_back(std::string("/usr/local/Ascend/ascend-toolkit/latest/lib64/") + file);
  out.push_back(file);  // the system search path (LD_LIBRARY_PATH, ldconfig)
  return out;
}

// dlopen of the first candidate; the handle stays open for the life of the process.
void* openFirst(const std::vector<std::string>& paths, const char* what, std::string* opened, std::string* tried) {
  for (const std::string& p : paths) {
    // RTLD_GLOBAL: libhccl resolves AscendCL symbols against the copy opened here.
    void* h = dlopen(p.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (h) {
      *opened = p;
      return h;
    }
    const char* err = dlerror();
    *tried += "\n  " + (err ? std::string(err) : p + ": cannot open");  // dlerror names the path
  }
  *tried = std::string(what) + " not found; tried:" + *tried;
  return nullptr;
}

std::unique_ptr<HcclLibrary> openHccl() {
  auto lib = std::make_unique<HcclLibrary>();
  std::string tried;
  void* acl = openFirst(candidates("HCOMM_ASCENDCL_LIB", "libascendcl.so"), "AscendCL (libascendcl.so)",
                        &lib->aclPath, &tried);
  if (!acl) throw Error("HCCL is not available: " + tried + "\n(install the CANN toolkit and source its set_env.sh)");
  tried.clear();
  void* hc = openFirst(candidates("HCOMM_HCCL_LIB", "libhccl.so"), "HCCL (libhccl.so)", &lib->hcclPath, &tried);
  if (!hc) throw Error("HCCL is not available: " + tried + "\n(install the CANN toolkit and source its set_env.sh)");
  std::string missing;
#define HCOMM_HCCL_RESOLVE(name)                                                     \
  lib->api.name = reinterpret_cast<hccl::name##Fn>(dlsym(hc, "Hccl" #name));         \
  if (!lib->api.name) missing += " Hccl" #name;
  HCOMM_HCCL_FUNCTIONS(HCOMM_HCCL_RESOLVE)
#undef HCOMM_HCCL_RESOLVE
#define HCOMM_ACL_RESOLVE(symbol, name)                                          \
  lib->api.name = reinterpret_cast<hccl::name##Fn>(dlsym(acl, #symbol));         \
  if (!lib->api.name) missing += " " #symbol;
  HCOMM_ACL_FUNCTIONS(HCOMM_ACL_RESOLVE)
#undef HCOMM_ACL_RESOLVE
  if (!missing.empty())
    throw Error("HCCL is not usable: " + lib->hcclPath + " / " + lib->aclPath + " lack:" + missing);
  hccl::AclError e = lib->api.AclInit(nullptr);
  if (e != 0 && e != kAclRepeatInitialize) throw Error("HCCL is not usable: aclInit failed with error " + std::to_string(e));
  return lib;
}

struct HcclState {  // the loaded libraries are process-wide by nature
  std::mutex mu;
  std::unique_ptr<HcclLibrary> lib;
};

HcclState& hcclState() {
  static HcclState s;
  return s;
}

hccl::DataType hcclType(DataType dt) {
  switch (dt) {
    case DataType::F16: return hccl::HCCL_DATA_TYPE_FP16;
    case DataType::BF16: return hccl::HCCL_DATA_TYPE_BFP16;
    case DataType::F32: return hccl::HCCL_DATA_TYPE_FP32;
    case DataType::F64: return hccl::HCCL_DATA_TYPE_FP64;
    case DataType::I8: return hccl::HCCL_DATA_TYPE_INT8;
    case DataType::U8: case DataType::BOOL: return hccl::HCCL_DATA_TYPE_UINT8;
    case DataType::I32: return hccl::HCCL_DATA_TYPE_INT32;
    case DataType::I64: return hccl::HCCL_DATA_TYPE_INT64;
  }
  throw Error("hccl: unknown dtype");
}

hccl::ReduceOp hcclOp(DataType dt, ReduceOp op) {
  if (dt == DataType::BOOL && op == ReduceOp::SUM) return hccl::HCCL_REDUCE_MAX;  // logical or
  if (dt == DataType::BOOL && op == ReduceOp::PROD) return hccl::HCCL_REDUCE_MIN;  // logical and
  switch (op) {
    case ReduceOp::SUM: return hccl::HCCL_REDUCE_SUM;
    case ReduceOp::PROD: return hccl::HCCL_REDUCE_PROD;
    case ReduceOp::MIN: return hccl::HCCL_REDUCE_MIN;
    case ReduceOp::MAX: return hccl::HCCL_REDUCE_MAX;
    default: break;
  }
  throw Error(std::string("hccl: ") + opName(op) + " is not supported on NPU buffers (needs a device kernel); "
              "use sum and scale afterwards");
}

}  // namespace

const HcclLibrary& loadHccl() {
  HcclState& s = hcclState();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.lib) s.lib = openHccl();
  return *s.lib;
}

std::string hcclUnavailableReason() {
  try {
    loadHccl();
    return "";
  } catch (const Error& e) {
    return e.what();
  }
}

std::string HcclComm::newRootInfo() {
  const HcclLibrary& lib = loadHccl();
  hccl::RootInfo info;
  hccl::Result r = lib.api.GetRootInfo(&info);
  if (r != hccl::HCCL_SUCCESS) throw Error("HcclGetRootInfo failed with HcclResult " + std::to_string(int(r)));
  return std::string(info.internal, sizeof info.internal);
}

HcclComm::HcclComm(int rank, int size, const std::string& rootInfo, int device)
    : lib_(&loadHccl()), rank_(rank), size_(size), device_(device) {
  if (size < 1 || rank < 0 || rank >= size)
    throw Error("hccl: rank " + std::to_string(rank) + " is out of range for size " + std::to_string(size));
  if (rootInfo.size() != sizeof(hccl::RootInfo))
    throw Error("hccl: the root info must be " + std::to_string(sizeof(hccl::RootInfo)) + " bytes, got " +
                std::to_string(rootInfo.size()));
  checkAcl(lib_->api.AclrtSetDevice(device), "aclrtSetDevice");
  hccl::RootInfo info;
  std::memcpy(info.internal, rootInfo.data(), sizeof info.internal);
  check(lib_->api.CommInitRootInfo(uint32_t(size), &info, uint32_t(rank), &comm_), "HcclCommInitRootInfo");
  checkAcl(lib_->api.AclrtCreateStream(&stream_), "aclrtCreateStream");
}

HcclComm::~HcclComm() {
  if (stream_) {
    lib_->api.AclrtSynchronizeStream(stream_);
    lib_->api.AclrtDestroyStream(stream_);
  }
  if (comm_) lib_->api.CommDestroy(comm_);
}

void HcclComm::check(hccl::Result r, const char* what) const {
  if (r != hccl::HCCL_SUCCESS)
    throw Error(std::string("hccl: ") + what + " failed with HcclResult " + std::to_string(int(r)) + " [rank " +
                std::to_string(rank_) + ", device " + std::to_string(device_) + "]");
}

void HcclComm::checkAcl(hccl::AclError e, const char* what) const {
  constexpr hccl::AclError kStreamTaskFailed = 507899;  // ACL_ERROR_RT_INTERNAL_ERROR: work on the stream failed
  if (e != 0)
    throw Error(std::string("hccl: ") + what + " failed with aclError " + std::to_string(e) + " [rank " +
                std::to_string(rank_) + ", device " + std::to_string(device_) + "]" +
                (e == kStreamTaskFailed ? ": an HCCL collective on this stream failed (the ranks' calls differ in "
                                          "count, dtype, op or root, or a peer failed; HCCL's log says which)"
                                        : ""));
}

void HcclComm::checkPeer(int peer, const char* what) const {
  if (peer < 0 || peer >= size_ || peer == rank_)
    throw Error(std::string("hccl: ") + what + " rank " + std::to_string(peer) + " is not a peer of rank " +
                std::to_string(rank_) + " in a group of " + std::to_string(size_));
}

// HCCL takes non-const buffers throughout; it does not write the inputs.
void HcclComm::allreduce(const void* in, void* out, size_t count, DataType dt, ReduceOp op, void* stream) {
  if (count == 0) return;
  check(lib_->api.AllReduce(const_cast<void*>(in), out, count, hcclType(dt), hcclOp(dt, op), comm_, pick(stream)),
        "HcclAllReduce");
}

void HcclComm::reduce(const void* in, void* out, size_t count, DataType dt, ReduceOp op, int root, void* stream) {
  if (count == 0) return;
  if (root < 0 || root >= size_) throw Error("hccl: reduce root " + std::to_string(root) + " is out of range");
  check(lib_->api.Reduce(const_cast<void*>(in), out, count, hcclType(dt), hcclOp(dt, op), uint32_t(root), comm_,
                         pick(stream)),
        "HcclReduce");
}

void HcclComm::broadcast(void* buf, size_t count, DataType dt, int root, void* stream) {
  if (count == 0) return;
  if (root < 0 || root >= size_) throw Error("hccl: broadcast root " + std::to_string(root) + " is out of range");
  check(lib_->api.Broadcast(buf, count, hcclType(dt), uint32_t(root), comm_, pick(stream)), "HcclBroadcast");
}

void HcclComm::allgather(const void* in, void* out, size_t sendCount, DataType dt, void* stream) {
  if (sendCount == 0) return;
  check(lib_->api.AllGather(const_cast<void*>(in), out, sendCount, hcclType(dt), comm_, pick(stream)),
        "HcclAllGather");
}

void HcclComm::reduceScatter(const void* in, void* out, size_t recvCount, DataType dt, ReduceOp op, void* stream) {
  if (recvCount == 0) return;
  check(lib_->api.ReduceScatter(const_cast<void*>(in), out, recvCount, hcclType(dt), hcclOp(dt, op), comm_,
                                pick(stream)),
        "HcclReduceScatter");
}

void HcclComm::send(const void* buf, size_t count, DataType dt, int peer, void* stream) {
  checkPeer(peer, "send to");
  if (count == 0) return;
  check(lib_->api.Send(const_cast<void*>(buf), count, hcclType(dt), uint32_t(peer), comm_, pick(stream)), "HcclSend");
}

void HcclComm::recv(void* buf, size_t count, DataType dt, int peer, void* stream) {
  checkPeer(peer, "receive from");
  if (count == 0) return;
  check(lib_->api.Recv(buf, count, hcclType(dt), uint32_t(peer), comm_, pick(stream)), "HcclRecv");
}

void HcclComm::synchronize(void* stream) {
  checkAcl(lib_->api.AclrtSynchronizeStream(pick(stream)), "aclrtSynchronizeStream");
}

void HcclComm::synchronize(void* stream, double timeoutSec) {
  hccl::AclEvent e = nullptr;
  checkAcl(lib_->api.AclrtCreateEvent(&e), "aclrtCreateEvent");
  std::unique_ptr<void, std::function<void(void*)>> owned(e, [this](void* ev) { lib_->api.AclrtDestroyEvent(ev); });
  checkAcl(lib_->api.AclrtRecordEvent(e, pick(stream)), "aclrtRecordEvent");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeoutSec);
  for (int idle = 0;; ++idle) {
    int status = hccl::kEventNotReady;
    checkAcl(lib_->api.AclrtQueryEventStatus(e, &status), "aclrtQueryEventStatus");
    if (status == hccl::kEventComplete) break;
    if (std::chrono::steady_clock::now() > deadline)
      throw TimeoutError("hccl: the collective did not finish within the timeout (HCOMM_TIMEOUT) [rank " +
                         std::to_string(rank_) + ", npu:" + std::to_string(device_) + "]: a rank did not join it");
    if (idle > 200) std::this_thread::sleep_for(std::chrono::microseconds(50));
    else std::this_thread::yield();
  }
  synchronize(stream);  // finished: returns at once, with the error HCCL's work recorded
}

}  // namespace hcomm
