// The job's topology: every rank's probe, gathered at init, grouped into levels
// (host, rack) joined by link classes, each with a fitted alpha (s) and beta (s/byte).
//
// Link classes, from fastest to slowest:
//   nvlink two ranks in one GPU domain: on GPUs joined by NVLink / one NVSwitch fabric,
//          or on the same GPU (never measured by the init probe, which moves host memory)
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
//
// GPU domains: a host entry may list its GPUs, each with the ranks that use it and its
// NVLink domain label on that host (GPUs with the same label are joined by NVLink or one
// NVSwitch fabric; without "domain" a GPU is a domain of its own):
//   {"name": "node0", "ranks": [0, 1, 2, 3],
//    "gpus": [{"ranks": [0], "domain": 0}, {"ranks": [1], "domain": 0},
//             {"ranks": [2], "domain": 1}, {"ranks": [3], "domain": 1}]}
// Ranks the list leaves out have no GPU: they form no domain of their own.
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

// NVLINK comes last so the older classes keep their numbers (dumps, bindings).
enum class LinkClass : int { SHM = 0, TCP = 1, RACK = 2, NVLINK = 3 };
constexpr int kLinkClasses = 4;
const char* linkClassName(LinkClass c);

struct LinkCost {
  double alpha = 0;   // seconds per message
  double beta = 0;    // seconds per byte
  std::string source; // "default", "nic speed", "file", "measured"
  // tcp and rack: the kernel's socket path's own CPU time per byte on one whole core, on
  // the sending rank (send calls) and on the receiving one (receive calls), measured at
  // init where the wire is not the bound (topo/socket_cpu.h). 0: not known, not priced.
  double sendCpu = 0, recvCpu = 0;
  // tcp and rack: seconds per byte that each crossing transfer running at once adds to
  // a machine it touches (several namespace "hosts" on one machine share its CPUs'
  // network path), measured at init with every host sending (topo/machine_net.h).
  // 0: not known, not priced.
  double machineBeta = 0;
};

// Alpha/beta used when nothing is measured or HCOMM_DETERMINISTIC=1 (and no file
// gives them): fixed, so the choice never depends on timing. The tcp beta comes from
// the NIC speed when /sys reports one (nicMbps > 0).
LinkCost defaultLinkCost(LinkClass c, int nicMbps);

struct Topology {
  std::vector<RankProbe> ranks;         // by world rank
  std::vector<int> hostOf, rackOf;      // world rank -> index into hosts / racks
  std::vector<std::string> hosts, racks;
  // world rank -> index into domains, or -1 for a rank without a GPU. A domain never
  // spans two hosts; its name is "<host>/gpu-domain<label>".
  std::vector<int> domainOf;
  std::vector<std::string> domains;
  LinkCost links[kLinkClasses];
  std::string origin = "detected";      // or the topology file's path

  int size() const { return static_cast<int>(ranks.size()); }
  LinkClass between(int a, int b) const;
  // Fills hostOf/rackOf/hosts/racks from each probe's host and rack labels, and the
  // default link costs (file values, when given, are applied by the caller).
  void index();
  // The domainOf/domains part of index(): each rank's GPU and its NVLink label (the
  // probe's or the file's; else derived from the probe's NVLink peers).
  void indexGpuDomains();
  Json toJson() const;
  Json gpusOfHost(int h) const;  // host h's "gpus" list in the topology file's schema
  static Topology fromJson(const Json& j);  // a dump (with "ranks") back into a topology
};

// What a topology file says about one rank: its host label and rack ("" when the
// file does not place it), and the link costs it fixes.
struct TopoFilePlacement {
  std::string host, rack;
  int gpu = -1, domain = -1;  // from the host's "gpus" list; -1 when it names no GPU
};
Json loadTopoFile(const std::string& path);  // throws Error naming the file
// Throws Error when the host's "gpus" list is malformed (a rank on two GPUs, a rank
// the host does not list, a negative domain).
TopoFilePlacement placementFor(const Json& file, int rank);
// The GPU part of placementFor (gpu_domain.cc): the "gpus" entry of `host` (the file's
// host entry holding `rank`) that lists it, into p.gpu and p.domain.
void gpuPlacementFor(const Json& host, int rank, TopoFilePlacement& p);
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
  // n bytes to `to` while n bytes arrive from `from`, both in flight at once.
  std::function<void(int to, const void* out, int from, void* in, size_t n)> exchange;
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
