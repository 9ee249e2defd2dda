// One step of the tuner's model on the topology: which link class an edge uses, how
// many transfers share a host's NIC, and the small pieces every collective's model
// shares (segments, choosing among candidates).
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "algo/names.h"
#include "common/param.h"
#include "common/types.h"
#include "topo/tuner_model.h"

namespace hcomm {
namespace tuning {

LinkClass classOf(const CommShape& s, int a, int b) {
  if (!s.domain.empty() && s.domain[a] >= 0 && s.domain[a] == s.domain[b]) return LinkClass::NVLINK;
  if (s.host[a] == s.host[b]) return LinkClass::SHM;
  return s.rack[a] == s.rack[b] ? LinkClass::TCP : LinkClass::RACK;
}

// What a step costs on top of alpha when every CPU of the machine is shared by two or
// more ranks (CommShape::lateWake): each dependent wait of a reduction, allgather or
// exchange ends in a sleep that wakes late, whatever its transports. Not charged to a
// broadcast tree (binomialSeconds does not use step()): there a rank waits once, idle,
// and the namespace cluster measured no such delay (binomial 30 us for 8 B on 2 x 2).
static double wakePenalty(const Net& net) { return net.size() >= 2 ? net.s.lateWake : 0; }

// The socket path's CPU per byte of a step: each rank's tcp sends and receives in it,
// summed (one rank's sends and receives share its CPU), at the rank's CPU share; the
// busiest rank sets the pace. 0 when the costs are unknown (described topologies).
static double socketCpuPerByte(const Net& net, const std::vector<std::pair<int, int>>& edges) {
  std::map<int, double> cpu;  // member rank -> seconds per byte of its socket calls
  for (auto e : edges) {
    int a = net.members[e.first], b = net.members[e.second];
    LinkClass k = classOf(net.s, a, b);
    cpu[a] += socketSendCpu(net.s, k);
    cpu[b] += socketRecvCpu(net.s, k);
  }
  double worst = 0;
  for (auto& c : cpu) worst = std::max(worst, c.second);
  return worst;
}

// The machines' own network path (LinkCost::machineBeta, topo/machine_net.h): each
// crossing transfer of the step adds machineBeta per byte to every machine it touches
// (once when both ends share one), `share` copies of the pattern at once; the busiest
// machine sets the pace. 0 without probe records (described topologies say no machine)
// or without the measurement.
static double machinePerByte(const Net& net, const std::vector<std::pair<int, int>>& edges) {
  const CommShape& s = net.s;
  std::map<int, double> load;  // machine -> seconds per byte of its transfers in this step
  for (auto e : edges) {
    int a = net.members[e.first], b = net.members[e.second];
    if (s.host[a] == s.host[b] || a >= static_cast<int>(s.machine.size()) || b >= static_cast<int>(s.machine.size()))
      continue;
    int ma = s.machine[a], mb = s.machine[b];
    if (ma < 0 || mb < 0) continue;
    double c = s.links[static_cast<int>(classOf(s, a, b))].machineBeta * net.share;
    load[ma] += c;
    if (mb != ma) load[mb] += c;
  }
  double worst = 0;
  for (auto& m : load) worst = std::max(worst, m.second);
  return worst;
}

StepCost step(const Net& net, const std::vector<std::pair<int, int>>& edges) {
  std::map<int, int> out, in;  // crossing transfers per host
  for (auto e : edges) {
    int a = net.members[e.first], b = net.members[e.second];
    if (net.s.host[a] != net.s.host[b]) {
      ++out[net.s.host[a]];
      ++in[net.s.host[b]];
    }
  }
  StepCost c;
  for (auto e : edges) {
    int a = net.members[e.first], b = net.members[e.second];
    LinkClass k = classOf(net.s, a, b);
    LinkCost l = wireLink(net.s, k);
    bool inHost = k == LinkClass::SHM || k == LinkClass::NVLINK;  // no NIC shared
    int load = inHost ? 1 : std::max(out[net.s.host[a]], in[net.s.host[b]]) * net.share;
    c.alpha = std::max(c.alpha, l.alpha);
    c.perByte = std::max(c.perByte, l.beta * load);
    c.cpuCopies |= k == LinkClass::SHM;
  }
  // Where the ranks' CPUs cannot feed the NICs, the socket calls set the pace; then the
  // CPU moves the bytes and a reduction cannot overlap them either.
  double cpu = socketCpuPerByte(net, edges);
  if (cpu > c.perByte) {
    c.perByte = cpu;
    c.cpuCopies = true;
  }
  // The machine's network path, shared by every transfer touching it (namespace hosts
  // on one machine), may be slower still. Its kernel work runs in softirq beside the
  // ranks, so a reduction still overlaps it as it overlaps a NIC; and on separate
  // machines, where the probe finds it about equal to the NIC term, a hair either way
  // must not switch the overlap off.
  c.perByte = std::max(c.perByte, machinePerByte(net, edges));
  c.wake = wakePenalty(net);
  c.alpha += c.wake;
  return c;
}

LinkCost wireLink(const CommShape& s, LinkClass k) {
  LinkCost l = s.links[static_cast<int>(k)];
  if (k == LinkClass::SHM && s.cpuShare > 0) l.beta /= s.cpuShare;
  return l;
}

double socketSendCpu(const CommShape& s, LinkClass k) {
  const LinkCost& l = s.links[static_cast<int>(k)];
  return k == LinkClass::TCP || k == LinkClass::RACK ? l.sendCpu / (s.cpuShare > 0 ? s.cpuShare : 1.0) : 0.0;
}

double socketRecvCpu(const CommShape& s, LinkClass k) {
  const LinkCost& l = s.links[static_cast<int>(k)];
  return k == LinkClass::TCP || k == LinkClass::RACK ? l.recvCpu / (s.cpuShare > 0 ? s.cpuShare : 1.0) : 0.0;
}

LinkCost pricedLink(const CommShape& s, LinkClass k) {
  LinkCost l = wireLink(s, k);
  // One transfer alone: the sender's and the receiver's socket calls run side by side
  // on their own CPU shares, the slower of them or the wire sets its pace.
  l.beta = std::max({l.beta, socketSendCpu(s, k), socketRecvCpu(s, k)});
  return l;
}

LinkCost linkOf(const CommShape& s, int a, int b) { return pricedLink(s, classOf(s, a, b)); }

double localBeta(const CommShape& s) { return wireLink(s, LinkClass::SHM).beta; }

double gammaOf(const CommShape& s) { return gammaSecondsPerByte() / (s.cpuShare > 0 ? s.cpuShare : 1.0); }

const std::vector<size_t>& ringSegments() {
  static const std::vector<size_t> v = {256u << 10, 1u << 20, 4u << 20};
  return v;
}
const std::vector<size_t>& treeSegments() {
  static const std::vector<size_t> v = {16u << 10, 64u << 10, 256u << 10, 512u << 10, 1u << 20, 4u << 20};
  return v;
}

double overlap(double b, double g, double inFlight) { return std::max(b, g) + std::min(b, g) / std::max(1.0, inFlight); }

std::vector<int> allRanks(const CommShape& s) {
  std::vector<int> all(s.n);
  for (int r = 0; r < s.n; ++r) all[r] = r;
  return all;
}

double foldGamma(const CommShape& s, Fold f) { return gammaOf(s) * (f == Fold::ORDERED_WIDE ? 2.0 : 1.0); }

size_t splitAt(const std::vector<std::vector<int>>& levels, const std::vector<int>& members, size_t depth,
               std::vector<std::vector<int>>* groups) {
  for (; depth < levels.size(); ++depth) {
    groups->clear();
    std::map<int, size_t> index;
    for (int r : members) {
      auto it = index.emplace(levels[depth][r], groups->size());
      if (it.second) groups->emplace_back();
      (*groups)[it.first->second].push_back(r);
    }
    if (groups->size() > 1 && groups->size() < members.size()) return depth;
  }
  return depth;
}


Candidate bestSegment(const std::string& name, const std::function<double(double)>& seconds) {
  Candidate best{name, std::numeric_limits<double>::infinity(), treeSegments().back()};
  bool matters = false;  // no segment changes the time: the algorithm uses none
  for (size_t seg : treeSegments()) {
    double t = seconds(static_cast<double>(seg));
    matters |= best.seconds != std::numeric_limits<double>::infinity() && t != best.seconds;
    if (t < best.seconds) {
      best.seconds = t;
      best.segBytes = seg;
    }
  }
  if (!matters) best.segBytes = 0;
  return best;
}

void checkForced(const std::string& collective, const std::vector<std::string>& names, const std::string& forced) {
  if (forced.empty() || forced == "auto" || std::find(names.begin(), names.end(), forced) != names.end()) return;
  std::string list;
  for (const auto& n : names) list += n + ", ";
  throw Error("unknown " + collective + " algorithm '" + forced + "' (" + list + "auto)");
}

void choose(Decision& d, const std::string& forced, const std::string& why) {
  d.chosen = 0;
  for (size_t i = 1; i < d.candidates.size(); ++i)
    if (d.candidates[i].applicable && d.candidates[i].seconds < d.candidates[d.chosen].seconds)
      d.chosen = static_cast<int>(i);
  d.why = "model";
  if (forced.empty() || forced == "auto") return;
  for (size_t i = 0; i < d.candidates.size(); ++i)
    if (d.candidates[i].algo == forced) d.chosen = static_cast<int>(i);
  d.why = why;
}

// One level (a single host with one GPU domain, or one rank per host): hierarchical is
// the flat algorithm. Applies across hosts sharing ranks, or on hosts split into GPU
// domains of which some holds several ranks.
bool hierarchyApplies(const CommShape& s) {
  // Some level (GPU domain, host, rack) splits the ranks into several groups, one of
  // them holding two ranks or more: one rank per host in two racks counts too.
  for (const std::vector<int>& level : s.levels()) {
    size_t groups = std::set<int>(level.begin(), level.end()).size();
    if (groups > 1 && static_cast<int>(groups) < s.n) return true;
  }
  return false;
}

}  // namespace tuning
}  // namespace hcomm
