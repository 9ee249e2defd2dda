// The machines' network path under every host's transfer at once (machine_net.h says
// why and what it costs).
#include "topo/machine_net.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <vector>

namespace hcomm {

// Ring edges (r -> r+1 over all ranks, as ring.cc's steps) that cross hosts.
std::vector<int> crossingSenders(const Topology& t) {
  std::vector<int> from;
  for (int r = 0; r < t.size(); ++r)
    if (t.hostOf[r] != t.hostOf[(r + 1) % t.size()]) from.push_back(r);
  return from;
}

int ringTransfersPerMachine(const Topology& t) {
  std::map<std::string, int> touching;  // hostname -> crossing ring transfers with an end there
  for (int r : crossingSenders(t)) {
    std::set<std::string> ends = {t.ranks[r].hostname, t.ranks[(r + 1) % t.size()].hostname};
    for (const std::string& m : ends) ++touching[m];
  }
  int most = 0;
  for (auto& m : touching) most = std::max(most, m.second);
  return most;
}

void measureMachineNet(Topology& t, const InitChannel& ch) {
  int k = ringTransfersPerMachine(t);
  if (k == 0 || !ch.exchange) return;
  constexpr size_t kBytes = 2 << 20;  // as the pair probe's large message
  int n = t.size(), to = (ch.rank + 1) % n, from = (ch.rank + n - 1) % n;
  std::vector<char> out(kBytes, 1), in(kBytes);
  ch.exchange(to, out.data(), from, in.data(), 64 << 10);  // connections, page faults
  double s = 1e30;
  for (int sweep = 0; sweep < 2; ++sweep) {  // the faster of two: load only ever adds time
    // Start together: a peer that sent early would fill this rank's socket buffer before
    // its clock starts (measured: 2.6 GB/s "through" a 1.25 GB/s link without this).
    double none = 0;
    ch.maxAll(&none, 1);
    auto t0 = std::chrono::steady_clock::now();
    ch.exchange(to, out.data(), from, in.data(), kBytes);
    s = std::min(s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  // A rank whose incoming edge crosses hosts times one crossing transfer of the step
  // (the in-host edges' ranks only keep their CPUs busy, as in a collective).
  double took = 0;
  if (t.hostOf[from] != t.hostOf[ch.rank]) {
    double alpha = t.links[static_cast<int>(t.between(from, ch.rank))].alpha;
    took = std::max(s - alpha, s / 2) / kBytes;  // a wake-up spike must not erase the bytes
  }
  ch.maxAll(&took, 1);  // the slowest crossing transfer: every rank adopts the same number
  if (took <= 0) return;
  for (LinkClass c : {LinkClass::TCP, LinkClass::RACK}) t.links[static_cast<int>(c)].machineBeta = took / k;
}

}  // namespace hcomm
