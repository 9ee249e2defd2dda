// The choice policy a communicator applies on top of the tuner's model: what the user
// forces through HCOMM_ALGO / HCOMM_NATIVE_BYTES and the segment sizes each algorithm
// uses. Pure functions of the environment and their arguments (no communicator state),
// so they are testable and shared by every collective.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "common/fingerprint.h"

namespace hcomm {

// HCOMM_ALGO: "ring" (every collective that has it) or "allreduce:ring;broadcast:tree";
// the entry for `collective`, else the bare name, else "".
std::string algoFromEnv(const std::string& collective);
// HCOMM_ALGO for a collective with a choice among `names`: its own entry, else a bare
// name when the collective has that algorithm (or it is "native"), else "".
std::string forcedByEnv(const std::string& collective, const std::vector<std::string>& names);
// "native" when asked for by name or, with no request, by HCOMM_ALGO.
bool wantsNative(const std::string& requested, const std::string& collective);
// HCOMM_NATIVE_BYTES: whether a message of `bytes` goes to MPI's own allreduce.
bool nativeBySize(size_t bytes);
// An integer setting in bytes (HCOMM_*_SEGMENT_BYTES), `dflt` when unset.
size_t segmentBytes(const char* name, size_t dflt);
// The segment a call uses: the tuner's, unless HCOMM_{RING,TREE}_SEGMENT_BYTES override it.
size_t resolvedSegment(CollKind kind, const std::string& algo, size_t tuned);

}  // namespace hcomm
