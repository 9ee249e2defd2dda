// The one table of algorithm names: which algorithms each collective has. Everything
// that names an algorithm reads it: the tuner's candidate lists (topo/tuner.cc), the
// collectives' dispatch (comm/collectives.cc), HCOMM_ALGO and per-call requests
// (topo/policy.cc), Python (hcomm._C.algorithms(), read by hcomm/comm.py), and
// docs/algorithms.md (tests/test_tuner.py checks that it names every entry).
// Adding an algorithm: one row here, its file in csrc/algo/, its cost in the tuner.
#pragma once
#include <string>
#include <vector>

namespace hcomm {

struct AlgorithmName {
  const char* collective;  // "allreduce", "reduce_scatter", ... (allgatherv is "allgather")
  const char* name;        // "ring", ...
  const char* aliasOf;     // another name of the same collective it stands for, or nullptr
};

// Every row, in the order candidates are listed (the first is the default during init).
const std::vector<AlgorithmName>& algorithmTable();
// The names of `collective`'s algorithms (aliases left out); "native" when it has one.
std::vector<std::string> algorithmsOf(const std::string& collective, bool withNative = true);
// "" for "" / "auto", the canonical name of an alias, the name itself when `collective`
// has it; otherwise throws Error: "unknown <collective> algorithm 'x' (a, b, ..., auto)".
std::string canonicalAlgorithm(const std::string& collective, const std::string& name);
// Whether any collective has an algorithm (or alias) called `name`.
bool anyCollectiveHas(const std::string& name);

}  // namespace hcomm
