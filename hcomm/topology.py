"""The topology and the tuner from Python: what init detected, and why an algorithm wins.

    comm = hcomm.init()
    print(hcomm.explain("allreduce", 64 << 20, comm=comm))    # every candidate, the choice marked
    print(format_tree(topology(comm)))                        # racks -> hosts -> NUMA -> ranks

Without processes, the tuner runs on a described topology (the HCOMM_TOPO_FILE format,
see csrc/topo/topology.h):

    explain("allreduce", 64 << 20, topology={"hosts": [{"name": "a", "ranks": [0, 1]},
                                                        {"name": "b", "ranks": [2, 3]}]})
"""
import json
import os
import re
import statistics
import time
from dataclasses import dataclass, replace

from . import _C
from ._errors import InvalidArgument

# Collectives the tuner chooses for; the others have one algorithm each.
TUNED = ("allreduce",)
ALLREDUCE_ALGOS = ("ring", "tree", "halving_doubling", "hierarchical")

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_size(text):
    """'64M', '4KiB', '8' -> bytes (binary units)."""
    if isinstance(text, int):
        if text < 0:
            raise InvalidArgument(f"size must be >= 0, got {text}")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise InvalidArgument(f"cannot read size {text!r} (examples: 8, 4K, 64M, 1G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def human_bytes(n):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % (size // 1024 or 1) == 0:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def _human_time(s):
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"


@dataclass(frozen=True)
class Candidate:
    algo: str
    seconds: float            # predicted by the model
    seg_bytes: int = 0        # segment the model chose (0: none)
    inner: str = ""           # hierarchical: the flat algorithm among group leaders
    inner_seg_bytes: int = 0
    applicable: bool = True   # hierarchical on one level is the flat algorithm
    measured: float = None    # seconds, when measured (explain(..., measure=True))


@dataclass(frozen=True)
class Explanation:
    collective: str
    nbytes: int
    world: int
    hosts: int
    candidates: tuple
    chosen: str
    why: str                  # "model", "HCOMM_ALGO" or "requested"

    def candidate(self, algo):
        for c in self.candidates:
            if c.algo == algo:
                return c
        raise KeyError(algo)

    def __str__(self):
        lines = [f"{self.collective} {human_bytes(self.nbytes)} on {self.world} ranks, {self.hosts} host(s): "
                 f"{self.chosen} ({self.why})"]
        measured = any(c.measured is not None for c in self.candidates)
        head = f"  {'algorithm':<18}{'predicted':>12}{'segment':>10}" + (f"{'measured':>12}" if measured else "")
        lines.append(head)
        for c in self.candidates:
            algo = c.algo + (f"({c.inner})" if c.inner else "")
            seg = human_bytes(c.seg_bytes or c.inner_seg_bytes) if (c.seg_bytes or c.inner_seg_bytes) else "-"
            row = f"  {algo:<18}{_human_time(c.seconds):>12}{seg:>10}"
            if measured:
                row += f"{_human_time(c.measured):>12}"
            if c.algo == self.chosen:
                row += "   <- chosen"
            elif not c.applicable:
                row += "   (one level: same as flat)"
            lines.append(row)
        return "\n".join(lines)


def _explanation(collective, nbytes, d, world, hosts):
    cands = tuple(Candidate(c["algo"], c["seconds"], c["seg_bytes"], c["inner"], c["inner_seg_bytes"],
                            c["applicable"]) for c in d["candidates"])
    return Explanation(collective, nbytes, world, hosts, cands, d["chosen"], d["why"])


def _check_collective(collective):
    if collective not in TUNED:
        raise InvalidArgument(f"explain: {collective!r} has a single algorithm; the tuner chooses for "
                              f"{', '.join(TUNED)}")


def load(topology):
    """A topology (dict, JSON text or file path) in the dump format (hosts, links, ranks)."""
    if isinstance(topology, dict):
        text = json.dumps(topology)
    elif isinstance(topology, (str, os.PathLike)) and os.path.exists(topology):
        with open(topology) as f:
            text = f.read()
    elif isinstance(topology, str) and topology.lstrip().startswith("{"):
        text = topology
    else:
        raise InvalidArgument(f"topology must be a dict, JSON text or an existing file, got {topology!r}")
    return json.loads(_C._topology_from_json(text))


def topology(comm):
    """The topology comm's world gathered at init (dump format, as a dict)."""
    return json.loads(_C._comm_topology_json(comm._c))


def explain(collective, nbytes, comm=None, topology=None, algo=None, ranks=None, measure=False, iters=3):
    """The tuner's table for `collective` of `nbytes`: every candidate with its predicted
    time, the choice marked. From a communicator (comm=) or a described topology
    (topology= dict / JSON / path, optionally a subset of its ranks). measure=True (with
    comm, every rank calls) times each candidate too."""
    _check_collective(collective)
    nbytes = parse_size(nbytes)
    if (comm is None) == (topology is None):
        raise InvalidArgument("explain needs exactly one of comm= or topology=")
    if algo is not None and algo not in ("auto",) + ALLREDUCE_ALGOS:
        raise InvalidArgument(f"unknown allreduce algorithm {algo!r} ({', '.join(ALLREDUCE_ALGOS)}, auto)")
    if comm is not None:
        d = _C._comm_explain_allreduce(comm._c, nbytes, algo or "")
        topo = globals()["topology"](comm)
        members = [topo["ranks"][w] for w in comm._c.world_ranks()]
        hosts = len({m["host_id"] or m["host"] for m in members})
        out = _explanation(collective, nbytes, d, comm.size, hosts)
        return _measured(comm, out, iters) if measure else out
    if measure:
        raise InvalidArgument("explain(measure=True) needs comm=")
    topo = load(topology)
    ranks = list(range(len(topo["ranks"]))) if ranks is None else [int(r) for r in ranks]
    d = _C._explain_allreduce_on(json.dumps(topo), nbytes, algo or "", ranks)
    hosts = len({topo["ranks"][r]["host_id"] or topo["ranks"][r]["host"] for r in ranks})
    return _explanation(collective, nbytes, d, len(ranks), hosts)


def time_allreduce(comm, nbytes, algo, iters=3):
    """Median seconds of an allreduce of nbytes (float32) with `algo` forced, the slowest
    rank's view (every rank calls)."""
    import numpy as np

    x = np.ones(max(1, nbytes // 4), np.float32)
    call = lambda: comm._c.allreduce(x.ctypes.data, x.ctypes.data, x.size, "float32", "sum", 1.0, algo, False)  # noqa: E731
    call()  # warm-up (connections, page faults)
    times = []
    for _ in range(iters):
        comm.barrier()
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    mine = np.array([statistics.median(times)])
    comm.allreduce(mine, op="max")
    return float(mine[0])


def _measured(comm, explanation, iters):
    cands = tuple(replace(c, measured=time_allreduce(comm, explanation.nbytes, c.algo, iters))
                  for c in explanation.candidates)
    return replace(explanation, candidates=cands)


def probe_sys(sys_root, cpus):
    """NICs and NUMA node as read from a (possibly fabricated) /sys tree, for `cpus`."""
    return json.loads(_C._probe_sys(str(sys_root), [int(c) for c in cpus]))


def probe_local():
    """This process's own probe (hostname, NUMA, CPUs, NICs, GPUs)."""
    return json.loads(_C._probe_local())


def format_tree(topo):
    """racks -> hosts -> NUMA nodes -> ranks (GPUs, NICs), then the alpha/beta table."""
    ranks = topo["ranks"]
    lines = [f"topology ({topo.get('origin', 'detected')}): {len(ranks)} ranks, {len(topo['hosts'])} hosts"]
    by_rack = {}
    for h in topo["hosts"]:
        by_rack.setdefault(h.get("rack") or "rack0", []).append(h)
    for rack, hosts in by_rack.items():
        lines.append(f"rack {rack}")
        for h in hosts:
            members = [ranks[r] for r in h["ranks"]]
            nics = ", ".join(f"{n['name']} {n['speed_mbps'] or '?'} Mb/s {n['ipv4'] or n['mac']}".rstrip()
                             for n in members[0]["nics"]) if members else ""
            lines.append(f"  host {h['name']}" + (f"  [nics: {nics}]" if nics else ""))
            numa = {}
            for m in members:
                numa.setdefault(m["numa"], []).append(m)
            for node, ms in sorted(numa.items()):
                lines.append(f"    numa {node if node >= 0 else '?'}")
                for m in ms:
                    gpus = ", ".join(f"gpu{g['index']} {g['bus_id']}" + (f" nvlink->{len(g['nvlink_peers'])}"
                                                                          if g["nvlink_peers"] else "")
                                     + (" nvswitch" if g["nvswitch"] else "") for g in m["gpus"])
                    lines.append(f"      rank {m['rank']}  cpus {m['cpus'] or '?'}" + (f"  [{gpus}]" if gpus else ""))
    lines.append(f"  {'link':<6}{'alpha':>12}{'beta (GB/s)':>14}  source")
    for name, c in topo["links"].items():
        gbs = 1e-9 / c["beta"] if c["beta"] > 0 else float("inf")
        lines.append(f"  {name:<6}{_human_time(c['alpha']):>12}{gbs:>14.3f}  {c['source']}")
    return "\n".join(lines)
