#include "algo/names.h"

#include "common/types.h"

namespace hcomm {

const std::vector<AlgorithmName>& algorithmTable() {
  static const std::vector<AlgorithmName> table = {
      {"allreduce", "ring", nullptr},
      {"allreduce", "tree", nullptr},
      {"allreduce", "halving_doubling", nullptr},
      {"allreduce", "hierarchical", nullptr},
      {"allreduce", "native", nullptr},
      {"broadcast", "binomial", nullptr},
      {"broadcast", "hierarchical", nullptr},
      {"broadcast", "native", nullptr},
      {"broadcast", "tree", "binomial"},
      {"allgather", "ring", nullptr},
      {"allgather", "hierarchical", nullptr},
      {"allgather", "bruck", nullptr},
      {"allgather", "native", nullptr},
      {"reduce_scatter", "ring", nullptr},
      {"reduce_scatter", "direct", nullptr},
      {"reduce_scatter", "hierarchical", nullptr},
      {"reduce_scatter", "native", nullptr},
      {"reduce", "binomial", nullptr},
      {"reduce", "reduce_scatter_gather", nullptr},
      {"reduce", "native", nullptr},
      {"reduce", "tree", "binomial"},
      {"gather", "linear", nullptr},
      {"gather", "binomial", nullptr},
      {"scatter", "linear", nullptr},
      {"scatter", "binomial", nullptr},
      {"alltoall", "pairwise", nullptr},
      {"alltoall", "bruck", nullptr},
      {"barrier", "dissemination", nullptr},
      {"barrier", "native", nullptr},
  };
  return table;
}

std::vector<std::string> algorithmsOf(const std::string& collective, bool withNative) {
  std::vector<std::string> out;
  for (const AlgorithmName& a : algorithmTable())
    if (collective == a.collective && !a.aliasOf && (withNative || std::string(a.name) != "native"))
      out.push_back(a.name);
  return out;
}

std::string canonicalAlgorithm(const std::string& collective, const std::string& name) {
  if (name.empty() || name == "auto") return "";
  bool known = false;
  for (const AlgorithmName& a : algorithmTable()) {
    known |= collective == a.collective;
    if (collective == a.collective && name == a.name) return a.aliasOf ? a.aliasOf : a.name;
  }
  if (!known) throw Error("unknown collective '" + collective + "'");
  std::string list;
  for (const std::string& n : algorithmsOf(collective)) list += n + ", ";
  throw Error("unknown " + collective + " algorithm '" + name + "' (" + list + "auto)");
}

bool anyCollectiveHas(const std::string& name) {
  for (const AlgorithmName& a : algorithmTable())
    if (name == a.name) return true;
  return false;
}

}  // namespace hcomm
