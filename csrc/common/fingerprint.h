// A collective's signature packed in 64 bits, carried by every message it sends and
// compared by the receiver, so ranks that call different collectives (or the same one
// with different dtype, op, count or root) fail at the first exchange with both
// signatures in the error instead of hanging. 0 means "not checked" (point to point).
//   [63..59] collective  [58..55] dtype  [54..52] reduce op  [51..36] root+1  [35..0] count
#pragma once
#include <cstdint>
#include <string>

#include "common/types.h"

namespace hcomm {

enum class CollKind : int { NONE, ALLREDUCE, REDUCE, BROADCAST, ALLGATHER, REDUCE_SCATTER, ALLTOALL, GATHER,
                            SCATTER, BARRIER };

const char* collKindName(CollKind kind);  // "allreduce", ...; "point-to-point" for NONE
uint64_t makeFingerprint(CollKind kind, DataType dt, ReduceOp op, int root, uint64_t count);
std::string describeFingerprint(uint64_t fp);  // "allreduce(float32, sum, count 1024)"

// The error text when a message's fingerprint differs from the receive's.
inline std::string fingerprintMismatch(int peer, uint64_t theirs, uint64_t mine) {
  return "collective mismatch: rank " + std::to_string(peer) + " called " + describeFingerprint(theirs) +
         " while this rank called " + describeFingerprint(mine);
}

}  // namespace hcomm
