// The reduction kernels compiled for the generic SIMD level (see kernels.inc).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "reduce/reduce.h"




namespace hcomm {
namespace kernels {
namespace generic {
#include "reduce/kernels.inc"
}  // namespace generic
}  // namespace kernels
}  // namespace hcomm
