// The reduction kernels compiled for the avx2 SIMD level (see kernels.inc).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "reduce/reduce.h"

#pragma GCC target("avx2,fma,f16c")
#define HCOMM_KERNEL_F16C 1

namespace hcomm {
namespace kernels {
namespace avx2 {
#include "reduce/kernels.inc"
}  // namespace avx2
}  // namespace kernels
}  // namespace hcomm
