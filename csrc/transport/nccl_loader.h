// NCCL, loaded at run time: the library, its version, and unique ids.
//
// libnccl.so.2 is opened with dlopen from, in order: HCOMM_NCCL_LIB, the paths the
// caller passes (Python passes the nvidia-nccl wheel's lib/ folder, found through
// importlib), then the system search path. Nothing here needs nccl.h to build
// (transport/nccl_api.h declares what is used). The point-to-point transport over it is
// transport/nccl.h; NCCL's own collectives are algo/native_nccl.h.
#pragma once
#include <string>
#include <vector>

#include "common/types.h"
#include "transport/nccl_api.h"

namespace hcomm {

struct NcclLibrary {
  std::string path;  // the file that was opened
  int version = 0;   // ncclGetVersion: 22703 for 2.27.3
  nccl::Api api;
};

// Opens libnccl once per process (the first success is kept; a failure is retried on
// the next call). Throws Error listing every path tried and why it failed.
const NcclLibrary& loadNccl(const std::vector<std::string>& candidates = {});
std::string ncclVersionString(int version);  // "2.27.3"
// A fresh ncclUniqueId (128 bytes), made by rank 0 and handed to every rank.
std::string ncclNewUniqueId(const std::vector<std::string>& candidates = {});
// NCCL's datatype for hcomm's (bool travels as uint8).
nccl::DataType ncclType(DataType dt);

}  // namespace hcomm
