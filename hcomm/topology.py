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

# Collectives the tuner chooses for, with the algorithms it models (plus "native", MPI's
# own, listed on a communicator launched under MPI); the others have one algorithm each.
# The tuned collectives' candidates, from the core's one table of names (csrc/algo/names.h):
# "native" is left out (planning adds it where MPI is present) and so are aliases.
_TUNED_NAMES = {c: tuple(a for a in names if a != "native" and not (a == "tree" and c in ("broadcast", "reduce")))
                for c, names in _C.algorithms().items()
                if c in ("allreduce", "broadcast", "allgather", "reduce_scatter", "reduce", "gather", "scatter",
                         "alltoall")}
ALLREDUCE_ALGOS = _TUNED_NAMES["allreduce"]
BROADCAST_ALGOS = _TUNED_NAMES["broadcast"]  # "tree" is accepted for binomial
ALLGATHER_ALGOS = _TUNED_NAMES["allgather"]
ALGOS = _TUNED_NAMES
TUNED = tuple(ALGOS)

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
    measured: float = None    # seconds: this communicator's recent calls (drift), or explain(measure=True)


@dataclass(frozen=True)
class Explanation:
    collective: str
    nbytes: int
    world: int
    hosts: int
    candidates: tuple
    chosen: str
    why: str                  # "model", "HCOMM_ALGO" or "requested"
    domains: int = 0          # GPU domains of the ranks (nvlink link class inside one)
    dtype: str = "float32"    # reductions of 16-bit dtypes fold in float32 (priced so)
    memory: str = "host"      # the buffers the table is for: "host", "cuda:N", "npu:N"

    def candidate(self, algo):
        for c in self.candidates:
            if c.algo == algo:
                return c
        raise KeyError(algo)

    def __str__(self):
        gpu = f", {self.domains} GPU domain(s)" if self.domains else ""
        lines = [f"{self.collective} {human_bytes(self.nbytes)} {self.dtype} in {self.memory} buffers "
                 f"on {self.world} ranks, {self.hosts} host(s){gpu}: "
                 f"{self.chosen} ({self.why})"]
        measured = any(c.measured is not None for c in self.candidates)
        width = max(len(c.algo) + (len(c.inner) + 2 if c.inner else 0) for c in self.candidates) + 2
        head = f"  {'algorithm':<{width}}{'predicted':>12}{'segment':>10}" + (f"{'measured':>12}" if measured else "")
        lines.append(head)
        for c in self.candidates:
            algo = c.algo + (f"({c.inner})" if c.inner else "")
            seg = human_bytes(c.seg_bytes or c.inner_seg_bytes) if (c.seg_bytes or c.inner_seg_bytes) else "-"
            row = f"  {algo:<{width}}{_human_time(c.seconds):>12}{seg:>10}"
            if measured:
                row += f"{_human_time(c.measured):>12}"
            if c.algo == self.chosen:
                row += "   <- chosen"
            elif c.algo == "native" and not c.applicable:
                row += "   (MPI's own: not measured or not allowed here; used when forced)"
            elif c.algo == "native" and c.inner in ("nccl", "hccl"):
                row += f"   ({c.inner.upper()}'s own, priced as measured at set-up)"
            elif c.algo == "native":
                row += "   (MPI's own, timed at init)"
            elif not c.applicable:
                row += "   (one level: same as flat)"
            lines.append(row)
        return "\n".join(lines)


def _explanation(collective, nbytes, d, world, hosts, domains=0, dtype="float32"):
    cands = tuple(Candidate(c["algo"], c["seconds"], c["seg_bytes"], c["inner"], c["inner_seg_bytes"],
                            c["applicable"], c["measured"] if c.get("measured", -1) >= 0 else None)
                  for c in d["candidates"])
    return Explanation(collective, nbytes, world, hosts, cands, d["chosen"], d["why"], domains, dtype,
                       d.get("memory", "host"))


def gpu_domains(topo):
    """{(host name, domain label): [ranks]} from a topology dict's hosts' "gpus" lists:
    the ranks on GPUs joined by NVLink / one NVSwitch fabric (or on one GPU)."""
    out = {}
    for h in topo["hosts"]:
        for g in h.get("gpus", ()):
            out.setdefault((h["name"], g["domain"]), []).extend(g["ranks"])
    return {k: sorted(v) for k, v in out.items()}


def _domain_count(topo, ranks):
    chosen = set(ranks)
    return sum(1 for members in gpu_domains(topo).values() if chosen & set(members))


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


def explain(collective, nbytes, comm=None, topology=None, algo=None, ranks=None, measure=False, iters=3, root=0,
            dtype="float32", device=None):
    """The tuner's table for `collective` (see TUNED) of `nbytes` (allgather: the gathered
    total; reduce_scatter: the whole input; gather/scatter: one rank's block; alltoall:
    what one rank sends): every candidate with its predicted time, the choice marked.
    From a communicator (comm=) or a described topology (topology= dict / JSON / path,
    optionally a subset of its ranks). root: the rooted collectives' root. dtype: a
    reduction of float16/bfloat16 (or any float under HCOMM_DETERMINISTIC=1) is priced
    as the rank-order fold it runs. measure=True (with comm, every rank calls) times
    each candidate too, in that dtype. device (with comm): explain calls on the
    communicator's device buffers (True) or host buffers (False); by default device
    buffers when it holds a device engine (NCCL, HCCL: the calls it was made for), host
    ones otherwise (host with measure=True, which times host buffers). The table's
    `memory` ("host", "cuda:0", "npu:1") says which."""
    _check_collective(collective)
    nbytes = parse_size(nbytes)
    if dtype not in _DTYPE_ITEMSIZE:
        raise InvalidArgument(f"explain: unknown dtype {dtype!r} ({', '.join(_DTYPE_ITEMSIZE)})")
    if (comm is None) == (topology is None):
        raise InvalidArgument("explain needs exactly one of comm= or topology=")
    names = ALGOS[collective] + (("tree",) if collective in ("broadcast", "reduce") else ())
    if algo is not None and algo not in ("auto", "native") + names:
        raise InvalidArgument(f"unknown {collective} algorithm {algo!r} ({', '.join(ALGOS[collective])}, auto)")
    if device is not None and not isinstance(device, bool):
        raise InvalidArgument(f"explain: device must be True, False or None (the default), not {device!r}")
    if device is not None and comm is None:
        raise InvalidArgument("explain(device=...) describes a communicator's calls: it needs comm=")
    if comm is not None:
        if device and not comm._c.device_engine():
            raise InvalidArgument("explain(device=True): this communicator has made no collective on device buffers "
                                  "yet (its device, routes and engine are set up at the first one)")
        if device and measure:
            raise InvalidArgument("explain(measure=True) times host buffers; it cannot measure device=True")
        if measure:
            device = False
        d = _C._comm_explain(comm._c, collective, nbytes, algo or "", int(root), dtype,
                             -1 if device is None else int(device))
        topo = globals()["topology"](comm)
        members = [topo["ranks"][w] for w in comm._c.world_ranks()]
        hosts = len({m["host_id"] or m["host"] for m in members})
        out = _explanation(collective, nbytes, d, comm.size, hosts, _domain_count(topo, comm._c.world_ranks()), dtype)
        return _measured(comm, out, iters, root) if measure else out
    if measure:
        raise InvalidArgument("explain(measure=True) needs comm=")
    topo = load(topology)
    ranks = list(range(len(topo["ranks"]))) if ranks is None else [int(r) for r in ranks]
    d = _C._explain_on(json.dumps(topo), collective, nbytes, algo or "", ranks, int(root), dtype)
    hosts = len({topo["ranks"][r]["host_id"] or topo["ranks"][r]["host"] for r in ranks})
    return _explanation(collective, nbytes, d, len(ranks), hosts, _domain_count(topo, ranks), dtype)


_DTYPE_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int32": 4,
                   "int64": 8}


def _calls(comm, collective, nbytes, algo, root, dtype):
    """One blocking call of `collective` moving nbytes of `dtype` (as explain() counts
    them) through the core with `algo` forced: the timed body of time_collective."""
    import numpy as np

    item, n, c = _DTYPE_ITEMSIZE[dtype], comm.size, comm._c
    count = max(1, nbytes // item)             # allreduce, broadcast, reduce; gather/scatter's block
    per = max(1, count // n)                   # one block of the collectives that cut the buffer in n
    a, b = np.ones(count * n * item, np.uint8), np.ones(count * n * item, np.uint8)  # raw bytes
    pa, pb = a.ctypes.data, b.ctypes.data
    displs = [i * per for i in range(n)]
    env = f"{collective}:{algo}" if algo else None  # gather/scatter take their algorithm from HCOMM_ALGO
    calls = {
        "allreduce": lambda: c.allreduce(pa, pa, count, dtype, "sum", 1.0, algo, False),
        "broadcast": lambda: c.broadcast(pa, pa, count, dtype, root, algo, False),
        "reduce": lambda: c.reduce(pa, pb, count, dtype, "sum", 1.0, root, algo, False),
        "allgather": lambda: c.allgatherv(pa, pb, [per] * n, dtype, algo, False),
        "reduce_scatter": lambda: c.reduce_scatterv(pa, pb, [per] * n, dtype, "sum", 1.0, algo, False),
        "alltoall": lambda: c.alltoallv(pa, [per] * n, displs, pb, [per] * n, displs, dtype, algo, False),
        "gather": lambda: _with_env("HCOMM_ALGO", env, lambda: c.gather(pa, pb, count, dtype, root, False)),
        "scatter": lambda: _with_env("HCOMM_ALGO", env, lambda: c.scatter(pa, pb, count, dtype, root, False)),
    }
    call = calls[collective]
    return lambda buffers=(a, b): call()  # the arrays live as long as the call does


def _with_env(name, value, fn):
    """fn() with os.environ[name] = value (unchanged when value is None)."""
    if value is None:
        return fn()
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        return fn()
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def time_collective(comm, collective, nbytes, algo, iters=3, root=0, dtype="float32"):
    """Median seconds of `collective` of nbytes (as explain() counts them) with `algo`
    forced, the slowest rank's view (every rank calls)."""
    import numpy as np

    call = _calls(comm, collective, nbytes, algo, root, dtype)
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


def time_allreduce(comm, nbytes, algo, iters=3):
    """Median seconds of an allreduce of nbytes (float32) with `algo` forced, the slowest
    rank's view (every rank calls)."""
    return time_collective(comm, "allreduce", nbytes, algo, iters)


def _measured(comm, explanation, iters, root=0):
    cands = tuple(replace(c, measured=time_collective(comm, explanation.collective, explanation.nbytes, c.algo,
                                                      iters, root, explanation.dtype))
                  for c in explanation.candidates)
    return replace(explanation, candidates=cands)


def probe_sys(sys_root, cpus):
    """NICs and NUMA node as read from a (possibly fabricated) /sys tree, for `cpus`."""
    return json.loads(_C._probe_sys(str(sys_root), [int(c) for c in cpus]))


def probe_local():
    """This process's own probe (hostname, NUMA, CPUs, NICs, GPUs)."""
    return json.loads(_C._probe_local())


def _domain_lines(host):
    """One line per GPU domain of a host: its GPUs and the ranks on each."""
    by_domain = {}
    for g in host.get("gpus", ()):
        by_domain.setdefault(g["domain"], []).append(g)
    return [f"    gpu domain {d}: " + ", ".join(f"gpu{g['index']} (ranks {', '.join(map(str, g['ranks']))})"
                                               for g in gs)
            for d, gs in sorted(by_domain.items())]


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
            lines.extend(_domain_lines(h))
            numa = {}
            for m in members:
                numa.setdefault(m["numa"], []).append(m)
            for node, ms in sorted(numa.items()):
                lines.append(f"    numa {node if node >= 0 else '?'}")
                for m in ms:
                    gpus = ", ".join(f"gpu{g['index']} {g['bus_id']}" + (f" nvlink->{len(g['nvlink_peers'])}"
                                                                          if g["nvlink_peers"] else "")
                                     + (" nvswitch" if g["nvswitch"] else "") for g in m["gpus"])
                    uses = f"  uses gpu{m['gpu']}" if m.get("gpu", -1) >= 0 else ""
                    lines.append(f"      rank {m['rank']}  cpus {m['cpus'] or '?'}{uses}" + (f"  [{gpus}]" if gpus else ""))
    lines.append(f"  {'link':<6}{'alpha':>12}{'beta (GB/s)':>14}  source")
    for name, c in topo["links"].items():
        gbs = 1e-9 / c["beta"] if c["beta"] > 0 else float("inf")
        lines.append(f"  {name:<6}{_human_time(c['alpha']):>12}{gbs:>14.3f}  {c['source']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- simulated cluster

class NetnsCluster:
    """N network namespaces standing in for N hosts, for tests and benchmarks.

    Layout: a hub namespace holds a bridge; host h is namespace <prefix>h with one veth
    (v<h>, address 10.<net>.0.<h+1>/24) whose far end sits on the hub's bridge. Each
    direction of every host link is rate-limited with tc tbf (this kernel has no
    netem, so no delay). Ranks started in a namespace see a different network namespace
    and so a different host identity (topo/host.h): they talk tcp to other hosts and
    shared memory inside their own. Traffic stays between these namespaces.

        with NetnsCluster(2, rate="1gbit") as c:
            procs = [c.popen(h, [sys.executable, "worker.py"]) for h in (0, 0, 1, 1)]

    Everything is torn down on exit, also after a failure half-way through setup.
    Needs root and iproute2: see NetnsCluster.unavailable()."""

    def __init__(self, hosts, rate="1gbit", net=231, prefix=None, root_link=False, racks=None, rack_rate="100mbit"):
        if not isinstance(hosts, int) or hosts < 1:
            raise InvalidArgument(f"hosts must be a positive int, got {hosts!r}")
        # racks: each host's rack (0, 1, ...): one bridge per rack ("top-of-rack switch"),
        # the bridges chained by veth links shaped at rack_rate. None: one bridge.
        if racks is not None and (len(racks) != hosts or sorted(set(racks)) != list(range(max(racks) + 1))):
            raise InvalidArgument(f"racks must give each of the {hosts} hosts a rack 0, 1, ..., got {racks!r}")
        self.racks, self.rack_rate = list(racks) if racks else [0] * hosts, rack_rate
        if not 0 <= int(net) <= 255:
            raise InvalidArgument(f"net must be in 0..255 (the second octet of 10.x.0.0/24), got {net!r}")
        self.hosts, self.rate, self.net = hosts, rate, int(net)
        # root_link: the calling namespace joins the bridge too (unshaped, at .254), for
        # launchers whose daemons must call home (mpirun's rsh-started orteds).
        self.root_link = root_link
        self.prefix = prefix or f"hc{os.getpid() % 100000}"
        self._created = []   # namespaces, deleted in reverse order

    @staticmethod
    def unavailable():
        """Why a cluster cannot be built here (None when it can)."""
        import shutil

        if os.geteuid() != 0:
            return "network namespaces need root"
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                return f"'{tool}' (iproute2) is not installed"
        return None

    def namespace(self, h):
        return f"{self.prefix}h{h}"

    def address(self, h):
        return f"10.{self.net}.0.{h + 1}"

    def interface(self, h):
        return f"v{h}"

    def _run(self, *argv, ns=None):
        import subprocess

        cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")

    def _shape(self, ns, dev):
        # burst: a few MTU-sized frames at this rate; latency bounds the queue.
        self._run("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rate, "burst", "128kb",
                  "latency", "100ms", ns=ns)

    def __enter__(self):
        reason = self.unavailable()
        if reason:
            raise RuntimeError(f"cannot build a namespace cluster: {reason}")
        try:
            hub = f"{self.prefix}hub"
            self._add_namespace(hub)
            for k in range(max(self.racks) + 1):
                self._run("ip", "link", "add", f"br{k}", "type", "bridge", ns=hub)
                self._run("ip", "link", "set", f"br{k}", "up", ns=hub)
                if k:  # rack k-1's switch to rack k's, shaped both ways
                    self._run("ip", "link", "add", f"up{k}", "type", "veth", "peer", "name", f"dn{k}", ns=hub)
                    for dev, br in ((f"up{k}", f"br{k - 1}"), (f"dn{k}", f"br{k}")):
                        self._run("ip", "link", "set", dev, "master", br, ns=hub)
                        self._run("ip", "link", "set", dev, "up", ns=hub)
                        self._run("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rack_rate, "burst",
                                  "128kb", "latency", "100ms", ns=hub)
            for h in range(self.hosts):
                self._add_host(h, hub)
            if self.root_link:
                self._add_root_link(hub)
        except BaseException:
            self.close()
            raise
        return self

    def _add_namespace(self, ns):
        self._run("ip", "netns", "add", ns)
        self._created.append(ns)
        self._run("ip", "link", "set", "lo", "up", ns=ns)

    def _add_host(self, h, hub):
        ns, dev, port = self.namespace(h), self.interface(h), f"p{h}"
        self._add_namespace(ns)
        self._run("ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port, "netns", hub)
        self._run("ip", "addr", "add", f"{self.address(h)}/24", "dev", dev, ns=ns)
        self._run("ip", "link", "set", dev, "up", ns=ns)
        self._run("ip", "link", "set", port, "master", f"br{self.racks[h]}", ns=hub)
        self._run("ip", "link", "set", port, "up", ns=hub)
        self._shape(ns, dev)     # host -> network
        self._shape(hub, port)   # network -> host

    @property
    def root_address(self):
        return f"10.{self.net}.0.254"

    def _add_root_link(self, hub):
        # The hub end lives in the hub namespace, so deleting the hub removes the pair.
        dev = f"{self.prefix}r"
        self._run("ip", "link", "add", dev, "type", "veth", "peer", "name", "pr", "netns", hub)
        self._run("ip", "addr", "add", f"{self.root_address}/24", "dev", dev)
        self._run("ip", "link", "set", dev, "up")
        self._run("ip", "link", "set", "pr", "master", "br0", ns=hub)
        self._run("ip", "link", "set", "pr", "up", ns=hub)

    def set_rate(self, rate, hosts=None):
        """Change the tc rate of host links mid-run (tc qdisc change), both directions:
        every host's, or those in `hosts`."""
        hub = f"{self.prefix}hub"
        for h in range(self.hosts) if hosts is None else hosts:
            for ns, dev in ((self.namespace(h), self.interface(h)), (hub, f"p{h}")):
                self._run("tc", "qdisc", "change", "dev", dev, "root", "tbf", "rate", rate, "burst", "128kb",
                          "latency", "100ms", ns=ns)

    def popen(self, h, argv, env=None, **kwargs):
        """Start argv inside host h's namespace."""
        import subprocess

        return subprocess.Popen(["ip", "netns", "exec", self.namespace(h)] + list(argv), env=env, **kwargs)

    def close(self):
        import subprocess

        while self._created:  # hosts first, the hub last; deleting a namespace frees its veths
            ns = self._created.pop()
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def __exit__(self, *exc):
        self.close()

    def launch(self, ranks_per_host, argv, env=None, port=None):
        """Start `ranks_per_host` copies of argv in every host namespace (an int: as many
        on each host; a list: that many on host 0, 1, ..., for uneven layouts such as
        [2, 1]), with the torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK,
        LOCAL_WORLD_SIZE, MASTER_ADDR = host 0, MASTER_PORT) set; returns the Popen
        objects by rank (host 0's ranks first)."""
        import subprocess

        per_host = [ranks_per_host] * self.hosts if isinstance(ranks_per_host, int) else list(ranks_per_host)
        if len(per_host) != self.hosts or any(not isinstance(k, int) or k < 1 for k in per_host):
            raise InvalidArgument(f"ranks_per_host must be a positive int or {self.hosts} positive ints, "
                                  f"got {ranks_per_host!r}")
        port = port or 29500 + os.getpid() % 1000
        size = sum(per_host)
        procs = []
        for h, k in enumerate(per_host):
            for local in range(k):
                e = dict(os.environ if env is None else env)
                e.update(RANK=str(len(procs)), WORLD_SIZE=str(size), LOCAL_RANK=str(local),
                         LOCAL_WORLD_SIZE=str(k), MASTER_ADDR=self.address(0), MASTER_PORT=str(port),
                         HCOMM_NETNS_HOST=str(h), GLOO_SOCKET_IFNAME=self.interface(h))
                procs.append(self.popen(h, argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return procs


def wait_all(procs, timeout):
    """(returncode, stdout, stderr) of every process; kills them all past `timeout` s."""
    import subprocess

    deadline = time.monotonic() + timeout
    out = []
    try:
        for p in procs:
            try:
                so, se = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                so, se = p.communicate()
                se += f"\n(killed after {timeout:.0f} s)"
            out.append((p.returncode, so, se))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out
