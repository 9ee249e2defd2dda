// GPU domains, the topology level below the host (topology.h): which ranks share an
// NVLink domain, from the probe (each rank's GPU and its NVLink peers) or from a
// topology file's per-host "gpus" list, and the same list written back into dumps.
// Kept apart from topology.cc so the host/rack code and this level change separately.
#include <map>
#include <string>

#include "common/types.h"
#include "topo/topology.h"

namespace hcomm {

namespace {

Json number(double v) {
  Json j;
  j.type = Json::NUM;
  j.num = v;
  return j;
}

double numberOr(const Json& j, const std::string& key, double dflt) {
  const Json* v = j.find(key);
  return v && v->type == Json::NUM ? v->num : dflt;
}

bool listsRank(const Json* ranks, int rank) {
  if (!ranks || ranks->type != Json::ARR) return false;
  for (const Json& r : ranks->arr)
    if (r.type == Json::NUM && static_cast<int>(r.num) == rank) return true;
  return false;
}

// The NVLink label of a rank's GPU on its host (see RankProbe::nvlinkDomain).
int domainLabel(const RankProbe& p) {
  if (p.gpu < 0 || p.nvlinkDomain >= 0) return p.nvlinkDomain;
  std::vector<int> labels = nvlinkDomains(p.gpus);
  for (size_t i = 0; i < p.gpus.size(); ++i)
    if (p.gpus[i].index == p.gpu) return labels[i];
  return p.gpu;  // a GPU the probe did not list (file-described): a domain of its own
}

}  // namespace

void Topology::indexGpuDomains() {
  std::map<std::pair<int, int>, int> index;  // (host, label) -> domain
  domains.clear();
  domainOf.assign(ranks.size(), -1);
  for (size_t r = 0; r < ranks.size(); ++r) {
    if (ranks[r].gpu < 0) continue;
    int label = domainLabel(ranks[r]);
    auto d = index.emplace(std::make_pair(hostOf[r], label), static_cast<int>(domains.size()));
    if (d.second) domains.push_back(hosts[hostOf[r]] + "/gpu-domain" + std::to_string(label));
    domainOf[r] = d.first->second;
  }
}

Json Topology::gpusOfHost(int h) const {
  std::map<int, Json> byGpu;  // in the file's schema: one entry per GPU, by index
  for (int r = 0; r < size(); ++r) {
    if (hostOf[r] != h || ranks[r].gpu < 0) continue;
    auto it = byGpu.find(ranks[r].gpu);
    if (it == byGpu.end()) {
      Json x, members;
      x.type = Json::OBJ;
      members.type = Json::ARR;
      x.obj = {{"index", number(ranks[r].gpu)}, {"domain", number(domainLabel(ranks[r]))}, {"ranks", members}};
      it = byGpu.emplace(ranks[r].gpu, x).first;
    }
    it->second.obj[2].second.arr.push_back(number(r));
  }
  Json out;
  out.type = Json::ARR;
  for (auto& g : byGpu) out.arr.push_back(g.second);
  return out;
}

void gpuPlacementFor(const Json& host, int rank, TopoFilePlacement& p) {
  const Json* gpus = host.find("gpus");
  if (!gpus) return;
  std::string where = "topology file: host '" + p.host + "': \"gpus\"";
  if (gpus->type != Json::ARR) throw Error(where + " must be a list");
  for (size_t i = 0; i < gpus->arr.size(); ++i) {
    const Json& g = gpus->arr[i];
    std::string entry = where + "[" + std::to_string(i) + "]";
    const Json* ranks = g.find("ranks");
    if (!ranks || ranks->type != Json::ARR) throw Error(entry + " has no \"ranks\" list");
    for (const Json& r : ranks->arr)
      if (r.type != Json::NUM || !listsRank(host.find("ranks"), static_cast<int>(r.num)))
        throw Error(entry + " lists rank " + (r.type == Json::NUM ? std::to_string(static_cast<int>(r.num)) : "?") +
                    ", which the host's \"ranks\" does not");
    if (!listsRank(ranks, rank)) continue;
    if (p.gpu >= 0) throw Error(where + ": rank " + std::to_string(rank) + " is on two GPUs");
    p.gpu = static_cast<int>(numberOr(g, "index", static_cast<double>(i)));
    p.domain = static_cast<int>(numberOr(g, "domain", p.gpu));
    if (p.gpu < 0 || p.domain < 0) throw Error(entry + ": index and domain must be >= 0");
  }
}

}  // namespace hcomm
