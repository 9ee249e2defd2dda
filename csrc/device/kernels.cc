#include "device/kernels.h"

#include <memory>
#include <string>

#include "common/param.h"
#include "reduce/reduce.h"
#include "transport/cuda_runtime.h"

#if HCOMM_WITH_CUDA
#include "reduce/cuda_reduce.h"
#endif

namespace hcomm {

namespace {

void check(int err, const char* what) {
  if (err == 0) return;
  throw Error(std::string(what) + " failed: " + loadCudaRuntime().api.GetErrorString(cuda::Error(err)));
}

#if HCOMM_WITH_CUDA
void cudaReduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t n, void* s) {
  check(hcommCudaReduce(int(dt), int(op), dst, a, b, n, s), "CUDA reduce kernel");
}
void cudaScale(DataType dt, void* dst, const void* src, size_t n, double f, void* s) {
  check(hcommCudaScale(int(dt), dst, src, n, f, s), "CUDA scale kernel");
}
void cudaDivide(DataType dt, void* dst, const void* src, size_t n, int64_t d, void* s) {
  check(hcommCudaDivide(int(dt), dst, src, n, d, s), "CUDA divide kernel");
}
void cudaAccumulate(DataType dt, ReduceOp op, void* dst, bool dw, const void* a, bool aw, const void* b, size_t n,
                    void* s) {
  check(hcommCudaAccumulate(int(dt), int(op), dst, dw, a, aw, b, n, s), "CUDA accumulate kernel");
}
const DeviceKernels kCuda{"cuda", cudaReduce, cudaScale, cudaDivide, cudaAccumulate};
#endif

// One CPU kernel call, run by the stream's host-function callback, which owns it.
struct HostCall {
  enum Kind { REDUCE, SCALE, DIVIDE, ACCUMULATE } kind;
  DataType dt;
  ReduceOp op;
  void* dst;
  const void* a;
  const void* b;
  size_t n;
  double factor;
  int64_t divisor;
  bool dstWide = false, aWide = false;

  static void run(void* self) {
    std::unique_ptr<HostCall> c(static_cast<HostCall*>(self));
    if (c->kind == REDUCE) reduce(c->dt, c->op, c->dst, c->a, c->b, c->n);
    else if (c->kind == ACCUMULATE) accumulate(c->dt, c->op, c->dst, c->dstWide, c->a, c->aWide, c->b, c->n);
    else if (c->kind == SCALE) scale(c->dt, c->dst, c->a, c->n, c->factor);
    else divide(c->dt, c->dst, c->a, c->n, c->divisor);
  }
};

void launch(HostCall* c, void* stream) {
  if (c->n == 0) {
    delete c;
    return;
  }
  auto err = loadCudaRuntime().api.LaunchHostFunc(static_cast<cuda::Stream>(stream), &HostCall::run, c);
  if (err != cuda::cudaSuccess) delete c;  // not queued: the callback will never free it
  check(err, "cudaLaunchHostFunc");
}

void hostReduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t n, void* s) {
  launch(new HostCall{HostCall::REDUCE, dt, op, dst, a, b, n, 0, 0}, s);
}
void hostScale(DataType dt, void* dst, const void* src, size_t n, double f, void* s) {
  launch(new HostCall{HostCall::SCALE, dt, ReduceOp::SUM, dst, src, nullptr, n, f, 0}, s);
}
void hostDivide(DataType dt, void* dst, const void* src, size_t n, int64_t d, void* s) {
  launch(new HostCall{HostCall::DIVIDE, dt, ReduceOp::SUM, dst, src, nullptr, n, 0, d}, s);
}
void hostAccumulate(DataType dt, ReduceOp op, void* dst, bool dw, const void* a, bool aw, const void* b, size_t n,
                    void* s) {
  auto* c = new HostCall{HostCall::ACCUMULATE, dt, op, dst, a, b, n, 0, 0};
  c->dstWide = dw;
  c->aWide = aw;
  launch(c, s);
}
const DeviceKernels kHostOnStream{"host functions on the stream", hostReduce, hostScale, hostDivide,
                                  hostAccumulate};

}  // namespace

void deviceCombine(const DeviceKernels& k, const ReduceSpec& spec, char* dst, size_t offset, const void* payload,
                   size_t len, void* stream) {
  size_t es = dtypeSize(spec.dtype), n = offset / es;
  const ReduceSpec::Accumulate& a = spec.accumulate;
  if (!a.on) {
    k.reduce(spec.dtype, spec.op, dst + offset, static_cast<const char*>(spec.src) + offset, payload, len / es, stream);
    return;
  }
  const char* src = spec.src ? static_cast<const char*>(spec.src) + n * (a.srcWide ? 4 : es) : nullptr;
  k.accumulate(spec.dtype, spec.op, dst + n * (a.dstWide ? 4 : es), a.dstWide, src, a.srcWide, payload, len / es,
               stream);
}

const DeviceKernels& deviceKernels() {
  loadCudaRuntime();  // throws when there is no runtime at all
#if HCOMM_WITH_CUDA
  if (cudaRuntimeIsLinked()) return kCuda;
#endif
  if (!envStr("HCOMM_CUDART_LIB").empty()) return kHostOnStream;
  throw Error("device reductions need hcomm's CUDA kernels: this build has none (HCOMM_WITH_CUDA=0); "
              "rebuild hcomm where nvcc is installed");
}

}  // namespace hcomm
