// What one rank can see of its own machine: the facts the topology is built from.
//
// Everything is read from /sys and /proc (the root is a parameter so tests can point
// it at a fabricated tree) and, for GPUs, from NVML loaded with dlopen at run time:
// a machine without libnvidia-ml simply reports no GPUs.
#pragma once
#include <string>
#include <vector>

namespace hcomm {

struct NicInfo {
  std::string name;       // eth0
  std::string mac;        // /sys/class/net/<name>/address
  std::string ipv4;       // first IPv4 address (live probe only)
  int speedMbps = 0;      // /sys/class/net/<name>/speed; 0 when unknown (virtual links)
};

struct GpuInfo {
  int index = 0;
  std::string name;
  std::string busId;                    // PCI bus id, as NVML writes it
  std::vector<std::string> nvlinkPeers; // bus ids at the far end of active NVLinks
  bool nvswitch = false;                // some NVLink ends in an NVSwitch
};

struct RankProbe {
  int rank = 0;
  std::string hostname;
  std::string hostId;     // identity that decides shared memory (topo/host.h)
  std::string host;       // host label: the topology file's name, else the hostname
  std::string rack;       // HCOMM_RACK or the topology file; empty: one rack
  int numaNode = -1;      // node holding this process's first CPU; -1 unknown
  std::vector<int> cpus;  // CPUs this process may run on
  std::vector<NicInfo> nics;
  std::vector<GpuInfo> gpus;
  // The GPU this rank's device calls use (NVML index, or the position in the topology
  // file's "gpus" list of its host); -1 when unknown (no GPU, or no way to tell at init).
  int gpu = -1;
  // The GPU domain of that GPU on its host: GPUs joined by NVLink (directly, or through
  // one NVSwitch fabric) share a label; -1 lets the topology derive it from `gpus`.
  int nvlinkDomain = -1;
};

// Physical NICs under <sysRoot>/class/net (loopback skipped), sorted by name.
std::vector<NicInfo> readNics(const std::string& sysRoot);
// The NUMA node whose cpulist contains cpus[0]; -1 when there is no NUMA information.
int numaNodeOf(const std::string& sysRoot, const std::vector<int>& cpus);
// "0-3,8,10-11" -> {0,1,2,3,8,10,11}; throws Error on malformed text.
std::vector<int> parseCpuList(const std::string& text);
std::string formatCpuList(const std::vector<int>& cpus);
// GPUs through NVML (dlopen'ed); empty without a driver.
std::vector<GpuInfo> readGpus();

// Per GPU of one host, its NVLink domain label: the smallest index among the GPUs it
// reaches over NVLink (peers by bus id, transitively); every GPU whose links end in an
// NVSwitch is one domain (one fabric per host assumed). A GPU with no NVLink is alone.
std::vector<int> nvlinkDomains(const std::vector<GpuInfo>& gpus);
// Which of `gpus` (an NVML index) this process will use: HCOMM_GPU (an index or a PCI
// bus id), else LOCAL_RANK modulo the GPU count (the launcher's usual cuda:LOCAL_RANK),
// else -1. Throws Error when HCOMM_GPU names no GPU present.
int chooseGpu(const std::vector<GpuInfo>& gpus);

// This process, live. hostId and host come from the caller (bootstrap decides them).
RankProbe probeLocal(const std::string& sysRoot = "/sys");

}  // namespace hcomm
