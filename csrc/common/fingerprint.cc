#include "common/fingerprint.h"

namespace hcomm {

uint64_t makeFingerprint(CollKind kind, DataType dt, ReduceOp op, int root, uint64_t count) {
  return (uint64_t(kind) & 0x1f) << 59 | (uint64_t(dt) & 0xf) << 55 | (uint64_t(op) & 0x7) << 52 |
         (uint64_t(root + 1) & 0xffff) << 36 | (count & 0xfffffffffull);
}

const char* collKindName(CollKind kind) {
  static const char* const kinds[] = {"point-to-point", "allreduce", "reduce", "broadcast", "allgather",
                                      "reduce_scatter", "alltoall", "gather", "scatter", "barrier"};
  int k = static_cast<int>(kind);
  return k >= 0 && k < 10 ? kinds[k] : "?";
}

std::string describeFingerprint(uint64_t fp) {
  int kind = int(fp >> 59);
  auto dt = static_cast<DataType>((fp >> 55) & 0xf);
  auto op = static_cast<ReduceOp>((fp >> 52) & 0x7);
  int root = int((fp >> 36) & 0xffff) - 1;
  uint64_t count = fp & 0xfffffffffull;
  std::string s = std::string(collKindName(static_cast<CollKind>(kind))) + "(" + dtypeName(dt);
  if (kind == int(CollKind::ALLREDUCE) || kind == int(CollKind::REDUCE) || kind == int(CollKind::REDUCE_SCATTER))
    s += std::string(", ") + opName(op);
  s += ", count " + std::to_string(count);
  if (root >= 0) s += ", root " + std::to_string(root);
  return s + ")";
}

}  // namespace hcomm
