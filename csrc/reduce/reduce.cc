// Run-time choice of the SIMD level for the reduction kernels.
#include "reduce/reduce.h"

#include <algorithm>

#include "common/param.h"

namespace hcomm {

namespace {

SimdLevel detect() {
  __builtin_cpu_init();
  SimdLevel best = SimdLevel::GENERIC;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = SimdLevel::AVX2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = SimdLevel::AVX512;
  std::string cap = envStr("HCOMM_SIMD");
  if (!cap.empty() && cap != "generic" && cap != "avx2" && cap != "avx512")
    throw Error("HCOMM_SIMD: unknown value '" + cap + "' (generic, avx2, avx512)");
  SimdLevel capLevel = cap == "generic" ? SimdLevel::GENERIC
                       : cap == "avx2"  ? SimdLevel::AVX2
                                        : SimdLevel::AVX512;
  return static_cast<SimdLevel>(std::min(static_cast<int>(best), static_cast<int>(capLevel)));
}

}  // namespace

SimdLevel simdLevel() {
  static const SimdLevel level = detect();  // immutable after the first call
  return level;
}

const char* simdName(SimdLevel level) {
  switch (level) {
    case SimdLevel::AVX512: return "avx512";
    case SimdLevel::AVX2: return "avx2";
    default: return "generic";
  }
}

namespace {

using ReduceKernel = void (*)(DataType, ReduceOp, void*, const void*, const void*, size_t);

// The kernel of `level`, plain or with streaming stores (generic code has no streaming
// stores: its plain loop serves both).
ReduceKernel reduceKernel(SimdLevel level, bool streamed) {
  if (static_cast<int>(level) > static_cast<int>(simdLevel()))
    throw Error(std::string("SIMD level ") + simdName(level) + " is not available on this CPU");
  switch (level) {
    case SimdLevel::AVX512: return streamed ? kernels::avx512::reduceStreamed : kernels::avx512::reduce;
    case SimdLevel::AVX2: return streamed ? kernels::avx2::reduceStreamed : kernels::avx2::reduce;
    default: return kernels::generic::reduce;
  }
}

}  // namespace

void reduceAt(SimdLevel level, DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t n) {
  reduceKernel(level, false)(dt, op, dst, a, b, n);
}

void reduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t n) {
  reduceAt(simdLevel(), dt, op, dst, a, b, n);
}

void reduceStreamedAt(SimdLevel level, DataType dt, ReduceOp op, void* dst, const void* a, const void* b,
                      size_t n) {
  reduceKernel(level, true)(dt, op, dst, a, b, n);
}

void reduceStreamed(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t n) {
  reduceStreamedAt(simdLevel(), dt, op, dst, a, b, n);
}

void scale(DataType dt, void* dst, const void* src, size_t n, double factor) {
  switch (simdLevel()) {
    case SimdLevel::AVX512: return kernels::avx512::scale(dt, dst, src, n, factor);
    case SimdLevel::AVX2: return kernels::avx2::scale(dt, dst, src, n, factor);
    default: return kernels::generic::scale(dt, dst, src, n, factor);
  }
}

void divide(DataType dt, void* dst, const void* src, size_t n, int64_t divisor) {
  switch (simdLevel()) {
    case SimdLevel::AVX512: return kernels::avx512::divide(dt, dst, src, n, divisor);
    case SimdLevel::AVX2: return kernels::avx2::divide(dt, dst, src, n, divisor);
    default: return kernels::generic::divide(dt, dst, src, n, divisor);
  }
}

void accumulateAt(SimdLevel level, DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide,
                  const void* b, size_t n) {
  bool half = dt == DataType::F16 || dt == DataType::BF16;
  if (!half && (dstWide || aWide))
    throw Error(std::string("accumulate: a float32 accumulator is only for float16 and bfloat16, not ") +
                dtypeName(dt));
  if (static_cast<int>(level) > static_cast<int>(simdLevel()))
    throw Error(std::string("SIMD level ") + simdName(level) + " is not available on this CPU");
  switch (level) {
    case SimdLevel::AVX512: return kernels::avx512::accumulate(dt, op, dst, dstWide, a, aWide, b, n);
    case SimdLevel::AVX2: return kernels::avx2::accumulate(dt, op, dst, dstWide, a, aWide, b, n);
    default: return kernels::generic::accumulate(dt, op, dst, dstWide, a, aWide, b, n);
  }
}

void accumulate(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide, const void* b,
                size_t n) {
  accumulateAt(simdLevel(), dt, op, dst, dstWide, a, aWide, b, n);
}

}  // namespace hcomm
