// What a machine's own network path costs when all its crossing transfers run at once.
//
// Cost: two exchanges of 2 MiB (after a 64 KiB warm-up; the faster is kept) around the
// ring of all ranks (r -> r+1, as a ring algorithm's step), every rank sending and
// receiving at once, each started together (an agreed MAX first): twice 2 MiB at the
// slowest link's rate (340 ms at 100 Mbit/s, 4 ms at 10 Gbit/s).
//
// Why: the pair probe (measureLinks) times one transfer with every other rank idle. A
// collective's step runs a transfer on every host at once, with every rank busy. Where
// hosts are separate machines with their own NICs that changes nothing. Where several
// "hosts" are network namespaces of one machine, every transfer's kernel path (veth,
// bridge, tbf, TCP at 1500-byte frames) runs on the same few CPUs: measured on 2 CPUs
// with raw sockets (benchmarks/netns_streams.py, 10 Gbit/s tbf), one stream 1.06-1.19
// GB/s, three at once (a ring) 0.76-1.14 GB/s each, six at once 0.42-0.59 each; through
// hcomm's transport a ring allgather of 64 MiB on 3 such hosts moved 0.57 GB/s a link
// against the pair probe's 1.22. The loopback socket probe (socket_cpu.h) does not see
// it: loopback moves 64 KiB frames through no bridge.
//
// The result, LinkCost::machineBeta (tcp and rack), is the seconds per byte that each
// crossing transfer running at once costs a machine it touches: the slowest crossing
// transfer's time per byte in the ring step, divided by k, the most crossing ring
// transfers touching one machine (2 on separate machines; all the ring's crossing edges
// when every host shares one machine). A step with k' such transfers on a machine then
// costs at least k' * machineBeta per byte (tuner_steps.cc). On separate machines with
// full-duplex NICs the ring runs at the pair speed, and k' * machineBeta (sends plus
// receives, each at half the pair's time) never exceeds the NIC term: nothing changes.
#pragma once

#include "topo/topology.h"

namespace hcomm {

// Crossing transfers of the ring of all ranks touching the busiest machine (a hostname;
// a transfer with both ends on one machine counts once). 0 with one host.
int ringTransfersPerMachine(const Topology& t);

// At init, after measureLinks (which gives the tcp alpha subtracted here): every rank
// runs the ring step, all agree on the slowest crossing transfer (an agreed MAX), and
// tcp and rack get machineBeta. Nothing when there is one host.
void measureMachineNet(Topology& t, const InitChannel& ch);

}  // namespace hcomm
