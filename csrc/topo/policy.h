// The choice policy a communicator applies on top of the tuner's model: what the user
// forces through HCOMM_ALGO / HCOMM_NATIVE_BYTES and the segment sizes each algorithm
// uses. Pure functions of the environment and their arguments (no communicator state),
// so they are testable and shared by every collective.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "common/fingerprint.h"
#include "common/types.h"

namespace hcomm {

// HCOMM_ALGO: "ring" (every collective that has it) or "allreduce:ring;broadcast:tree";
// the entry for `collective` (canonical: an alias gives its target), else the bare name,
// else "". Every entry is checked against the table of names (algo/names.h): an unknown
// algorithm or collective raises Error with the list.
// strict false: bad entries are skipped (during communicator creation).
std::string algoFromEnv(const std::string& collective, bool strict = true);
// HCOMM_ALGO for a collective with a choice among `names`: its own entry, else a bare
// name when the collective has that algorithm (or it is "native"), else "".
std::string forcedByEnv(const std::string& collective, const std::vector<std::string>& names, bool strict = true);
// "native" when asked for by name or, with no request, by HCOMM_ALGO.
bool wantsNative(const std::string& requested, const std::string& collective);
// HCOMM_NATIVE_BYTES: whether a message of `bytes` goes to MPI's own allreduce.
bool nativeBySize(size_t bytes);
// Whether a reduction must be the rank-order fold in the accumulation type, rounded once
// (Links::ordered, algo/ordered.cc): float16/bfloat16 SUM/PROD/AVG/PREMUL_SUM always
// (float32 accumulation), every floating SUM/PROD/AVG/PREMUL_SUM under HCOMM_DETERMINISTIC=1.
// MIN, MAX and integer reductions are exact in any order.
bool orderedReduction(DataType dt, ReduceOp op);
// Throws when HCOMM_DETERMINISTIC=1 and a floating SUM/PROD reduction is forced to a native
// engine, which cannot promise the rank-order sum (MPI reduces in its own tree order).
void refuseNativeIfDeterministic(const std::string& collective, DataType dt, ReduceOp op);
// An integer setting in bytes (HCOMM_*_SEGMENT_BYTES), `dflt` when unset.
size_t segmentBytes(const char* name, size_t dflt);
// The segment a call uses: the tuner's, unless HCOMM_{RING,TREE}_SEGMENT_BYTES override it.
size_t resolvedSegment(CollKind kind, const std::string& algo, size_t tuned);

}  // namespace hcomm
