#include "transport/nccl_loader.h"

#include <dlfcn.h>

#include <memory>
#include <mutex>

#include "transport/loader.h"

namespace hcomm {

namespace {

struct NcclState {  // the loaded library is process-wide by nature; loaded once
  std::mutex mu;
  std::unique_ptr<NcclLibrary> lib;
};

NcclState& ncclState() {
  static NcclState s;
  return s;
}

}  // namespace

nccl::DataType ncclType(DataType dt) {
  switch (dt) {
    case DataType::F16: return nccl::ncclFloat16;
    case DataType::BF16: return nccl::ncclBfloat16;
    case DataType::F32: return nccl::ncclFloat32;
    case DataType::F64: return nccl::ncclFloat64;
    case DataType::I8: return nccl::ncclInt8;
    case DataType::U8: case DataType::BOOL: return nccl::ncclUint8;
    case DataType::I32: return nccl::ncclInt32;
    case DataType::I64: return nccl::ncclInt64;
  }
  throw Error("nccl: unknown dtype");
}

std::string ncclVersionString(int v) {
  // NCCL_VERSION(X,Y,Z): X*1000+Y*100+Z up to 2.8, X*10000+Y*100+Z after.
  int major = v >= 10000 ? v / 10000 : v / 1000;
  int minor = v >= 10000 ? (v / 100) % 100 : (v / 100) % 10;
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(v % 100);
}

const NcclLibrary& loadNccl(const std::vector<std::string>& given) {
  NcclState& s = ncclState();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.lib) return *s.lib;
  auto lib = std::make_unique<NcclLibrary>();
  auto candidates = libraryCandidates("HCOMM_NCCL_LIB", given, {"libnccl.so.2", "libnccl.so"});
  lib->path = openFirst(candidates, "NCCL (libnccl.so.2; set HCOMM_NCCL_LIB or pip install nvidia-nccl-cu13)",
                        [&](void* h) -> std::string {
#define HCOMM_NCCL_RESOLVE(name)                                                     \
  lib->api.name = reinterpret_cast<nccl::name##Fn>(dlsym(h, "nccl" #name));          \
  if (!lib->api.name) return "nccl" #name;
                          HCOMM_NCCL_FUNCTIONS(HCOMM_NCCL_RESOLVE)
#undef HCOMM_NCCL_RESOLVE
                          return "";
                        });
  nccl::Result r = lib->api.GetVersion(&lib->version);
  if (r != nccl::ncclSuccess)
    throw Error("ncclGetVersion failed in " + lib->path + ": " + lib->api.GetErrorString(r));
  s.lib = std::move(lib);
  return *s.lib;
}

std::string ncclNewUniqueId(const std::vector<std::string>& candidates) {
  const NcclLibrary& lib = loadNccl(candidates);
  nccl::UniqueId id;
  nccl::Result r = lib.api.GetUniqueId(&id);
  if (r != nccl::ncclSuccess) throw Error(std::string("ncclGetUniqueId failed: ") + lib.api.GetErrorString(r));
  return std::string(id.internal, sizeof id.internal);
}

}  // namespace hcomm
