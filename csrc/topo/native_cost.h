// The price of a device engine's whole collective (NCCL on CUDA buffers,
// algo/native_nccl.h; HCCL on NPU buffers, algo/native_hccl.h), next to the tuner's
// model of hcomm's own algorithms (topo/tuner.h).
//
// hcomm does not model the engines' internal algorithms; it measures them. When NCCL or
// HCCL is set up for a communicator, every rank times the engine's allreduce at two
// sizes and the ranks agree on the slowest rank's times (comm/device_price.cc). The line through the two points is
//   allreduce(S) = alpha + beta * S
// and the other collectives scale the per-byte term by the bytes a ring moves per rank
// relative to allreduce's 2(n-1)/n S: allgather and reduce_scatter of S in total
// (n-1)/n S, broadcast and reduce about S (pipelined chain). The tuner's decision then
// gets a "native" candidate priced so, chosen where it is cheaper than hcomm's pick.
#pragma once
#include <cstddef>

#include "common/fingerprint.h"
#include "topo/tuner.h"

namespace hcomm {

struct NativeCost {
  double alpha = 0;  // seconds per call
  double beta = 0;   // seconds per byte of an allreduce
  bool measured = false;
  // Predicted seconds of `kind` moving `bytes` (allgather / reduce_scatter: the
  // gathered total) on `n` ranks.
  double seconds(CollKind kind, size_t bytes, int n) const;
};

// The line through two timed allreduces (t1 seconds at b1 bytes, t2 at b2 > b1); noise
// that makes the slope or intercept negative is clamped to zero.
NativeCost fitNativeCost(size_t b1, double t1, size_t b2, double t2);

// Adds (or re-prices) the "native" candidate of `d` at c's price, labelled with the
// engine ("nccl", "hccl": the row's `inner`, which explain() shows); when the model
// decided (d.why == "model"), the cheapest applicable candidate is chosen again. No-op
// when the cost was not measured.
void priceNative(Decision& d, const NativeCost& c, CollKind kind, size_t bytes, int n, const char* engine);

// Whether a call the model planned at `hcommSeconds` runs faster natively.
bool nativeWins(const NativeCost& c, CollKind kind, size_t bytes, int n, double hcommSeconds);

}  // namespace hcomm
