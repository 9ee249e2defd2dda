// Where the buffers of the call being made on this thread live: host memory, or one CUDA
// device with the caller's stream. The bindings set it for the duration of one call
// (PlacementScope) after reading it from the arrays; the Communicator reads it when the
// call is submitted. A thread-local because it is the calling thread's state, as CUDA's
// current device and torch's current stream are; the host path pays one load for it.
#pragma once

namespace hcomm {

struct Placement {
  int device = -1;          // -1: host memory
  void* stream = nullptr;   // the caller's cudaStream_t (null: the legacy default stream)
  bool npu = false;         // an Ascend NPU (stream: an aclrtStream), not a CUDA device
  bool onDevice() const { return device >= 0; }
};

const Placement& currentPlacement();

class PlacementScope {
 public:
  explicit PlacementScope(Placement p);
  ~PlacementScope();
  PlacementScope(const PlacementScope&) = delete;
  PlacementScope& operator=(const PlacementScope&) = delete;

 private:
  Placement saved_;
};

}  // namespace hcomm
