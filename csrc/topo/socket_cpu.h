// The CPU time the kernel's TCP socket path spends per byte, apart from the wire.
//
// Cost: one loopback TCP connection, `bytes` moved through it `sweeps` times by one
// thread (a few milliseconds at init: 8 MiB at 1-4 GB/s, three sweeps).
//
// Why: a tcp link's probed beta (a ping-pong between one pair of ranks, the others idle,
// topology.h's measureLinks) is the wire's time per byte or the socket path's CPU time,
// whichever is slower, with a whole core at each end. A collective runs every rank at
// once: where a machine holds more ranks than CPUs, each rank's sends and receives get
// only its share of a CPU, and a link faster than that (10 Gbit/s veth between network
// namespaces; 100 Gbit/s NICs on a few cores) is bound by the CPUs, not by its rate.
// Measured on loopback, where the wire never binds: the send calls (user copy into the
// socket buffer plus, on loopback and veth, the protocol's receive processing run in the
// sender's context) and the receive calls (the copy out) are timed apart.
#pragma once
#include <cstddef>

#include "topo/topology.h"

namespace hcomm {

struct SocketCpu {
  double send = 0, recv = 0;  // seconds per byte on one core; 0 when not measured
};

// One thread, one loopback connection, non-blocking: write what the socket takes, read
// back what arrived, until `bytes` moved; the fastest of `sweeps` sweeps, per side.
// Throws Error when loopback TCP is unavailable (no `lo` up in this network namespace).
SocketCpu measureSocketCpu(size_t bytes = 8u << 20, int sweeps = 3);

// At init, after measureLinks: when some pair of ranks talks tcp (or across racks), the
// lowest rank of each machine (hostname) measures while the others wait, every rank
// adopts the slowest machine's numbers (an agreed MAX: same numbers, same choices), and
// they become the tcp and rack classes' sendCpu / recvCpu. A machine whose loopback
// fails contributes nothing (the term is then not priced there).
void measureSocketCpuAtInit(Topology& t, const InitChannel& ch);

}  // namespace hcomm
