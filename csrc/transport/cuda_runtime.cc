#include "transport/cuda_runtime.h"

#include <memory>
#include <utility>

#include "common/param.h"
#include "common/types.h"
#include "transport/loader.h"

#if HCOMM_WITH_CUDA
#include "reduce/cuda_reduce.h"
#endif

namespace hcomm {

namespace {

std::unique_ptr<CudaRuntime> openCudaRuntime(const std::vector<std::string>& candidates) {
  auto rt = std::make_unique<CudaRuntime>();
  rt->origin = openFirst(candidates, "the CUDA runtime (libcudart; set HCOMM_CUDART_LIB)",
                         [&](void* h) -> std::string {
#define HCOMM_CUDART_RESOLVE(name)                                                \
  rt->api.name = reinterpret_cast<cuda::name##Fn>(dlsym(h, "cuda" #name));        \
  if (!rt->api.name) return "cuda" #name;
                           HCOMM_CUDART_FUNCTIONS(HCOMM_CUDART_RESOLVE)
#undef HCOMM_CUDART_RESOLVE
                           return "";
                         });
  return rt;
}

std::unique_ptr<CudaRuntime> resolveCudaRuntime() {
  // HCOMM_CUDART_LIB wins even over the linked runtime: it lets the transport run on
  // another runtime (tests drive it with a host-memory fake on machines with no GPU).
  std::string forced = envStr("HCOMM_CUDART_LIB");
  if (!forced.empty()) return openCudaRuntime({forced});
  auto rt = std::make_unique<CudaRuntime>();
#if HCOMM_WITH_CUDA
  // The runtime linked statically into hcomm: one runtime in the process, shared with
  // the reduction kernels.
  std::string missing;
#define HCOMM_CUDART_STATIC(name)                                                             \
  rt->api.name = reinterpret_cast<cuda::name##Fn>(hcommCudaRuntimeSymbol("cuda" #name));      \
  if (!rt->api.name) missing += " cuda" #name;
  HCOMM_CUDART_FUNCTIONS(HCOMM_CUDART_STATIC)
#undef HCOMM_CUDART_STATIC
  if (!missing.empty()) throw Error("hcomm's linked CUDA runtime lacks:" + missing);
  int v = hcommCudaBuildVersion();
  rt->origin = "linked into hcomm (CUDA " + std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10) + ")";
  return rt;
#else
  return openCudaRuntime({"libcudart.so.13", "libcudart.so.12", "libcudart.so"});
#endif
}

}  // namespace

const CudaRuntime& loadCudaRuntime() {
  // Resolved once; a failure is rethrown on every call (the runtime cannot appear later).
  static const std::pair<std::unique_ptr<CudaRuntime>, std::string> once = [] {
    try {
      return std::make_pair(resolveCudaRuntime(), std::string());
    } catch (const Error& e) {
      return std::make_pair(std::unique_ptr<CudaRuntime>(), std::string(e.what()));
    }
  }();
  if (!once.first) throw Error(once.second);
  return *once.first;
}

int cudaDeviceCount(std::string* why) {
  try {
    const CudaRuntime& rt = loadCudaRuntime();
    int n = 0;
    cuda::Error e = rt.api.GetDeviceCount(&n);
    if (e != cuda::cudaSuccess) {
      if (why) *why = std::string("cudaGetDeviceCount: ") + rt.api.GetErrorString(e);
      return 0;
    }
    if (n == 0 && why) *why = "no CUDA device";
    return n;
  } catch (const Error& e) {
    if (why) *why = e.what();
    return 0;
  }
}

bool cudaRuntimeIsLinked() { return loadCudaRuntime().origin.rfind("linked into hcomm", 0) == 0; }

}  // namespace hcomm
