#include "topo/topology.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "common/param.h"
#include "common/types.h"
#include "topo/machine_net.h"
#include "topo/racks.h"
#include "topo/socket_cpu.h"

namespace hcomm {

// ---------------------------------------------------------------- JSON

namespace {

struct Parser {
  const std::string& s;
  size_t i = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error("JSON: " + what + " at offset " + std::to_string(i));
  }
  void ws() {
    while (i < s.size() && isspace(static_cast<unsigned char>(s[i]))) ++i;
  }
  bool eat(char c) {
    ws();
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail(std::string("expected '") + c + "'");
  }
  std::string string() {
    expect('"');
    std::string out;
    while (i < s.size() && s[i] != '"') {
      char c = s[i++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i >= s.size()) fail("unterminated escape");
      char e = s[i++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          if (i + 4 > s.size()) fail("short \\u escape");
          unsigned code = std::stoul(s.substr(i, 4), nullptr, 16);
          i += 4;
          if (code < 0x80) out += static_cast<char>(code);
          else if (code < 0x800) out += {static_cast<char>(0xC0 | (code >> 6)), static_cast<char>(0x80 | (code & 0x3F))};
          else out += {static_cast<char>(0xE0 | (code >> 12)), static_cast<char>(0x80 | ((code >> 6) & 0x3F)),
                       static_cast<char>(0x80 | (code & 0x3F))};
          break;
        }
        default: out += e;
      }
    }
    if (i >= s.size()) fail("unterminated string");
    ++i;
    return out;
  }
  Json value() {
    ws();
    if (i >= s.size()) fail("unexpected end");
    Json j;
    char c = s[i];
    if (c == '{') {
      ++i;
      j.type = Json::OBJ;
      if (eat('}')) return j;
      do {
        ws();
        std::string key = string();
        expect(':');
        j.obj.emplace_back(key, value());
      } while (eat(','));
      expect('}');
    } else if (c == '[') {
      ++i;
      j.type = Json::ARR;
      if (eat(']')) return j;
      do j.arr.push_back(value());
      while (eat(','));
      expect(']');
    } else if (c == '"') {
      j.type = Json::STR;
      j.str = string();
    } else if (s.compare(i, 4, "true") == 0 || s.compare(i, 5, "false") == 0) {
      j.type = Json::BOOL;
      j.b = s[i] == 't';
      i += j.b ? 4 : 5;
    } else if (s.compare(i, 4, "null") == 0) {
      i += 4;
    } else {
      const char* begin = s.c_str() + i;
      char* end = nullptr;
      j.type = Json::NUM;
      j.num = std::strtod(begin, &end);
      if (end == begin) fail("unexpected character '" + std::string(1, c) + "'");
      i += static_cast<size_t>(end - begin);
    }
    return j;
  }
};

void dumpString(std::ostringstream& o, const std::string& s) {
  o << '"';
  for (char c : s) {
    if (c == '"' || c == '\\') o << '\\' << c;
    else if (c == '\n') o << "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o << buf;
    } else o << c;
  }
  o << '"';
}

void dumpValue(std::ostringstream& o, const Json& j) {
  switch (j.type) {
    case Json::NUL: o << "null"; break;
    case Json::BOOL: o << (j.b ? "true" : "false"); break;
    case Json::NUM: {
      char buf[32];
      if (std::floor(j.num) == j.num && std::fabs(j.num) < 1e15) std::snprintf(buf, sizeof buf, "%.0f", j.num);
      else std::snprintf(buf, sizeof buf, "%.6g", j.num);
      o << buf;
      break;
    }
    case Json::STR: dumpString(o, j.str); break;
    case Json::ARR:
      o << '[';
      for (size_t k = 0; k < j.arr.size(); ++k) {
        if (k) o << ", ";
        dumpValue(o, j.arr[k]);
      }
      o << ']';
      break;
    case Json::OBJ:
      o << '{';
      for (size_t k = 0; k < j.obj.size(); ++k) {
        if (k) o << ", ";
        dumpString(o, j.obj[k].first);
        o << ": ";
        dumpValue(o, j.obj[k].second);
      }
      o << '}';
  }
}

Json num(double v) {
  Json j;
  j.type = Json::NUM;
  j.num = v;
  return j;
}
Json str(const std::string& v) {
  Json j;
  j.type = Json::STR;
  j.str = v;
  return j;
}
Json arr() {
  Json j;
  j.type = Json::ARR;
  return j;
}
Json obj() {
  Json j;
  j.type = Json::OBJ;
  return j;
}

std::string getStr(const Json& j, const std::string& key, const std::string& dflt = "") {
  const Json* v = j.find(key);
  return v && v->type == Json::STR ? v->str : dflt;
}
double getNum(const Json& j, const std::string& key, double dflt) {
  const Json* v = j.find(key);
  return v && v->type == Json::NUM ? v->num : dflt;
}

}  // namespace

Json Json::parse(const std::string& text) {
  Parser p{text};
  Json j = p.value();
  p.ws();
  if (p.i != text.size()) p.fail("trailing characters");
  return j;
}

std::string Json::dump() const {
  std::ostringstream o;
  dumpValue(o, *this);
  return o.str();
}

const Json* Json::find(const std::string& key) const {
  if (type != OBJ) return nullptr;
  for (const auto& kv : obj)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

// ---------------------------------------------------------------- probe records

std::string probeToJson(const RankProbe& p) {
  Json j = obj();
  j.obj = {{"rank", num(p.rank)}, {"hostname", str(p.hostname)}, {"host_id", str(p.hostId)},
           {"host", str(p.host)}, {"rack", str(p.rack)}, {"numa", num(p.numaNode)},
           {"cpus", str(formatCpuList(p.cpus))}};
  Json nics = arr();
  for (const NicInfo& n : p.nics) {
    Json x = obj();
    x.obj = {{"name", str(n.name)}, {"mac", str(n.mac)}, {"ipv4", str(n.ipv4)}, {"speed_mbps", num(n.speedMbps)}};
    nics.arr.push_back(x);
  }
  Json gpus = arr();
  for (const GpuInfo& g : p.gpus) {
    Json x = obj(), peers = arr();
    for (const std::string& b : g.nvlinkPeers) peers.arr.push_back(str(b));
    Json sw;
    sw.type = Json::BOOL;
    sw.b = g.nvswitch;
    x.obj = {{"index", num(g.index)}, {"name", str(g.name)}, {"bus_id", str(g.busId)}, {"nvlink_peers", peers},
             {"nvswitch", sw}};
    gpus.arr.push_back(x);
  }
  j.obj.emplace_back("nics", nics);
  j.obj.emplace_back("gpus", gpus);
  j.obj.emplace_back("gpu", num(p.gpu));
  j.obj.emplace_back("nvlink_domain", num(p.nvlinkDomain));
  return j.dump();
}

namespace {
RankProbe probeFrom(const Json& j) {
  RankProbe p;
  p.rank = static_cast<int>(getNum(j, "rank", 0));
  p.hostname = getStr(j, "hostname");
  p.hostId = getStr(j, "host_id");
  p.host = getStr(j, "host", p.hostname);
  p.rack = getStr(j, "rack");
  p.numaNode = static_cast<int>(getNum(j, "numa", -1));
  p.cpus = parseCpuList(getStr(j, "cpus"));
  if (const Json* nics = j.find("nics"))
    for (const Json& x : nics->arr)
      p.nics.push_back({getStr(x, "name"), getStr(x, "mac"), getStr(x, "ipv4"),
                        static_cast<int>(getNum(x, "speed_mbps", 0))});
  if (const Json* gpus = j.find("gpus"))
    for (const Json& x : gpus->arr) {
      GpuInfo g;
      g.index = static_cast<int>(getNum(x, "index", 0));
      g.name = getStr(x, "name");
      g.busId = getStr(x, "bus_id");
      if (const Json* peers = x.find("nvlink_peers"))
        for (const Json& b : peers->arr) g.nvlinkPeers.push_back(b.str);
      const Json* sw = x.find("nvswitch");
      g.nvswitch = sw && sw->type == Json::BOOL && sw->b;
      p.gpus.push_back(g);
    }
  p.gpu = static_cast<int>(getNum(j, "gpu", -1));
  p.nvlinkDomain = static_cast<int>(getNum(j, "nvlink_domain", -1));
  return p;
}
}  // namespace

RankProbe probeFromJson(const std::string& text) { return probeFrom(Json::parse(text)); }

// ---------------------------------------------------------------- topology

const char* linkClassName(LinkClass c) {
  switch (c) {
    case LinkClass::SHM: return "shm";
    case LinkClass::TCP: return "tcp";
    case LinkClass::RACK: return "rack";
    case LinkClass::NVLINK: return "nvlink";
  }
  return "?";
}

LinkCost defaultLinkCost(LinkClass c, int nicMbps) {
  // Round numbers for a commodity node: memory copies at ~8 GB/s with a couple of
  // microseconds per handshake; TCP at the NIC's rate (10 Gbit/s when unknown) with
  // tens of microseconds per message through the kernel; one more switch hop between racks.
  double nicBeta = 8.0 / ((nicMbps > 0 ? nicMbps : 10000) * 1e6);
  switch (c) {
    case LinkClass::SHM: return {2e-6, 1.0 / 8e9, "default"};
    case LinkClass::TCP: return {30e-6, nicBeta, nicMbps > 0 ? "nic speed" : "default"};
    case LinkClass::RACK: return {50e-6, nicBeta * 1.25, nicMbps > 0 ? "nic speed" : "default"};
    // One NVLink hop between two GPUs of a domain: a CUDA IPC event handshake of a few
    // microseconds, and a round 100 GB/s (a few NVLink lanes of any generation since
    // NVLink 2; NVSwitch systems give more). Fix it with the file's "links" when it matters.
    case LinkClass::NVLINK: return {5e-6, 1.0 / 100e9, "default"};
  }
  return {};
}

LinkClass Topology::between(int a, int b) const {
  if (domainOf.at(a) >= 0 && domainOf.at(a) == domainOf.at(b)) return LinkClass::NVLINK;
  if (hostOf.at(a) == hostOf.at(b)) return LinkClass::SHM;
  return rackOf.at(a) == rackOf.at(b) ? LinkClass::TCP : LinkClass::RACK;
}

void Topology::index() {
  std::map<std::string, int> hostIndex, rackIndex;
  hosts.clear();
  racks.clear();
  hostOf.assign(ranks.size(), 0);
  rackOf.assign(ranks.size(), 0);
  int nicMbps = 0;  // slowest known NIC speed: the inter-host bottleneck
  for (size_t r = 0; r < ranks.size(); ++r) {
    const RankProbe& p = ranks[r];
    std::string hostKey = p.hostId.empty() ? p.host : p.hostId;
    auto h = hostIndex.emplace(hostKey, static_cast<int>(hosts.size()));
    if (h.second) hosts.push_back(p.host.empty() ? p.hostname : p.host);
    auto k = rackIndex.emplace(p.rack, static_cast<int>(racks.size()));
    if (k.second) racks.push_back(p.rack.empty() ? "rack0" : p.rack);
    hostOf[r] = h.first->second;
    rackOf[r] = k.first->second;
    for (const NicInfo& n : p.nics)
      if (n.speedMbps > 0) nicMbps = nicMbps ? std::min(nicMbps, n.speedMbps) : n.speedMbps;
  }
  for (int c = 0; c < kLinkClasses; ++c) links[c] = defaultLinkCost(static_cast<LinkClass>(c), nicMbps);
  indexGpuDomains();
}

Json Topology::toJson() const {
  Json j = obj(), hs = arr(), ls = obj(), rs = arr();
  for (size_t h = 0; h < hosts.size(); ++h) {
    Json x = obj(), members = arr();
    std::string rack;
    for (int r = 0; r < size(); ++r)
      if (hostOf[r] == static_cast<int>(h)) {
        members.arr.push_back(num(r));
        rack = ranks[r].rack;
      }
    x.obj = {{"name", str(hosts[h])}, {"rack", str(rack)}, {"ranks", members}};
    Json gpus = gpusOfHost(static_cast<int>(h));
    if (!gpus.arr.empty()) x.obj.emplace_back("gpus", gpus);
    hs.arr.push_back(x);
  }
  for (int c = 0; c < kLinkClasses; ++c) {
    Json x = obj();
    x.obj = {{"alpha", num(links[c].alpha)}, {"beta", num(links[c].beta)}, {"source", str(links[c].source)}};
    if (links[c].sendCpu > 0 || links[c].recvCpu > 0) {
      x.obj.emplace_back("send_cpu", num(links[c].sendCpu));
      x.obj.emplace_back("recv_cpu", num(links[c].recvCpu));
    }
    if (links[c].machineBeta > 0) x.obj.emplace_back("machine_beta", num(links[c].machineBeta));
    ls.obj.emplace_back(linkClassName(static_cast<LinkClass>(c)), x);
  }
  for (const RankProbe& p : ranks) rs.arr.push_back(Json::parse(probeToJson(p)));
  j.obj = {{"origin", str(origin)}, {"hosts", hs}, {"links", ls}, {"ranks", rs}};
  return j;
}

Topology Topology::fromJson(const Json& j) {
  Topology t;
  const Json* rs = j.find("ranks");
  if (rs && rs->type == Json::ARR) {
    for (const Json& x : rs->arr) t.ranks.push_back(probeFrom(x));
  } else {  // a described topology: ranks are what "hosts" lists
    int n = 0;
    if (const Json* hosts = j.find("hosts"))
      for (const Json& h : hosts->arr)
        if (const Json* members = h.find("ranks"))
          for (const Json& r : members->arr) n = std::max(n, static_cast<int>(r.num) + 1);
    if (n == 0) throw Error("topology JSON: neither a \"ranks\" list nor hosts with ranks");
    t.ranks.resize(n);
    for (int r = 0; r < n; ++r) {
      t.ranks[r].rank = r;
      t.ranks[r].hostname = t.ranks[r].host = "unplaced" + std::to_string(r);
    }
  }
  for (size_t r = 0; r < t.ranks.size(); ++r) {
    TopoFilePlacement place = placementFor(j, static_cast<int>(r));
    if (!place.host.empty()) {
      // A dump's records keep their probed identity beside the name: namespace hosts
      // share a hostname, and the name alone would merge them when it is loaded back.
      t.ranks[r].host = place.host;
      t.ranks[r].hostId = "file:" + place.host + (t.ranks[r].hostId.empty() ? "" : "|" + t.ranks[r].hostId);
      t.ranks[r].rack = place.rack;
    }
    if (place.gpu >= 0) {
      t.ranks[r].gpu = place.gpu;
      t.ranks[r].nvlinkDomain = place.domain;
    }
  }
  t.origin = getStr(j, "origin", "json");
  t.index();
  applyFileLinks(j, t.links);
  return t;
}

// ---------------------------------------------------------------- topology files

Json loadTopoFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw Error("HCOMM_TOPO_FILE: cannot read '" + path + "'");
  std::stringstream buf;
  buf << f.rdbuf();
  try {
    Json j = Json::parse(buf.str());
    const Json* hosts = j.find("hosts");
    if (!hosts || hosts->type != Json::ARR) throw Error("no \"hosts\" list");
    return j;
  } catch (const Error& e) {
    throw Error("HCOMM_TOPO_FILE '" + path + "': " + e.what());
  }
}

TopoFilePlacement placementFor(const Json& file, int rank) {
  TopoFilePlacement p;
  const Json* hosts = file.find("hosts");
  if (!hosts) return p;
  for (size_t h = 0; h < hosts->arr.size(); ++h) {
    const Json& host = hosts->arr[h];
    const Json* ranks = host.find("ranks");
    if (!ranks) continue;
    for (const Json& r : ranks->arr)
      if (r.type == Json::NUM && static_cast<int>(r.num) == rank) {
        p.host = getStr(host, "name", "host" + std::to_string(h));
        p.rack = getStr(host, "rack");
        gpuPlacementFor(host, rank, p);
        return p;
      }
  }
  return p;
}

void applyFileLinks(const Json& file, LinkCost* links) {
  const Json* ls = file.find("links");
  if (!ls) return;
  for (int c = 0; c < kLinkClasses; ++c) {
    const Json* x = ls->find(linkClassName(static_cast<LinkClass>(c)));
    if (!x) continue;
    std::string src = getStr(*x, "source", "file");
    if (src == "measured") src = "file";  // a dump loaded back: fixed numbers now
    links[c] = {getNum(*x, "alpha", links[c].alpha), getNum(*x, "beta", links[c].beta), src == "default" ? "default" : "file",
                getNum(*x, "send_cpu", links[c].sendCpu), getNum(*x, "recv_cpu", links[c].recvCpu),
                getNum(*x, "machine_beta", links[c].machineBeta)};
    if (links[c].sendCpu < 0 || links[c].recvCpu < 0 || links[c].machineBeta < 0)
      throw Error(std::string("topology links.") + linkClassName(static_cast<LinkClass>(c)) +
                  ": send_cpu, recv_cpu and machine_beta are seconds per byte, >= 0");
  }
}

}  // namespace hcomm

// ---------------------------------------------------------------- building at init

namespace hcomm {

bool deterministicMode() { return envInt("HCOMM_DETERMINISTIC", 0) != 0; }

namespace {

std::vector<std::string> allgatherStrings(const InitChannel& ch, const std::string& mine) {
  std::vector<int64_t> lens(ch.size);
  int64_t myLen = static_cast<int64_t>(mine.size());
  ch.allgatherBytes(&myLen, lens.data(), std::vector<size_t>(ch.size, sizeof(int64_t)));
  std::vector<size_t> counts(lens.begin(), lens.end());
  size_t total = 0;
  for (size_t c : counts) total += c;
  std::string all(total, '\0');
  ch.allgatherBytes(mine.data(), &all[0], counts);
  std::vector<std::string> out;
  size_t off = 0;
  for (size_t c : counts) {
    out.push_back(all.substr(off, c));
    off += c;
  }
  return out;
}

// The fastest of `iters` ping-pong round trips of n bytes (a leads, b echoes): the
// minimum filters out the scheduler noise of an oversubscribed machine.
double pingPong(const InitChannel& ch, int a, int b, size_t n, int iters) {
  std::vector<char> buf(std::max<size_t>(n, 1));
  bool lead = ch.rank == a;
  int peer = lead ? b : a;
  auto once = [&] {
    if (lead) {
      ch.send(peer, buf.data(), n);
      ch.recv(peer, buf.data(), n);
    } else {
      ch.recv(peer, buf.data(), n);
      ch.send(peer, buf.data(), n);
    }
  };
  once();  // warm-up: connection setup, page faults
  double best = 1e30;
  for (int i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    once();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

void measureLinks(Topology& t, const InitChannel& ch) {
  // Small messages give alpha (half a round trip), 2 MiB ones beta: about 150 ms per
  // class on a 1 Gbit/s link, far less on shared memory, so the whole probe stays < 1 s.
  constexpr size_t kLarge = 2 << 20;
  std::vector<double> fit(2 * kLinkClasses, 0.0);
  for (int c = 0; c < kLinkClasses; ++c) {
    // The init channel moves host memory: it cannot time NVLink (default or file).
    if (static_cast<LinkClass>(c) == LinkClass::NVLINK) continue;
    int a = -1, b = -1;  // the first pair of this class in rank order
    for (int x = 0; x < t.size() && a < 0; ++x)
      for (int y = x + 1; y < t.size(); ++y)
        if (t.between(x, y) == static_cast<LinkClass>(c)) {
          a = x;
          b = y;
          break;
        }
    if (a < 0 || (ch.rank != a && ch.rank != b)) continue;
    double small = pingPong(ch, a, b, 8, 12), large = pingPong(ch, a, b, kLarge, 3);
    if (ch.rank != a) continue;
    fit[2 * c] = small / 2;
    // On an oversubscribed machine the small round trip is mostly scheduler wake-ups,
    // and subtracting it can leave almost nothing: never let beta fall below a quarter
    // of the plain time per byte of the large message.
    double perByte = large / 2 / kLarge;
    fit[2 * c + 1] = std::max((large - small) / 2 / kLarge, perByte / 4);
  }
  ch.maxAll(fit.data(), fit.size());  // every rank adopts the same numbers: same choices
  for (int c = 0; c < kLinkClasses; ++c)
    if (fit[2 * c] > 0) t.links[c] = {fit[2 * c], fit[2 * c + 1], "measured"};
}

std::shared_ptr<Topology> buildTopology(const InitChannel& ch, const std::string& hostId, const Json* file,
                                        const std::string& filePath) {
  RankProbe me = probeLocal();
  me.rank = ch.rank;
  me.hostId = hostId;
  me.rack = envStr("HCOMM_RACK");
  if (file) {
    TopoFilePlacement place = placementFor(*file, ch.rank);
    if (!place.host.empty()) {
      me.host = place.host;
      me.rack = place.rack;
    }
    if (place.gpu >= 0) {
      me.gpu = place.gpu;
      me.nvlinkDomain = place.domain;
    }
  }
  auto t = std::make_shared<Topology>();
  if (ch.size == 1) {
    t->ranks = {me};
  } else {
    for (const std::string& rec : allgatherStrings(ch, probeToJson(me))) t->ranks.push_back(probeFromJson(rec));
  }
  if (file) t->origin = filePath;
  t->index();
  bool probe = envInt("HCOMM_PROBE", 1) != 0 && !deterministicMode() && ch.size > 1;
  if (probe) inferRacks(*t, ch);  // racks.h: only when no rank names its rack
  if (probe) measureLinks(*t, ch);
  if (probe) measureMachineNet(*t, ch);  // machine_net.h: every host's transfer at once
  if (probe && envInt("HCOMM_SOCKET_CPU_PROBE", 1) != 0) measureSocketCpuAtInit(*t, ch);  // socket_cpu.h
  if (file) applyFileLinks(*file, t->links);
  std::string dump = envStr("HCOMM_TOPO_DUMP_FILE");
  if (!dump.empty() && ch.rank == 0) {
    std::ofstream f(dump);
    if (!f) throw Error("HCOMM_TOPO_DUMP_FILE: cannot write '" + dump + "'");
    f << t->toJson().dump() << "\n";
  }
  return t;
}

}  // namespace hcomm
