"""The machines a plan runs on: hosts (and racks) of ranks, cores and memory per host, and
the topology hcomm's tuner prices collectives on.

Three ways in, all ending in hcomm's topology dump format (hcomm.topology.load):

    Cluster.describe("2 hosts x 4 ranks, 1 Gbit/s between hosts, 2 cores per host")
    Cluster.describe("4 racks x 2 hosts x 4 ranks, 10 Gbit/s between hosts, 1 Gbit/s between racks")
    Cluster.describe("hosts of 3+1 ranks")                 # uneven hosts
    Cluster.from_file(path)                                # HCOMM_TOPO_FILE / HCOMM_TOPO_DUMP_FILE format
    Cluster.detect(world_size)                             # this machine, links measured by hcomm's probe

`physical_order` lists the global ranks rack by rack, host by host: the order placements
are cut from (placement.py), so that whatever the rank numbering, "adjacent" means "same
host" exactly when the topology says so.
"""
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

_RATE_UNITS = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
# alpha (s) per link class when a description gives only a rate: hcomm's own defaults
# (csrc/topo/topology.cc defaultLinkCost), so a described cluster prices like a file one.
_ALPHA = {"shm": 2e-6, "tcp": 3e-5, "rack": 5e-5}


def _host_memory_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 16 << 30


@dataclass
class Cluster:
    """topology: the dump-format dict (hosts with ranks, links with alpha/beta, ranks).
    cores_per_host / memory_per_host: {host name: count / bytes}."""

    topology: dict
    cores_per_host: Dict[str, int] = field(default_factory=dict)
    memory_per_host: Dict[str, int] = field(default_factory=dict)
    origin: str = "described"
    calibration: Optional[dict] = None   # calibrate.py's {"rep_s", "coll_s", ...}: measured on the ranks

    def __post_init__(self):
        hosts = self.topology.get("hosts") or []
        if not hosts:
            raise ValueError("topology has no hosts")
        ranks = sorted(r for h in hosts for r in h["ranks"])
        if ranks != list(range(len(ranks))):
            raise ValueError(f"topology hosts must hold ranks 0..N-1 exactly once, got {ranks}")
        for h in hosts:
            self.cores_per_host.setdefault(h["name"], os.cpu_count() or 1)
            self.memory_per_host.setdefault(h["name"], _host_memory_bytes())

    # -------------------------------------------------------------- what it holds
    @property
    def world_size(self) -> int:
        return sum(len(h["ranks"]) for h in self.topology["hosts"])

    @property
    def hosts(self) -> List[dict]:
        return self.topology["hosts"]

    def host_of(self) -> List[str]:
        """Host name of every global rank."""
        out = [""] * self.world_size
        for h in self.hosts:
            for r in h["ranks"]:
                out[r] = h["name"]
        return out

    def rack_of(self) -> List[str]:
        out = [""] * self.world_size
        for h in self.hosts:
            for r in h["ranks"]:
                out[r] = h.get("rack") or ""
        return out

    def physical_order(self) -> List[int]:
        """Global ranks rack by rack, host by host (in the topology's order), rank order inside."""
        racks = []
        for h in self.hosts:
            if (h.get("rack") or "") not in racks:
                racks.append(h.get("rack") or "")
        return [r for rack in racks for h in self.hosts if (h.get("rack") or "") == rack for r in sorted(h["ranks"])]

    def ranks_per_host(self, host: str) -> int:
        return next(len(h["ranks"]) for h in self.hosts if h["name"] == host)

    def machine_of(self) -> List[str]:
        """The physical machine of every rank: the probe's hostname when the topology has
        one (simulated hosts in network namespaces share a machine and its cores), else
        the host itself."""
        records = {r["rank"]: r for r in self.topology.get("ranks", [])}
        hosts = self.host_of()
        out = []
        for rank in range(self.world_size):
            name = records.get(rank, {}).get("hostname", "")
            out.append(name if name and not name.startswith("unplaced") else hosts[rank])
        return out

    def cores_of_machine(self, machine: str) -> int:
        hosts = {h for h, m in zip(self.host_of(), self.machine_of()) if m == machine}
        return max(self.cores_per_host[h] for h in hosts)

    def compute_share_of_rank(self, rank: int) -> float:
        """Ranks per core on `rank`'s machine (>= 1): compute time scales by it."""
        machine = self.machine_of()
        n = machine.count(machine[rank])
        return max(1.0, n / max(1, self.cores_of_machine(machine[rank])))

    def compute_factor(self, machine: str, active: float, profile_rep_s=None) -> float:
        """How much longer compute takes on `machine` than in the one-process profile when
        `active` of its ranks compute at once. Calibrated: calibrate.py's seconds per
        repetition with that many ranks active (interpolated) over the profile's own
        (`profile_rep_s`, timed alone while it ran). Described: active ranks per core (>= 1)."""
        rep = self._table("rep_s")
        if rep and profile_rep_s:
            return _interpolate(rep, active) / profile_rep_s
        return max(1.0, active / max(1, self.cores_of_machine(machine)))

    def optimizer_factor(self, profile_s_per_element=None) -> Optional[float]:
        """How much longer the optimizer's per-element update takes at a step's end, every
        rank of the machine updating at once, than in the profile alone: calibrate.py's
        opt_elem_s over the profile's own per-element time. None when not calibrated (the
        cost model then takes the compute factor of all ranks busy)."""
        cal = (self.calibration or {}).get("opt_elem_s")
        if not cal or not profile_s_per_element:
            return None
        return float(cal) / profile_s_per_element

    def collective_overhead(self, group_size: int, async_op: bool = False, machine_ranks: int = 1) -> float:
        """Measured cost of one collective call beyond the tuner's price (0 when not
        measured): calibrate.py's burst of tiny calls in groups of `group_size` with every
        rank running (`call_s` / `call_async_s`, interpolated between the sizes measured).
        A file written before those existed has only the residual tables `coll_s` /
        `coll_async_s` by ranks active, read at all `machine_ranks` of the machine."""
        table = self._table("call_async_s" if async_op else "call_s") or self._table("call_s")
        if table:
            return _interpolate(table, group_size)
        table = self._table("coll_async_s" if async_op else "coll_s") or self._table("coll_s")
        return _interpolate(table, max(group_size, machine_ranks)) if table else 0.0

    def message_overhead(self) -> float:
        """Seconds a pipeline message takes to reach a rank waiting for it, beyond the
        tuner's price (calibrate.py's message_s); a file calibrated before that was measured
        gives the async call overhead of a 2-rank group, as the model charged before; 0
        when not measured (a described cluster)."""
        cal = self.calibration or {}
        if "message_s" in cal:
            return float(cal["message_s"])
        return self.collective_overhead(2, async_op=True)

    def post_overhead(self) -> float:
        """Seconds a rank spends posting one point-to-point send or receive (calibrate.py's
        post_s); 0 when not measured (a described cluster)."""
        return float((self.calibration or {}).get("post_s", 0.0))

    def _table(self, name):
        cal = self.calibration or {}
        return {int(k): float(v) for k, v in (cal.get(name) or {}).items()}

    def memory_budget(self) -> int:
        """Default per-rank budget: each host's memory divided by its ranks, the smallest."""
        return min(self.memory_per_host[h["name"]] // len(h["ranks"]) for h in self.hosts)

    def summary(self) -> str:
        sizes = "+".join(str(len(h["ranks"])) for h in self.hosts)
        racks = {h.get("rack") or "" for h in self.hosts}
        links = ", ".join(f"{k} {1e-9 / v['beta']:.3g} GB/s" for k, v in self.topology["links"].items()
                          if v.get("beta"))
        return (f"{self.world_size} ranks on {len(self.hosts)} host(s) [{sizes}]"
                + (f" in {len(racks)} racks" if len(racks) > 1 else "")
                + f"; cores/host {sorted(set(self.cores_per_host.values()))}; links: {links}"
                + (f"; measured compute slowdown {self._slowdowns()}, collective overhead "
                   f"{max((self._table('call_s') or self._table('coll_s')).values(), default=0) * 1e3:.2f} ms at most"
                   if self._table("rep_s") else "") + f" ({self.origin})")

    def _slowdowns(self) -> str:
        rep = self._table("rep_s")
        return " ".join(f"{k}:{rep[k] / rep[min(rep)]:.2f}" for k in sorted(rep)) + " (active ranks: x alone)"

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_hosts(cls, sizes, racks=None, links=None, cores=None, memory=None, origin="described"):
        """Hosts of `sizes` ranks (contiguous numbering), optionally in racks (a rack label per host)."""
        from hcomm.topology import load

        hosts, start = [], 0
        for i, n in enumerate(sizes):
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"every host needs at least one rank, got sizes {list(sizes)}")
            host = {"name": f"host{i}", "ranks": list(range(start, start + n))}
            if racks:
                host["rack"] = racks[i]
            hosts.append(host)
            start += n
        desc = {"hosts": hosts}
        if links:
            desc["links"] = links
        topo = load(desc)
        names = [h["name"] for h in hosts]
        return cls(topo, {n: cores for n in names} if cores else {}, {n: memory for n in names} if memory else {},
                   origin)

    @classmethod
    def describe(cls, text: str) -> "Cluster":
        """A cluster from words; see the module docstring for the forms understood."""
        t = " ".join(text.lower().replace("×", "x").split())
        sizes, racks = _parse_shape(t, text)
        links = {}
        for cls_name, where in (("tcp", "hosts"), ("rack", "racks")):
            m = re.search(r"([\d.]+)\s*([kmgt])bit/?s?\s+between\s+" + where, t)
            if m:
                rate = float(m.group(1)) * _RATE_UNITS[m.group(2)] / 8     # bytes/s
                links[cls_name] = {"alpha": _ALPHA[cls_name], "beta": 1.0 / rate}
        cores = re.search(r"(\d+)\s*cores?\s+per\s+host", t)
        mem = re.search(r"([\d.]+)\s*(g|m)i?b\s+per\s+host", t)
        memory = int(float(mem.group(1)) * (1 << 30 if mem.group(2) == "g" else 1 << 20)) if mem else None
        return cls.from_hosts(sizes, racks, links or None, int(cores.group(1)) if cores else None, memory,
                              origin=f"described: {text}")

    @classmethod
    def from_file(cls, path, cores=None, memory=None) -> "Cluster":
        """A topology file (HCOMM_TOPO_FILE format, or a dump written by HCOMM_TOPO_DUMP_FILE)."""
        from hcomm.topology import load

        if not os.path.exists(path):
            raise ValueError(f"topology file {path!r} does not exist")
        with open(path) as f:
            raw = json.load(f)
        topo = load(distinct_hosts(raw))
        names = [h["name"] for h in topo["hosts"]]
        cal = raw.get("planner")     # hcomm's loader keeps only its own sections
        if cores is None:
            cores = (cal or {}).get("cores") or _cores_from_ranks(topo)
        return cls(topo, {n: cores for n in names} if cores else {}, {n: memory for n in names} if memory else {},
                   origin=f"file {path}" + (" (calibrated)" if cal else ""), calibration=cal)

    @classmethod
    def detect(cls, world_size: int, timeout: float = 120) -> "Cluster":
        """`world_size` ranks on this machine: started by calibrate.py, which dumps hcomm's
        topology (probe, fitted links) and measures the compute share and collective
        wake-up cost on them."""
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        proc = subprocess.run([sys.executable, "-m", "hcomm.parallel.plan.calibrate", "--np", str(world_size)],
                              capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        if proc.returncode:
            raise RuntimeError(f"detecting {world_size} local ranks failed:\n{proc.stderr[-2000:]}")
        topo = json.loads(proc.stdout[proc.stdout.index("{"):])
        cal = topo.pop("planner")
        names = [h["name"] for h in topo["hosts"]]
        return cls(topo, {n: cal["cores"] for n in names}, {}, origin="detected (hcomm probe, calibrated)",
                   calibration=cal)


def _interpolate(table: Dict[int, float], x: float) -> float:
    """table[k] at a fractional k: linear between neighbouring keys, flat outside."""
    keys = sorted(table)
    if x <= keys[0]:
        return table[keys[0]]
    if x >= keys[-1]:
        return table[keys[-1]]
    lo = max(k for k in keys if k <= x)
    hi = min(k for k in keys if k >= x)
    if hi == lo:
        return table[lo]
    return table[lo] + (table[hi] - table[lo]) * (x - lo) / (hi - lo)


def distinct_hosts(raw: dict) -> dict:
    """A topology dump whose hosts share a name (network-namespace hosts on one machine:
    the dump names hosts by hostname) with the hosts numbered apart ("vm#0", "vm#1").
    hcomm's loader places ranks by host name, so without this the dump of a namespace
    cluster loads back as one host and every link prices as shared memory."""
    names = [h["name"] for h in raw.get("hosts", [])]
    if len(set(names)) == len(names):
        return raw
    out = dict(raw, hosts=[dict(h, name=f"{h['name']}#{i}") for i, h in enumerate(raw["hosts"])])
    out.pop("planner", None)
    return out


def _cpu_count(text):
    n = 0
    for part in filter(None, str(text).split(",")):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def _cores_from_ranks(topo) -> Optional[int]:
    """Cores per machine from the probe records (a dump has them; a hand-written file not)."""
    counts = [_cpu_count(r["cpus"]) for r in topo.get("ranks", []) if r.get("cpus")]
    return max(counts) if counts else None


def _parse_shape(t, original):
    m = re.search(r"(\d+)\s*racks?\s*x\s*(\d+)\s*hosts?\s*x\s*(\d+)\s*ranks?", t)
    if m:
        r, h, n = map(int, m.groups())
        return [n] * (r * h), [f"rack{i // h}" for i in range(r * h)]
    m = re.search(r"(\d+)\s*hosts?\s*x\s*(\d+)\s*ranks?", t)
    if m:
        h, n = map(int, m.groups())
        return [n] * h, None
    m = re.search(r"hosts?\s+of\s+(\d+(?:\s*\+\s*\d+)*)\s*ranks?", t)
    if m:
        return [int(x) for x in m.group(1).split("+")], None
    m = re.search(r"(\d+)\s*ranks?", t)
    if m and "host" not in t:
        return [int(m.group(1))], None
    raise ValueError(f"cannot read a cluster from {original!r}; examples: '2 hosts x 4 ranks, 1 Gbit/s between "
                     f"hosts, 2 cores per host', '4 racks x 2 hosts x 4 ranks', 'hosts of 3+1 ranks', '4 ranks'")
