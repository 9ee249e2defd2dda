// HCCL (Huawei Ascend NPUs), loaded at run time: the library loader and a communicator
// over HCCL's own collectives and stream-ordered send/recv.
//
// libascendcl.so and libhccl.so are opened with dlopen from HCOMM_ASCENDCL_LIB /
// HCOMM_HCCL_LIB, then $ASCEND_HOME_PATH/lib64 and $ASCEND_TOOLKIT_HOME/lib64, then
// /usr/local/Ascend/ascend-toolkit/latest/lib64, then the system search path. Where
// they are absent every entry point raises one Error that names the library, each
// path tried and why it failed, so "no NPU stack here" is told apart from a broken one.
//
// The shape follows the NCCL path (transport/nccl.h): rank 0 makes the root info
// (HcclGetRootInfo, 4108 bytes) and hands it out of band; every rank then calls
// HcclCommInitRootInfo. Work is queued on an aclrt stream (the caller's, or the
// communicator's own) and synchronize() waits for it. AVG and PREMUL_SUM are not HCCL
// ops: HcclComm refuses them, and the native engine (algo/native_hccl.h) builds them from
// SUM and the NPU Memory's scale / divide. The point-to-point Transport for hcomm's own
// algorithms is transport/hccl_transport.h.
#pragma once
#include <string>
#include <vector>

#include "common/types.h"
#include "transport/hccl_api.h"

namespace hcomm {

struct HcclLibrary {
  std::string hcclPath, aclPath;
  hccl::Api api;
};

// Opens both libraries once per process; throws Error naming what is missing.
const HcclLibrary& loadHccl();
// "" when HCCL can be loaded, else the reason (the loader's message).
std::string hcclUnavailableReason();

class HcclComm {
 public:
  static std::string newRootInfo();  // HcclGetRootInfo, on rank 0
  HcclComm(int rank, int size, const std::string& rootInfo, int device);
  ~HcclComm();
  HcclComm(const HcclComm&) = delete;
  HcclComm& operator=(const HcclComm&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // On `stream` (an aclrtStream; null: the communicator's own stream).
  void allreduce(const void* in, void* out, size_t count, DataType dt, ReduceOp op, void* stream);
  void reduce(const void* in, void* out, size_t count, DataType dt, ReduceOp op, int root, void* stream);
  void broadcast(void* buf, size_t count, DataType dt, int root, void* stream);
  void allgather(const void* in, void* out, size_t sendCount, DataType dt, void* stream);
  void reduceScatter(const void* in, void* out, size_t recvCount, DataType dt, ReduceOp op, void* stream);
  void send(const void* buf, size_t count, DataType dt, int peer, void* stream);
  void recv(void* buf, size_t count, DataType dt, int peer, void* stream);
  void synchronize(void* stream);
  // Waits for `stream` with a deadline (an event polled), so a peer that never joins a
  // collective raises TimeoutError instead of hanging; then reports the stream's error.
  void synchronize(void* stream, double timeoutSec);

 private:
  void check(hccl::Result r, const char* what) const;
  void checkAcl(hccl::AclError e, const char* what) const;
  void checkPeer(int peer, const char* what) const;
  hccl::AclStream pick(void* stream) const { return stream ? stream : stream_; }

  const HcclLibrary* lib_;
  int rank_, size_, device_;
  hccl::Comm comm_ = nullptr;
  hccl::AclStream stream_ = nullptr;
};

}  // namespace hcomm
