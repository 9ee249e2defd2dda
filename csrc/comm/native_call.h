// A collective handed whole to MPI (algo/native_mpi.h): the MPI communicator and the
// wait policy a native body captures by value.
#pragma once
#include <chrono>
#include <memory>
#include <string>

#include "algo/links.h"
#include "algo/native_mpi.h"
#include "common/types.h"

namespace hcomm {

class MpiComm;

inline void requireMpi(const std::shared_ptr<MpiComm>& c, const std::string& collective) {
  if (!c)
    throw Error(collective + " with algorithm 'native' needs MPI: launch with mpirun (every rank in one MPI job) "
                "and leave HCOMM_MPI unset or 1");
}

// What a native body needs, captured by value; empty (false) when the call is not native.
struct NativeCall {
  std::shared_ptr<MpiComm> comm;
  double timeoutSec = 0;
  WaitPolicy policy;
  std::string what;
  explicit operator bool() const { return comm != nullptr; }
  NativeWait wait() const {  // the deadline runs from when the call starts, as Links' does
    auto d = std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeoutSec));
    return NativeWait{std::chrono::steady_clock::now() + d, policy, what};
  }
};

// `what()` names the call in errors; only evaluated for a native call.
template <class Describe>
NativeCall nativeCall(bool native, const std::shared_ptr<MpiComm>& c, const std::string& collective, double timeout,
                      const WaitPolicy& policy, const Describe& what) {
  if (!native) return NativeCall();
  requireMpi(c, collective);
  return NativeCall{c, timeout, policy, what()};
}

struct NativeCosts;
// MPI's own collectives timed at init (comm/planning.cc, algo/native_mpi_probe.cc): the
// native candidate's prices, agreed by every rank. Collective over `mpi`; null without
// MPI, with one rank, under HCOMM_DETERMINISTIC=1 or HCOMM_NATIVE_PROBE=0.
std::shared_ptr<const NativeCosts> measureNativeCosts(const std::shared_ptr<MpiComm>& mpi, int size,
                                                      double timeoutSec, const WaitPolicy& policy);

}  // namespace hcomm
