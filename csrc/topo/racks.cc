#include "topo/racks.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <string>

#include "common/log.h"

namespace hcomm {

namespace {

int find(std::vector<int>& parent, int x) {
  while (parent[x] != x) x = parent[x] = parent[parent[x]];
  return x;
}

// The fastest of `iters` round trips of n bytes between a (leads) and b (echoes).
double roundTrip(const InitChannel& ch, int a, int b, size_t n, int iters) {
  std::vector<char> buf(n);
  bool lead = ch.rank == a;
  int peer = lead ? b : a;
  double best = 1e30;
  constexpr int kWarm = 2;  // a fresh connection's first round trips (TCP slow start) are slow
  for (int i = 0; i < kWarm + iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    if (lead) {
      ch.send(peer, buf.data(), n);
      ch.recv(peer, buf.data(), n);
    } else {
      ch.recv(peer, buf.data(), n);
      ch.send(peer, buf.data(), n);
    }
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= kWarm) best = std::min(best, t);
  }
  return best;
}

}  // namespace

namespace {

// Racks when every pair timed at most `fast` counts as a fast link: connected groups
// that are cliques, at least two of them, some holding two hosts or more; else empty.
std::vector<int> groupsBelow(int h, const std::vector<double>& times, double fast) {
  std::vector<int> parent(h);
  std::iota(parent.begin(), parent.end(), 0);
  for (int i = 0; i < h; ++i)
    for (int j = i + 1; j < h; ++j)
      if (times[i * h + j] <= fast) parent[find(parent, i)] = find(parent, j);
  for (int i = 0; i < h; ++i)  // a rack is a clique of fast links
    for (int j = i + 1; j < h; ++j)
      if (find(parent, i) == find(parent, j) && times[i * h + j] > fast) return {};
  std::vector<int> rack(h, -1), label(h, -1);
  int racks = 0;
  bool shared = false;
  for (int i = 0; i < h; ++i) {
    int root = find(parent, i);
    if (label[root] < 0) label[root] = racks++;
    else shared = true;
    rack[i] = label[root];
  }
  if (racks < 2 || !shared) return {};
  return rack;
}

}  // namespace

std::vector<int> racksFromTimes(int h, const std::vector<double>& times, double clearRatio) {
  std::vector<double> v;
  for (int i = 0; i < h; ++i)
    for (int j = i + 1; j < h; ++j) v.push_back(times[i * h + j]);
  std::sort(v.begin(), v.end());
  if (v.size() < 2 || v[0] <= 0) return {};
  // The slowest clear gap that gives racks: "the rest" are the slowest links, and a
  // noisy pair inside a rack (a gap lower down) does not split it.
  for (size_t k = v.size() - 1; k-- > 0;)
    if (v[k + 1] / v[k] >= clearRatio) {
      std::vector<int> rack = groupsBelow(h, times, v[k]);
      if (!rack.empty()) return rack;
    }
  return {};
}

void inferRacks(Topology& t, const InitChannel& ch) {
  int h = static_cast<int>(t.hosts.size());
  for (const RankProbe& p : t.ranks)
    if (!p.rack.empty()) return;  // told: HCOMM_RACK or the topology file
  if (h < 3) return;
  std::vector<int> leader(h, -1);  // the first rank of each host
  for (int r = 0; r < t.size(); ++r)
    if (leader[t.hostOf[r]] < 0) leader[t.hostOf[r]] = r;
  constexpr size_t kBytes = 256 << 10;  // bandwidth-bound on any network link
  // Two sweeps over every pair, the fastest of each pair's round trips kept: a pair timed
  // while the machine was busy (ranks outnumber CPUs) gets a second chance later.
  std::vector<double> times(h * h, 0.0);
  for (int sweep = 0; sweep < 2; ++sweep)
    for (int i = 0; i < h; ++i)
      for (int j = i + 1; j < h; ++j) {
        int a = leader[i], b = leader[j];
        if (ch.rank != a && ch.rank != b) continue;
        double rt = roundTrip(ch, a, b, kBytes, 3);
        double& t = times[i * h + j];
        if (ch.rank == a) t = times[j * h + i] = sweep ? std::min(t, rt) : rt;
      }
  ch.maxAll(times.data(), times.size());  // every rank groups the same numbers alike
  std::vector<int> rack = racksFromTimes(h, times);
  if (logLevel() >= LogLevel::INFO) {
    std::string text = "racks: host pair round trips (us)";
    for (int i = 0; i < h; ++i)
      for (int j = i + 1; j < h; ++j)
        text += " " + std::to_string(i) + "-" + std::to_string(j) + ":" + std::to_string(int(times[i * h + j] * 1e6));
    logLine(LogLevel::INFO, ch.rank, text + (rack.empty() ? ", no grouping" : ", grouped"));
  }
  if (rack.empty()) return;
  for (int r = 0; r < t.size(); ++r) t.ranks[r].rack = "measured-rack" + std::to_string(rack[t.hostOf[r]]);
  t.index();
}

}  // namespace hcomm
