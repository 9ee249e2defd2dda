// The job's topology: every rank's probe, gathered at init, grouped into levels
// (host, rack) joined by link classes, each with a fitted alpha (s) and beta (s/byte).
//
// Link classes, from fastest to slowest:
//   shm   two ranks on one host (shared memory)
//   tcp   two hosts in one rack
//   rack  two racks
//
// A topology file (HCOMM_TOPO_FILE) describes hosts and racks so one machine can
// simulate a cluster; HCOMM_TOPO_DUMP_FILE writes the detected topology in the same
// format, so a dump can be loaded back:
//   {"hosts": [{"name": "node0", "rack": "r0", "ranks": [0, 1]},
//              {"name": "node1", "rack": "r1", "ranks": [2, 3]}],
//    "links": {"tcp": {"alpha": 3e-5, "beta": 8e-9}},     # optional, seconds, s/byte
//    "ranks": [{"rank": 0, "hostname": ..., "numa": 0, "cpus": "0-3", "nics": [...]}]}
// Ranks the file does not place keep their detected host.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "topo/probe.h"

namespace hcomm {

// A small JSON value: enough to read and write topology files.
struct Json {
  enum Type { NUL, BOOL, NUM, STR, ARR, OBJ } type = NUL;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<Json> arr;
  std::vector<std::pair<std::string, Json>> obj;

  static Json parse(const std::string& text);  // throws Error with the offset
  std::string dump() const;
  const Json* find(const std::string& key) const;  // null when absent or not an object
};

enum class LinkClass : int { SHM = 0, TCP = 1, RACK = 2 };
constexpr int kLinkClasses = 3;
const char* linkClassName(LinkClass c);

struct LinkCost {
  double alpha = 0;   // seconds per message
  double beta = 0;    // seconds per byte
  std::string source; // "default", "nic speed", "file", "measured"
};

// Alpha/beta used when nothing is measured or HCOMM_DETERMINISTIC=1 (and no file
// gives them): fixed, so the choice never depends on timing. The tcp beta comes from
// the NIC speed when /sys reports one (nicMbps > 0).
LinkCost defaultLinkCost(LinkClass c, int nicMbps);

struct Topology {
  std::vector<RankProbe> ranks;         // by world rank
  std::vector<int> hostOf, rackOf;      // world rank -> index into hosts / racks
  std::vector<std::string> hosts, racks;
  LinkCost links[kLinkClasses];
  std::string origin = "detected";      // or the topology file's path

  int size() const { return static_cast<int>(ranks.size()); }
  LinkClass between(int a, int b) const;
  // Fills hostOf/rackOf/hosts/racks from each probe's host and rack labels, and the
  // default link costs (file values, when given, are applied by the caller).
  void index();
  Json toJson() const;
  static Topology fromJson(const Json& j);  // a dump (with "ranks") back into a topology
};

// What a topology file says about one rank: its host label and rack ("" when the
// file does not place it), and the link costs it fixes.
struct TopoFilePlacement {
  std::string host, rack;
};
Json loadTopoFile(const std::string& path);  // throws Error naming the file
TopoFilePlacement placementFor(const Json& file, int rank);
// Applies the file's "links" section to `links` (source "file").
void applyFileLinks(const Json& file, LinkCost* links);

std::string probeToJson(const RankProbe& p);   // one rank's record, for the init gather
RankProbe probeFromJson(const std::string& text);

// What building the topology needs from the communicator being created (blocking
// calls every rank makes in the same order), so this layer stays below comm/.
struct InitChannel {
  int rank = 0, size = 1;
  // allgatherv of raw bytes: counts[r] bytes from rank r, concatenated in rank order.
  std::function<void(const void* in, void* out, const std::vector<size_t>& counts)> allgatherBytes;
  std::function<void(int peer, void* buf, size_t n)> send, recv;
  std::function<void(double* v, size_t n)> maxAll;  // element-wise max over ranks, in place
};

// At init: probes this rank, gathers every rank's probe, indexes hosts and racks,
// runs the micro-probe (unless HCOMM_PROBE=0 or HCOMM_DETERMINISTIC=1), applies the
// topology file's link costs, and writes HCOMM_TOPO_DUMP_FILE on rank 0.
// hostId: the identity bootstrap used (the file's host when it places this rank).
std::shared_ptr<Topology> buildTopology(const InitChannel& ch, const std::string& hostId, const Json* file,
                                        const std::string& filePath);

// Fits alpha and beta of every link class present with a few ping-pongs between one
// pair of ranks per class (every rank calls; the others only join the agreement).
void measureLinks(Topology& t, const InitChannel& ch);

// HCOMM_DETERMINISTIC=1: choices from fixed constants only, never from timing.
bool deterministicMode();

}  // namespace hcomm
