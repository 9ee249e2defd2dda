#include "topo/policy.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <sstream>

#include "common/param.h"
#include "algo/names.h"
#include "common/types.h"
#include "topo/topology.h"

namespace hcomm {

size_t segmentBytes(const char* name, size_t dflt) { return static_cast<size_t>(envInt(name, static_cast<int64_t>(dflt))); }

namespace {

// HCOMM_ALGO's entries as (collective or "", name), every one checked against the table
// of algorithm names (algo/names.h) so that a typo raises instead of being ignored;
// `strict` false skips bad entries (communicator creation, whose failure on one rank
// would leave the others waiting for it: the first collective after it raises).
std::vector<std::pair<std::string, std::string>> algoEntries(bool strict) {
  std::string spec = envStr("HCOMM_ALGO");
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in(spec);
  std::string item;
  while (std::getline(in, item, ';')) {
    if (item.empty()) continue;
    auto colon = item.find(':');
    if (colon == std::string::npos) {
      if (item != "auto" && !anyCollectiveHas(item)) {
        if (!strict) continue;
        std::string all;
        for (const AlgorithmName& a : algorithmTable())
          if (all.find(" " + std::string(a.name) + ",") == std::string::npos) all += " " + std::string(a.name) + ",";
        throw Error("HCOMM_ALGO: unknown algorithm '" + item + "' (" + all.substr(1) + " auto; or per collective, "
                    "e.g. allreduce:ring;broadcast:binomial)");
      }
      out.push_back({"", item});
    } else {
      std::string coll = item.substr(0, colon), name = item.substr(colon + 1);
      try {
        canonicalAlgorithm(coll, name);
      } catch (const Error& e) {
        if (!strict) continue;
        throw Error(std::string("HCOMM_ALGO: ") + e.what());
      }
      out.push_back({coll, name});
    }
  }
  return out;
}

}  // namespace

std::string algoFromEnv(const std::string& collective, bool strict) {
  std::string any;
  for (const auto& e : algoEntries(strict)) {
    if (e.first.empty()) any = e.second;
    else if (e.first == collective) return canonicalAlgorithm(collective, e.second);
  }
  return any;
}

// HCOMM_NATIVE_BYTES="lo-hi" (K/M/G suffixes, either end may be empty): the message
// sizes at which the tuner hands allreduce to MPI when nothing is forced. Unset: never,
// because measured here (benchmarks/mpi_transport.py, 2 simulated hosts over MPI) hcomm's
// ring over the MPI transport was as fast as MPI's allreduce or faster from 64 KiB to
// 64 MiB; a site whose MPI offloads collectives to the fabric sets it.
bool nativeBySize(size_t bytes) {
  std::string spec = envStr("HCOMM_NATIVE_BYTES");
  if (spec.empty()) return false;
  auto parse = [&](std::string v, size_t dflt) -> size_t {
    if (v.empty()) return dflt;
    size_t unit = 1;
    char last = static_cast<char>(std::toupper(static_cast<unsigned char>(v.back())));
    if (last == 'K' || last == 'M' || last == 'G') {
      unit = last == 'K' ? (1u << 10) : last == 'M' ? (1u << 20) : (size_t(1) << 30);
      v.pop_back();
    }
    try {
      return static_cast<size_t>(std::stod(v) * static_cast<double>(unit));
    } catch (const std::exception&) {
      throw Error("HCOMM_NATIVE_BYTES: '" + spec + "' is not a range like 8M-1G or 64K-");
    }
  };
  auto dash = spec.find('-');
  if (dash == std::string::npos) throw Error("HCOMM_NATIVE_BYTES: '" + spec + "' is not a range like 8M-1G or 64K-");
  return bytes >= parse(spec.substr(0, dash), 0) && bytes < parse(spec.substr(dash + 1), SIZE_MAX);
}

bool orderedReduction(DataType dt, ReduceOp op) {
  bool floating = dt == DataType::F16 || dt == DataType::BF16 || dt == DataType::F32 || dt == DataType::F64;
  bool folds = op == ReduceOp::SUM || op == ReduceOp::PROD || op == ReduceOp::AVG || op == ReduceOp::PREMUL_SUM;
  if (!floating || !folds) return false;
  return dt == DataType::F16 || dt == DataType::BF16 || deterministicMode();
}

void refuseNativeIfDeterministic(const std::string& collective, DataType dt, ReduceOp op) {
  if (deterministicMode() && orderedReduction(dt, op))
    throw Error(collective + " with algorithm 'native': HCOMM_DETERMINISTIC=1 asks for the sum in rank order, which "
                "MPI's own " + collective + " cannot promise (it reduces in its own tree order); leave the choice "
                "to hcomm or unset HCOMM_DETERMINISTIC");
}

// "native" when asked for by name or, with no request, by HCOMM_ALGO.
bool wantsNative(const std::string& requested, const std::string& collective) {
  if (!requested.empty() && requested != "auto") return requested == "native";
  return algoFromEnv(collective, false) == "native";  // a bad entry raises where a plan reads it
}

// HCOMM_ALGO for a collective with a choice: its own entry ("broadcast:tree"), else a
// bare name when the collective has that algorithm (HCOMM_ALGO=ring leaves broadcast to
// the tuner) or it is "native".
std::string forcedByEnv(const std::string& collective, const std::vector<std::string>& names, bool strict) {
  for (const auto& e : algoEntries(strict))
    if (e.first == collective) return canonicalAlgorithm(collective, e.second);
  std::string any = algoFromEnv(collective, strict);
  bool known = any == "native" || any == "auto" || std::find(names.begin(), names.end(), any) != names.end();
  return known ? any : "";
}


// Ring for the allreduce ring; tree for the allreduce tree and for broadcast and
// allgather, whose trees and hierarchical phases are pipelined in tree segments.
size_t resolvedSegment(CollKind kind, const std::string& algo, size_t tuned) {
  if (kind == CollKind::ALLREDUCE && algo == "ring")
    return segmentBytes("HCOMM_RING_SEGMENT_BYTES", tuned ? tuned : (4u << 20));
  if (kind != CollKind::ALLREDUCE || algo == "tree")
    return segmentBytes("HCOMM_TREE_SEGMENT_BYTES", tuned ? tuned : (512u << 10));
  return tuned;
}


}  // namespace hcomm
