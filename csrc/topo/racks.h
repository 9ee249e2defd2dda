// Racks from measurement. When no rank names its rack (HCOMM_RACK unset, no topology
// file racks) and there are 3 hosts or more, the init probe times a 256 KiB ping-pong
// between the first ranks of every pair of hosts (two sweeps, the fastest kept). Hosts
// whose mutual links are clearly faster than the rest - the pair times split by a gap
// of 2x or more, and the fast pairs form cliques - are grouped into racks, so the
// hierarchical algorithms and the tuner see a rack level without being told. Within
// noise (no such gap) there is no grouping. Cost: 2 x 5 round trips per host pair
// (about 2 s for 4 hosts with 100 Mbit/s between racks).
#pragma once
#include <vector>

#include "topo/topology.h"

namespace hcomm {

// Pure rule: hosts 0..h-1, times[i*h + j] the pair's time (symmetric; the diagonal is
// ignored). Returns each host's rack (0, 1, ... in order of first host), or empty when
// the times show no clear grouping (no 2x gap, a fast pair that is not a clique, one
// rack, or every host alone).
std::vector<int> racksFromTimes(int hosts, const std::vector<double>& times, double clearRatio = 2.0);

// At init (every rank calls, after index() and before measureLinks): measures the host
// pairs and names each rank's rack "measured-rack<k>" when racksFromTimes groups them.
// Does nothing when some rank has a rack already or there are fewer than 3 hosts.
void inferRacks(Topology& t, const InitChannel& ch);

}  // namespace hcomm
