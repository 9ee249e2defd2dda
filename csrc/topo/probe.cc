#include "topo/probe.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <dlfcn.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sched.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/param.h"
#include "common/types.h"
#include "topo/host.h"

namespace hcomm {

namespace {

std::string readFirstLine(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  if (f) std::getline(f, s);
  return s;
}

std::vector<std::string> listDir(const std::string& path) {
  std::vector<std::string> out;
  DIR* d = opendir(path.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') out.push_back(e->d_name);
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string ipv4Of(const std::string& ifname) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string found;
  for (ifaddrs* a = list; a && found.empty(); a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET || ifname != a->ifa_name) continue;
    char buf[INET_ADDRSTRLEN] = {0};
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, buf, sizeof buf);
    found = buf;
  }
  freeifaddrs(list);
  return found;
}

std::vector<int> processCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

// ---- NVML, declared here so no header is needed at build time (ABI of nvml.h).
struct NvmlPciInfo {
  char busIdLegacy[16];
  unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
  char busId[32];
};
using NvmlDevice = void*;
struct Nvml {
  void* lib = nullptr;
  int (*init)() = nullptr;
  int (*shutdown)() = nullptr;
  int (*count)(unsigned*) = nullptr;
  int (*handle)(unsigned, NvmlDevice*) = nullptr;
  int (*name)(NvmlDevice, char*, unsigned) = nullptr;
  int (*pci)(NvmlDevice, NvmlPciInfo*) = nullptr;
  int (*linkState)(NvmlDevice, unsigned, int*) = nullptr;
  int (*remotePci)(NvmlDevice, unsigned, NvmlPciInfo*) = nullptr;
  int (*remoteType)(NvmlDevice, unsigned, int*) = nullptr;

  template <class F>
  void bind(F& f, const char* sym) { f = reinterpret_cast<F>(dlsym(lib, sym)); }
  bool load() {
    lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return false;
    bind(init, "nvmlInit_v2");
    bind(shutdown, "nvmlShutdown");
    bind(count, "nvmlDeviceGetCount_v2");
    bind(handle, "nvmlDeviceGetHandleByIndex_v2");
    bind(name, "nvmlDeviceGetName");
    bind(pci, "nvmlDeviceGetPciInfo_v3");
    bind(linkState, "nvmlDeviceGetNvLinkState");
    bind(remotePci, "nvmlDeviceGetNvLinkRemotePciInfo_v2");
    bind(remoteType, "nvmlDeviceGetNvLinkRemoteDeviceType");
    return init && count && handle && init() == 0;
  }
  ~Nvml() {
    if (lib && shutdown) shutdown();
    if (lib) dlclose(lib);
  }
};

constexpr unsigned kNvmlMaxLinks = 18;  // NVML_NVLINK_MAX_LINKS
constexpr int kNvmlSwitch = 2;          // NVML_NVLINK_DEVICE_TYPE_SWITCH

void readNvlinks(Nvml& nv, NvmlDevice dev, GpuInfo& g) {
  if (!nv.linkState || !nv.remotePci) return;
  for (unsigned link = 0; link < kNvmlMaxLinks; ++link) {
    int active = 0;
    if (nv.linkState(dev, link, &active) != 0 || !active) continue;
    int type = 0;
    if (nv.remoteType && nv.remoteType(dev, link, &type) == 0 && type == kNvmlSwitch) {
      g.nvswitch = true;
      continue;
    }
    NvmlPciInfo remote{};
    if (nv.remotePci(dev, link, &remote) == 0 &&
        std::find(g.nvlinkPeers.begin(), g.nvlinkPeers.end(), remote.busId) == g.nvlinkPeers.end())
      g.nvlinkPeers.push_back(remote.busId);
  }
}

}  // namespace

std::vector<int> parseCpuList(const std::string& text) {
  std::vector<int> cpus;
  std::istringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    item.erase(std::remove_if(item.begin(), item.end(), ::isspace), item.end());
    if (item.empty()) continue;
    auto dash = item.find('-');
    try {
      size_t used = 0;
      int lo = std::stoi(item.substr(0, dash), &used);
      if (used != (dash == std::string::npos ? item.size() : dash)) throw std::invalid_argument(item);
      int hi = dash == std::string::npos ? lo : std::stoi(item.substr(dash + 1));
      if (hi < lo) throw std::invalid_argument(item);
      for (int c = lo; c <= hi; ++c) cpus.push_back(c);
    } catch (const std::exception&) {
      throw Error("malformed CPU list '" + text + "' (expected e.g. 0-3,8)");
    }
  }
  return cpus;
}

std::string formatCpuList(const std::vector<int>& cpus) {
  std::ostringstream s;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    s << (i ? "," : "") << cpus[i];
    if (j > i) s << "-" << cpus[j];
    i = j + 1;
  }
  return s.str();
}

std::vector<NicInfo> readNics(const std::string& sysRoot) {
  std::vector<NicInfo> nics;
  std::string base = sysRoot + "/class/net/";
  for (const std::string& name : listDir(base)) {
    if (name == "lo") continue;
    NicInfo n;
    n.name = name;
    n.mac = readFirstLine(base + name + "/address");
    std::string speed = readFirstLine(base + name + "/speed");  // "-1" or EINVAL on virtual links
    try {
      n.speedMbps = speed.empty() ? 0 : std::max(0, std::stoi(speed));
    } catch (const std::exception&) {
      n.speedMbps = 0;
    }
    nics.push_back(n);
  }
  return nics;
}

int numaNodeOf(const std::string& sysRoot, const std::vector<int>& cpus) {
  if (cpus.empty()) return -1;
  std::string base = sysRoot + "/devices/system/node/";
  for (const std::string& entry : listDir(base)) {
    if (entry.rfind("node", 0) != 0 || entry.size() == 4 || !isdigit(entry[4])) continue;
    std::vector<int> list;
    try {
      list = parseCpuList(readFirstLine(base + entry + "/cpulist"));
    } catch (const Error&) {
      continue;  // an unreadable node says nothing; the probe must not fail init
    }
    if (std::find(list.begin(), list.end(), cpus[0]) != list.end()) return std::stoi(entry.substr(4));
  }
  return -1;
}

std::vector<GpuInfo> readGpus() {
  std::vector<GpuInfo> gpus;
  Nvml nv;
  if (!nv.load()) return gpus;
  unsigned n = 0;
  if (nv.count(&n) != 0) return gpus;
  for (unsigned i = 0; i < n; ++i) {
    NvmlDevice dev = nullptr;
    if (nv.handle(i, &dev) != 0) continue;
    GpuInfo g;
    g.index = static_cast<int>(i);
    char name[96] = {0};
    if (nv.name && nv.name(dev, name, sizeof name) == 0) g.name = name;
    NvmlPciInfo pci{};
    if (nv.pci && nv.pci(dev, &pci) == 0) g.busId = pci.busId;
    readNvlinks(nv, dev, g);
    gpus.push_back(g);
  }
  return gpus;
}

std::vector<int> nvlinkDomains(const std::vector<GpuInfo>& gpus) {
  std::vector<int> label(gpus.size());
  for (size_t i = 0; i < gpus.size(); ++i) label[i] = gpus[i].index;
  // Relabel to the component's minimum until nothing changes: a handful of GPUs per
  // host, so the quadratic passes cost nothing.
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t i = 0; i < gpus.size(); ++i)
      for (size_t j = 0; j < gpus.size(); ++j) {
        if (i == j) continue;
        const auto& peers = gpus[i].nvlinkPeers;
        bool linked = (gpus[i].nvswitch && gpus[j].nvswitch) ||
                      (!gpus[j].busId.empty() && std::find(peers.begin(), peers.end(), gpus[j].busId) != peers.end());
        if (linked && label[j] < label[i]) {
          label[i] = label[j];
          changed = true;
        }
        if (linked && label[i] < label[j]) {
          label[j] = label[i];
          changed = true;
        }
      }
  }
  return label;
}

int chooseGpu(const std::vector<GpuInfo>& gpus) {
  std::string want = envStr("HCOMM_GPU");
  if (!want.empty()) {
    for (const GpuInfo& g : gpus)
      if (want == g.busId || want == std::to_string(g.index)) return g.index;
    std::string have;
    for (const GpuInfo& g : gpus) have += (have.empty() ? "" : ", ") + std::to_string(g.index) + " " + g.busId;
    throw Error("HCOMM_GPU='" + want + "' names no GPU of this host (" + (have.empty() ? "none found" : have) + ")");
  }
  if (gpus.empty()) return -1;
  std::string local = envStr("LOCAL_RANK");
  if (local.empty()) return -1;
  try {
    int l = std::stoi(local);
    return l < 0 ? -1 : gpus[static_cast<size_t>(l) % gpus.size()].index;
  } catch (const std::exception&) {
    return -1;  // a launcher's malformed LOCAL_RANK only costs the GPU level
  }
}

RankProbe probeLocal(const std::string& sysRoot) {
  RankProbe p;
  p.hostname = hostName();
  p.hostId = hostIdentity();
  p.host = p.hostname;
  p.cpus = processCpus();
  p.numaNode = numaNodeOf(sysRoot, p.cpus);
  p.nics = readNics(sysRoot);
  for (NicInfo& n : p.nics) n.ipv4 = ipv4Of(n.name);
  p.gpus = readGpus();
  p.gpu = chooseGpu(p.gpus);
  return p;
}

}  // namespace hcomm
