// The reduction kernels compiled for the avx512 SIMD level (see kernels.inc).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "reduce/reduce.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#define HCOMM_KERNEL_F16C 1
#define HCOMM_KERNEL_AVX512 1

namespace hcomm {
namespace kernels {
namespace avx512 {
#include "reduce/kernels.inc"
}  // namespace avx512
}  // namespace kernels
}  // namespace hcomm
