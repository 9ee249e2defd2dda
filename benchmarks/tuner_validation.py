"""Is the tuner right where it was not fitted? The automatic choice against every forced
algorithm, on simulated clusters of network-namespace "hosts" (hierarchical_cluster.py's
NetnsCluster: a veth per host on one bridge, each direction shaped with tc tbf).

    sudo .venv/bin/python benchmarks/tuner_validation.py --quick          # ~4 min
    sudo .venv/bin/python benchmarks/tuner_validation.py --json out.json  # ~25 min
    sudo .venv/bin/python benchmarks/tuner_validation.py --layouts 2x2 --rates 1gbit \
        --collectives reduce_scatter --sizes 16M,64M --repeats 3         # confirm one point

Grid (full run): layouts 3x1 (three hosts of one rank), 2+1 (an uneven pair: two ranks on
host 0, one on host 1) and 2x2; inter-host links 100 Mbit/s, 1 Gbit/s and 10 Gbit/s;
allreduce, reduce_scatter (the size is the whole input), allgather (the gathered total)
and broadcast (from rank 1, so that a flat tree crosses hosts); sizes 8 B to 64 MiB on a
factor-of-8 ladder (8, 64, 512, 4K, 32K, 256K, 2M, 16M) plus 64M. `--quick`: 1 Gbit/s
only, sizes 8, 4K, 256K, 16M.

Per point: every forced algorithm of the collective and the automatic choice (what it
chose), interleaved (A B C auto A B C auto ...) and rotated each pass so a change in the
machine's load hits every side; each pass is the mean of a few calls back to back, the
slowest rank's; every pass is kept. Calls and passes shrink as the wire time grows (one
pass of one call for 64 MiB at 100 Mbit/s, ~5 s). Each pass of each algorithm (auto
included) is preceded by untimed calls of it at that size (WARM_FIRST before the first
pass, one before the others), so none is timed while its first calls at a size run
slow (calls over WARM_UNDER_S are not warmed).
`--per-call` also times each pass of the points under 32 KiB with a barrier before every
call (one call's latency, what the model prices) and judges the pick on those times too,
beside the back-to-back verdict, which stays the verdict. Each point gets a verdict
(tuner_verdict.py: within 10 %, indistinguishable from the best within the passes'
spread, or missed) for three things judged on the same measurements: the model's pick
(the forced time of the algorithm auto chose), the pick of the model without the
socket-CPU term (the same probed links with sendCpu/recvCpu dropped: the model before
that term, side by side), and auto's own time. Printed per cluster: the load, the probed
link costs, per point the median pass of each algorithm with its range; then counts per
cluster, collective and size band. Drift re-fit is off (HCOMM_DRIFT=0) unless --drift:
this checks the model, and forced calls would otherwise feed re-fits that move the
automatic choice.

Namespaces are named tv<pid>h<k> / tv<pid>hub and removed on exit, on Ctrl-C and on
SIGTERM (which is turned into an exit so the cluster's context manager runs).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from hierarchical_cluster import _last_json, _settle  # noqa: E402  (namespace set-up reused, not copied)
from tuner_verdict import VERDICTS, band, best_forced, counts, median, tally, verdict  # noqa: E402

ALGOS = {"allreduce": ("ring", "tree", "halving_doubling", "hierarchical"),
         "reduce_scatter": ("ring", "direct", "hierarchical"),
         "allgather": ("ring", "hierarchical", "bruck"),
         "broadcast": ("binomial", "hierarchical")}
LAYOUTS = {"3x1": [1, 1, 1], "2+1": [2, 1], "2x2": [2, 2]}
RATES = ("100mbit", "1gbit", "10gbit")
LADDER = "8,64,512,4K,32K,256K,2M,16M,64M"
QUICK = {"rates": "1gbit", "sizes": "8,4K,256K,16M"}
BCAST_ROOT = 1
# --per-call times points under this size also aligned (a barrier before each call): where a
# call lasts 10-400 us, back to back and aligned can rank algorithms differently (round 7).
PER_CALL_UNDER = 32 << 10
# What each verdict judges: the model's pick, the pick without the socket-CPU term, auto's own time.
JUDGES = (("pick", "model's pick"), ("pick_old", "--old-model's pick"), ("pick_no_sock", "without socket CPU"),
          ("auto", "auto's own time"), ("call", "pick, per call"))
# Run in the old build's tree (--old-model): its model's picks from the job's dumped topology.
OLD_PICKS = ("import json, sys, hcomm; d = json.load(open(sys.argv[1])); "
             "print(json.dumps([hcomm.explain(c, b, topology=d['topology'], root=r).chosen for c, b, r in d['points']]))")


def rate_bits(rate):
    """tc's rate string (100mbit, 1gbit, 10gbit) in bit/s."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for u, f in units.items():
        if rate.endswith(u):
            return float(rate[: -len(u)]) * f
    raise ValueError(f"rate {rate!r}: expected a number and kbit, mbit or gbit")


# A point's calls are warmed (untimed calls of the same algorithm and size before each
# pass: WARM_FIRST before the first, one before the others) unless one call lasts this
# long. The first calls of an algorithm at a new size run slow: hierarchical reduce_scatter
# at 64 MiB on 2 x 2 at 1 Gbit/s took 1.1-1.7x its later calls for its first two, so one
# warm call did not help and three did (docs/tuner.md, round 8). That excess (0.1-0.35 s
# there) is under 10 % of a call over 1 s only if it does not grow with the size; 16 and
# 64 MiB at 100 Mbit/s (1.3 and 5.4 s a call) stay cold: warming them would add ~6 min.
WARM_UNDER_S = 1.0
WARM_FIRST = 3


def schedule(nbytes, rate, repeats):
    """(calls per pass, passes, warm-up?) for a point: about 0.1 s of calls a pass, fewer
    passes once a call takes a large fraction of a second. The estimate is the wire time
    of the bytes (or 1 GB/s of memory traffic on fast links), enough to size the loop."""
    est = max(nbytes * 8 / rate_bits(rate), nbytes / 1e9) + 100e-6
    calls = max(1, min(20, int(0.1 / est)))
    passes = repeats if est < 0.05 else max(1, min(repeats, 2)) if est < 0.5 else 1
    return calls, passes, est < WARM_UNDER_S


# ---------------------------------------------------------------- rank side

def _call(comm, collective, nbytes, algo):
    import numpy as np

    c, n = comm._c, comm.size
    if collective == "allgather":
        x = np.ones(max(1, nbytes // 4 // n), np.float32)
        out = np.empty(x.size * n, np.float32)
        return lambda: c.allgatherv(x.ctypes.data, out.ctypes.data, [x.size] * n, "float32", algo, False)
    if collective == "reduce_scatter":
        x = np.ones(max(1, nbytes // 4 // n) * n, np.float32)
        out = np.empty(x.size // n, np.float32)
        return lambda: c.reduce_scatterv(x.ctypes.data, out.ctypes.data, [out.size] * n, "float32", "sum", 1.0,
                                         algo, False)
    x = np.ones(max(1, nbytes // 4), np.float32)
    if collective == "broadcast":
        return lambda: c.broadcast(x.ctypes.data, x.ctypes.data, x.size, "float32", BCAST_ROOT, algo, False)
    return lambda: c.allreduce(x.ctypes.data, x.ctypes.data, x.size, "float32", "sum", 1.0, algo, False)


def _timed(comm, call, calls, warm):
    """This rank's mean seconds per call, the calls back to back (the verdict's timing, as
    nccl-tests and OSU time): one call's tail may overlap the next one's head. warm: the
    untimed calls first."""
    for _ in range(warm):
        call()
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - t0) / calls


def aligned(comm, call, calls):
    """This rank's mean seconds per call with every call after a barrier (the barrier left
    out): one call's latency, what the model prices, with no overlap between calls."""
    call()  # warm, as _timed
    spent = 0.0
    for _ in range(calls):
        comm.barrier()
        t0 = time.perf_counter()
        call()
        spent += time.perf_counter() - t0
    return spent / calls


def _slowest(comm, seconds):
    import numpy as np

    t = np.array([seconds])
    comm.allreduce(t, op="max")
    return float(t[0])


def _point(comm, collective, nbytes, rate, repeats, per_call):
    """Every pass's time of every forced algorithm and of auto at one size (slowest rank);
    with per_call, under PER_CALL_UNDER bytes, each pass also timed aligned (row["aligned"])."""
    calls, passes, warm = schedule(nbytes, rate, repeats)
    row = {"bytes": nbytes, "passes": {}}
    if per_call and nbytes < PER_CALL_UNDER:
        row["aligned"] = {}
    order = ALGOS[collective] + ("",)
    for k in range(passes):
        # Rotated each pass: whichever runs first after a size change meets cold caches
        # and a neighbour's burst alike, not always the same algorithm.
        for algo in order[k % len(order):] + order[:k % len(order)]:
            call = _call(comm, collective, nbytes, algo)
            t = _timed(comm, call, calls, (WARM_FIRST if k == 0 else 1) if warm else 0)
            if not algo:
                row["auto_algo"] = comm._c.last_algorithm()  # before a collective below replaces it
            row["passes"].setdefault(algo or "auto", []).append(_slowest(comm, t))
            if "aligned" in row:
                row["aligned"].setdefault(algo or "auto", []).append(_slowest(comm, aligned(comm, call, calls)))
    return row


def _predicted(comm, collective, nbytes):
    from hcomm import _C

    d = _C._comm_explain(comm._c, collective, nbytes, "", BCAST_ROOT, "float32", -1)  # -1: host buffers here
    return {c["algo"]: c["seconds"] for c in d["candidates"] if c["applicable"]}


def _without_socket_cpu(topo):
    """The job's topology (dump) with the socket-CPU costs dropped: the model before them."""
    return dict(topo, links={k: {f: v for f, v in c.items() if f not in ("send_cpu", "recv_cpu")}
                             for k, c in topo["links"].items()})


def _picks(hcomm, topo, collective, nbytes):
    """What the model decides from the job's dumped topology, with and without the socket
    CPU term (the first must equal what auto ran: a check that the dump is the model's input)."""
    return {key: hcomm.explain(collective, nbytes, topology=t, root=BCAST_ROOT).chosen
            for key, t in (("model", topo), ("no_sock", _without_socket_cpu(topo)))}


def worker(collectives, sizes, rate, repeats, per_call):
    import hcomm

    comm = hcomm.init(timeout=900)
    topo = hcomm.topology.topology(comm)
    out = {}
    for collective in collectives:
        rows = []
        for nbytes in sizes:
            row = _point(comm, collective, nbytes, rate, repeats, per_call)
            row["predicted"] = _predicted(comm, collective, nbytes)
            row["picks"] = _picks(hcomm, topo, collective, nbytes)
            rows.append(row)
        out[collective] = rows
    links = topo["links"]
    rank = comm.rank
    _settle(comm)
    comm.close()
    if rank == 0:
        print(json.dumps({"collectives": out, "links": links, "topology": topo}))


# ---------------------------------------------------------------- driver side

def run_cluster(layout, rate, args, sizes):
    from hcomm.topology import NetnsCluster, wait_all

    per_host = LAYOUTS[layout]
    argv = [sys.executable, os.path.abspath(__file__), "--worker", "--rates", rate,
            "--collectives", ",".join(args.collectives), "--sizes", ",".join(map(str, sizes)),
            "--repeats", str(args.repeats)] + (["--per-call"] if args.per_call else [])
    env = dict(os.environ, PYTHONPATH=ROOT)
    if not args.drift:
        env["HCOMM_DRIFT"] = "0"
    load = [_uptime()]
    with NetnsCluster(len(per_host), rate=rate, prefix=f"tv{os.getpid() % 100000}") as cluster:
        result = _last_json(wait_all(cluster.launch(per_host, argv, env=env), args.timeout), f"{layout} {rate}")
    result["load"] = load + [_uptime()]
    if args.old_model:
        old_picks(result, args.old_model)
    return result


def old_picks(result, tree):
    """Each point's pick by the model of another build (`tree`: a source tree with its
    extension built in place, e.g. main's), from this job's dumped topology: the old and
    the new model judged on the same measurements. Hosts are renamed apart (name#k), as
    an older build keyed a dump's hosts by name alone and the namespace hosts share one."""
    import tempfile

    topo = dict(result["topology"], hosts=[dict(h, name=f"{h['name']}#{k}")
                                            for k, h in enumerate(result["topology"]["hosts"])])
    points = [(c, row["bytes"], BCAST_ROOT) for c, rows in result["collectives"].items() for row in rows]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump({"topology": topo, "points": points}, f)
        f.flush()
        r = subprocess.run([sys.executable, "-c", OLD_PICKS, f.name], cwd=tree, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=os.path.abspath(tree)))
    if r.returncode:
        raise RuntimeError(f"--old-model {tree}: {r.stderr.strip()[-2000:]}")
    picks = iter(json.loads(r.stdout))
    for rows in result["collectives"].values():
        for row in rows:
            row["picks"]["old"] = next(picks)


def _uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def judge(row):
    """The point's verdicts and ratios (tuner_verdict.verdict), one per JUDGES entry."""
    forced = {a: t for a, t in row["passes"].items() if a != "auto"}
    out = {"best": best_forced(forced)}
    out["pick"] = verdict(forced, row["auto_algo"])
    out["pick_no_sock"] = verdict(forced, row["picks"]["no_sock"])
    if "old" in row["picks"]:
        out["pick_old"] = verdict(forced, row["picks"]["old"])
    out["auto"] = verdict(forced, row["auto_algo"], times=row["passes"]["auto"])
    if "aligned" in row:
        per_call = {a: t for a, t in row["aligned"].items() if a != "auto"}
        out["call"] = verdict(per_call, row["auto_algo"])
    return out


def _link_line(name, c):
    sock = (f", socket CPU send {1e-9 / c['send_cpu']:.1f} GB/s recv {1e-9 / c['recv_cpu']:.1f} GB/s a core"
            if c.get("send_cpu") else "")
    path = (f", machine path {1e-9 / c['machine_beta']:.3f} GB/s over the transfers touching it"
            if c.get("machine_beta") else "")
    return f"{name} alpha {c['alpha'] * 1e6:.1f} us, {1e-9 / c['beta']:.3f} GB/s ({c['source']}){sock}{path}"


def _span(ts):
    return f"{median(ts) * 1e3:.3g} [{min(ts) * 1e3:.3g}-{max(ts) * 1e3:.3g}]"


def report_cluster(layout, rate, result):
    """Prints one cluster's points; returns them as dicts for the summary."""
    from hcomm.topology import human_bytes

    points = []
    links = result["links"]
    print(f"\n== {layout} ({'+'.join(map(str, LAYOUTS[layout]))} ranks), links {rate}; load {result['load'][0]}"
          f" -> {result['load'][1]}")
    print("probed: " + "; ".join(_link_line(k, links[k]) for k in ("tcp", "shm")))
    for collective, rows in result["collectives"].items():
        print(f"{collective}: ms per call, median [range] of the passes (slowest rank); verdicts: pick, "
              f"pick without socket CPU, auto's time (w within 10 %, i indistinguishable, m missed)")
        for row in rows:
            j = judge(row)
            p = row["predicted"]
            marks = " ".join(f"{key}={j[key][0][0]}{j[key][1]:.2f}" for key, _ in JUDGES if key in j)
            sanity = "" if row["picks"]["model"] == row["auto_algo"] else f" (dump's model picks {row['picks']['model']})"
            if "aligned" in row:
                print(f"{'per call':>9} " + "  ".join(f"{a} {_span(t)}" for a, t in row["aligned"].items()))
            print(f"{human_bytes(row['bytes']):>9} " + "  ".join(f"{a} {_span(t)}" for a, t in row["passes"].items()) +
                  f" | chose {row['auto_algo']} (pred {p.get(row['auto_algo'], float('nan')) * 1e3:.3g}), "
                  f"without socket CPU {row['picks']['no_sock']}, old model {row['picks'].get('old', '-')}, "
                  f"best {j['best']} | {marks}{sanity}")
            points.append(dict(j, layout=layout, rate=rate, collective=collective, bytes=row["bytes"]))
    return points


def summary(points, judges=JUDGES):
    """Counts of verdicts (within/indistinguishable/missed) per cluster, collective and
    size band, for each judge; then every miss of the model's pick."""
    from hcomm.topology import human_bytes

    judges = [(k, name) for k, name in judges if any(k in p for p in points)]  # only what was judged
    print(f"\n== summary: {'/'.join(VERDICTS)} of {len(points)} points (indistinguishable is not counted as met)")
    groups = (("cluster", lambda p: f"{p['layout']} {p['rate']}"), ("collective", lambda p: p["collective"]),
              ("size band", lambda p: band(p["bytes"])), ("all", lambda p: "all"))
    for title, key in groups:
        tables = {name: tally(points, key, lambda p, k=k: p[k][0] if k in p else "-") for k, name in judges}
        print(f"{title:>12}: " + "".join(f"{name:>22}" for _, name in judges))
        for g in dict.fromkeys(key(p) for p in points):
            print(f"{g:>12}: " + "".join(f"{counts(tables[name][g]):>22}" for _, name in judges))
    for p in points:
        if p["pick"][0] == "missed":
            print(f"missed: {p['layout']} {p['rate']} {p['collective']} {human_bytes(p['bytes'])} "
                  f"{p['pick'][1]:.2f}x the best ({p['pick'][2]})")


def rejudge(path):
    """A saved run (--json) judged again: each point's pick by this build's model,
    re-priced from the cluster's dumped topology, beside the picks the run recorded
    (what auto ran; --old-model's). No processes: a model change is scored on the same
    measurements as the model it replaces."""
    import hcomm

    with open(path) as f:
        raw = json.load(f)
    points = []
    for name, result in raw.items():
        layout, rate = name.split()
        for collective, rows in result["collectives"].items():
            for row in rows:
                forced = {a: t for a, t in row["passes"].items() if a != "auto"}
                now = hcomm.explain(collective, row["bytes"], topology=result["topology"], root=BCAST_ROOT).chosen
                point = {"layout": layout, "rate": rate, "collective": collective, "bytes": row["bytes"],
                         "pick": verdict(forced, now), "pick_ran": verdict(forced, row["auto_algo"])}
                if "old" in row["picks"]:
                    point["pick_old"] = verdict(forced, row["picks"]["old"])
                if "aligned" in row:
                    point["call"] = verdict({a: t for a, t in row["aligned"].items() if a != "auto"}, now)
                points.append(point)
    print(f"{path} judged again")
    summary(points, (("pick", "this build's pick"), ("pick_ran", "the run's pick"), ("pick_old", "--old-model's pick"),
                     ("call", "this build's pick, per call")))


def _exit_on_sigterm(signum, frame):
    raise SystemExit(f"tuner_validation: signal {signum}, cleaning up")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma list of {', '.join(LAYOUTS)}")
    p.add_argument("--rates", default=",".join(RATES), help="tc tbf rates of the host links")
    p.add_argument("--collectives", default=",".join(ALGOS))
    p.add_argument("--sizes", default=LADDER)
    p.add_argument("--repeats", type=int, default=3, help="interleaved passes per point (fewer for slow points)")
    p.add_argument("--quick", action="store_true", help=f"1 Gbit/s only, sizes {QUICK['sizes']}")
    p.add_argument("--drift", action="store_true", help="leave drift re-fit on (HCOMM_DRIFT unset)")
    p.add_argument("--json", help="also write every measured point to this file")
    p.add_argument("--old-model", help="a source tree with its extension built in place (e.g. main's): its "
                                       "model's picks are judged on the same measurements")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per cluster")
    p.add_argument("--rejudge", metavar="JSON", help="judge a saved run (--json) with this build's model; no processes")
    p.add_argument("--per-call", action="store_true",
                   help=f"also time points under {PER_CALL_UNDER} B aligned (a barrier before each call) and judge "
                        "the pick on that too (beside, not instead of, the back-to-back verdict)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rejudge:
        return rejudge(args.rejudge)
    if args.quick:
        args.rates, args.sizes = QUICK["rates"], QUICK["sizes"]
    from hcomm.topology import NetnsCluster, parse_size

    args.collectives = args.collectives.split(",")
    for c in args.collectives:
        if c not in ALGOS:
            raise SystemExit(f"tuner_validation: unknown collective {c!r} ({', '.join(ALGOS)})")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    rates = args.rates.split(",")
    for r in rates:
        rate_bits(r)
    if args.worker:
        return worker(args.collectives, sizes, rates[0], args.repeats, args.per_call)
    layouts = args.layouts.split(",")
    for layout in layouts:
        if layout not in LAYOUTS:
            raise SystemExit(f"tuner_validation: unknown layout {layout!r} ({', '.join(LAYOUTS)})")
    reason = NetnsCluster.unavailable()
    if reason:
        raise SystemExit(f"tuner_validation: {reason}")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    print(f"tuner_validation: {' '.join(sys.argv)}\nload before: {_uptime()}")
    t0 = time.monotonic()
    points, raw = [], {}
    for rate in rates:
        for layout in layouts:
            result = run_cluster(layout, rate, args, sizes)
            raw[f"{layout} {rate}"] = result
            points += report_cluster(layout, rate, result)
            sys.stdout.flush()
    summary(points)
    print(f"load after: {_uptime()}; {time.monotonic() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
