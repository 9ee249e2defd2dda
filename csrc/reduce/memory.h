// Where a collective's buffers live and how they are touched: copies, reductions, scales
// and scratch buffers, for host memory (the CPU SIMD kernels) or one device (CUDA
// kernels ordered on a stream). Links carries one, so every algorithm runs on either
// kind of memory unchanged, as Gloo's algorithms take their CUDA workspace and reduce
// function as parameters. Algorithms and transports never memcpy or new[] a buffer of
// the collective themselves: they ask the Memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/types.h"

namespace hcomm {

class Memory {
 public:
  virtual ~Memory() = default;
  virtual const char* name() const = 0;  // "host", "cuda:0"
  // -1 for host memory, else the device index.
  virtual int device() const { return -1; }
  // dst = src, bytes; the ranges may overlap (memmove).
  virtual void copy(void* dst, const void* src, size_t bytes) const = 0;
  // dst[i] = a[i] op b[i] over `count` elements; dst may alias a or b. `streamed`: dst is
  // not read again before it would have left the cache (a hint; hosts use streaming stores).
  virtual void reduce(DataType dt, ReduceOp op, void* dst, const void* a, const void* b, size_t count,
                      bool streamed = false) const = 0;
  // One step of a reduction carried in the accumulation type (float32 for float16 and
  // bfloat16, the dtype itself otherwise), so that a result is rounded to 16 bits once:
  //   t[i] = a ? A(a[i]) op B(b[i]) : B(b[i])      computed in float32 for 16-bit dt
  //   dst[i] = dstWide ? t[i] (as float32) : t[i] rounded once to dt (nearest-even)
  // where A(x) reads a float32 when aWide, else dt widened exactly to float32, and B(x)
  // widens dt. `b` always holds dt. Folding rank 0's contribution with a = null, then
  // ranks 1..n-1 with a = the running float32 partial, the last step narrowing, gives the
  // sum (or product) in rank order rounded once. For other dtypes the wide flags must be
  // false: it is reduce() (or a copy when a is null). dst may alias a or b. op is SUM,
  // PROD, MIN or MAX.
  virtual void accumulate(DataType dt, ReduceOp op, void* dst, bool dstWide, const void* a, bool aWide, const void* b,
                          size_t count) const = 0;
  // dst[i] = src[i] * factor (PREMUL_SUM's pre-step); dst may alias src.
  virtual void scale(DataType dt, void* dst, const void* src, size_t count, double factor) const = 0;
  // dst[i] = src[i] / divisor (AVG's post-step); dst may alias src.
  virtual void divide(DataType dt, void* dst, const void* src, size_t count, int64_t divisor) const = 0;
  // A buffer of at least `bytes` in this memory, freed when the last owner lets go.
  virtual std::shared_ptr<char> alloc(size_t bytes) const = 0;
  // Returns once everything this Memory queued is done (device: the stream drained;
  // host: nothing to wait for). Transports call it before handing bytes to another
  // process or the wire.
  virtual void synchronize() const {}
};

// The one host instance (stateless, so shared).
const Memory& hostMemory();

}  // namespace hcomm
