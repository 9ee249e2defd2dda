#include "comm/placement.h"

namespace hcomm {

namespace {
thread_local Placement tCurrent;
}  // namespace

const Placement& currentPlacement() { return tCurrent; }

PlacementScope::PlacementScope(Placement p) : saved_(tCurrent) { tCurrent = p; }

PlacementScope::~PlacementScope() { tCurrent = saved_; }

}  // namespace hcomm
