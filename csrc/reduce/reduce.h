// CPU reduction kernels. The best SIMD level the CPU supports (AVX-512, AVX2, or
// portable code) is chosen once at run time, so the default build runs on any x86-64.
// f16 and bf16 are combined in f32 and rounded back to nearest-even.
#pragma once
#include <cstddef>
#include <string>

#include "common/types.h"

namespace hcomm {

enum class SimdLevel : int { GENERIC = 0, AVX2 = 1, AVX512 = 2 };

// dst[i] = a[i] op b[i]; dst may alias a or b. op is SUM, PROD, MIN or MAX
// (AVG and PREMUL_SUM are SUM plus a scale the collectives apply).
void reduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t count);
// reduce() for an output that aliases neither input and will not be read again before
// it leaves the cache: written with streaming stores where the CPU has AVX2.
void reduceStreamed(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t count);
// Memory::accumulate's host kernel (reduce/memory.h): one step of a reduction carried in
// float32 for f16/bf16 (dstWide / aWide: that side holds float32), rounded to 16 bits
// only when dst is not wide; a null `a` converts b alone.
void accumulate(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide, const void* b,
                size_t count);
// dst[i] = src[i] * factor (floating) or src[i] * (integer)factor; dst may alias src.
void scale(DataType dt, void* dst, const void* src, size_t count, double factor);
// dst[i] = src[i] / divisor, the post-step of AVG (integer division truncates).
void divide(DataType dt, void* dst, const void* src, size_t count, int64_t divisor);

SimdLevel simdLevel();  // the level in use (HCOMM_SIMD=generic|avx2|avx512 caps it)
const char* simdName(SimdLevel level);
// The same kernels at an explicit level, for tests of every path.
void reduceAt(SimdLevel level, DataType dt, ReduceOp op, void* dst, const void* a,
              const void* b, size_t count);
void accumulateAt(SimdLevel level, DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide,
                  const void* b, size_t count);
void reduceStreamedAt(SimdLevel level, DataType dt, ReduceOp op, void* dst, const void* a, const void* b,
                      size_t count);

namespace kernels {
// One definition per SIMD level, from kernels.inc compiled under a target pragma.
#define HCOMM_DECLARE_KERNELS(ns)                                                             \
  namespace ns {                                                                              \
  void reduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t n); \
  void reduceStreamed(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t n); \
  void scale(DataType dt, void* dst, const void* src, size_t n, double factor);             \
  void divide(DataType dt, void* dst, const void* src, size_t n, int64_t divisor);          \
  void accumulate(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide, \
                  const void* b, size_t n);                                                   \
  }
HCOMM_DECLARE_KERNELS(generic)
HCOMM_DECLARE_KERNELS(avx2)
HCOMM_DECLARE_KERNELS(avx512)
#undef HCOMM_DECLARE_KERNELS
}  // namespace kernels

}  // namespace hcomm
