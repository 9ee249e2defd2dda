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
chose), interleaved (A B C auto A B C auto ...) so a change in the machine's load hits
every side; each pass is the mean of a few calls, the slowest rank's; best of the passes.
Calls and passes shrink as the wire time grows (one pass of one call for 64 MiB at
100 Mbit/s, ~5 s). Printed: per point the times, auto/best-forced time ratio (1.00: auto
picked the best; 1.25: 25 % slower than the best forced one), the model's prediction
for the chosen and the best algorithm; then per cluster the points within 10 % and the
worst points. Drift re-fit is off (HCOMM_DRIFT=0) unless --drift: this checks the
model, and forced calls would otherwise feed re-fits that move the automatic choice.

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

ALGOS = {"allreduce": ("ring", "tree", "halving_doubling", "hierarchical"),
         "reduce_scatter": ("ring", "direct", "hierarchical"),
         "allgather": ("ring", "hierarchical", "bruck"),
         "broadcast": ("binomial", "hierarchical")}
LAYOUTS = {"3x1": [1, 1, 1], "2+1": [2, 1], "2x2": [2, 2]}
RATES = ("100mbit", "1gbit", "10gbit")
LADDER = "8,64,512,4K,32K,256K,2M,16M,64M"
QUICK = {"rates": "1gbit", "sizes": "8,4K,256K,16M"}
BCAST_ROOT = 1
WITHIN = 1.10


def rate_bits(rate):
    """tc's rate string (100mbit, 1gbit, 10gbit) in bit/s."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for u, f in units.items():
        if rate.endswith(u):
            return float(rate[: -len(u)]) * f
    raise ValueError(f"rate {rate!r}: expected a number and kbit, mbit or gbit")


def schedule(nbytes, rate, repeats):
    """(calls per pass, passes, warm-up?) for a point: about 0.1 s of calls a pass, fewer
    passes once a call takes a large fraction of a second. The estimate is the wire time
    of the bytes (or 1 GB/s of memory traffic on fast links), enough to size the loop."""
    est = max(nbytes * 8 / rate_bits(rate), nbytes / 1e9) + 100e-6
    calls = max(1, min(20, int(0.1 / est)))
    passes = repeats if est < 0.05 else max(1, min(repeats, 2)) if est < 0.5 else 1
    return calls, passes, est < 0.5


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
    if warm:
        call()
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - t0) / calls


def _point(comm, collective, nbytes, rate, repeats):
    """Best-of-passes time of every forced algorithm and of auto at one size (slowest rank)."""
    import numpy as np

    calls, passes, warm = schedule(nbytes, rate, repeats)
    row = {"bytes": nbytes, "times": {}}
    order = ALGOS[collective] + ("",)
    for k in range(passes):
        # Rotated each pass: whichever runs first after a size change meets cold caches
        # and a neighbour's burst alike, not always the same algorithm.
        for algo in order[k % len(order):] + order[:k % len(order)]:
            t = np.array([_timed(comm, _call(comm, collective, nbytes, algo), calls, warm)])
            if not algo:
                row["auto_algo"] = comm._c.last_algorithm()  # before the max below replaces it
            comm.allreduce(t, op="max")
            key = algo or "auto"
            row["times"][key] = min(row["times"].get(key, float("inf")), float(t[0]))
    return row


def _predicted(comm, collective, nbytes):
    from hcomm import _C

    d = _C._comm_explain(comm._c, collective, nbytes, "", BCAST_ROOT, "float32")
    return {c["algo"]: c["seconds"] for c in d["candidates"] if c["applicable"]}


def worker(collectives, sizes, rate, repeats):
    import hcomm

    comm = hcomm.init(timeout=900)
    out = {}
    for collective in collectives:
        rows = []
        for nbytes in sizes:
            row = _point(comm, collective, nbytes, rate, repeats)
            row["predicted"] = _predicted(comm, collective, nbytes)
            rows.append(row)
        out[collective] = rows
    links = hcomm.topology.topology(comm)["links"]
    rank = comm.rank
    _settle(comm)
    comm.close()
    if rank == 0:
        print(json.dumps({"collectives": out, "links": links}))


# ---------------------------------------------------------------- driver side

def run_cluster(layout, rate, args, sizes):
    from hcomm.topology import NetnsCluster, wait_all

    per_host = LAYOUTS[layout]
    argv = [sys.executable, os.path.abspath(__file__), "--worker", "--rates", rate,
            "--collectives", ",".join(args.collectives), "--sizes", ",".join(map(str, sizes)),
            "--repeats", str(args.repeats)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    if not args.drift:
        env["HCOMM_DRIFT"] = "0"
    with NetnsCluster(len(per_host), rate=rate, prefix=f"tv{os.getpid() % 100000}") as cluster:
        return _last_json(wait_all(cluster.launch(per_host, argv, env=env), args.timeout), f"{layout} {rate}")


def ratio(row):
    """(auto's time over the best forced algorithm's, the same for the forced run of the
    algorithm auto chose, the best's name). 1.0: auto is the best. The second ratio is the
    model's error alone: it leaves out what differs between an automatic call and a
    forced call of the same algorithm (noise, or anything outside the model)."""
    forced = {a: t for a, t in row["times"].items() if a != "auto"}
    best = min(forced, key=forced.get)
    pick = forced.get(row["auto_algo"], row["times"]["auto"])
    return row["times"]["auto"] / forced[best], pick / forced[best], best


def report_cluster(layout, rate, result):
    from hcomm.topology import human_bytes

    points = []
    links = result["links"]
    print(f"\n== {layout} ({'+'.join(map(str, LAYOUTS[layout]))} ranks), links {rate}; tuner's tcp link: "
          f"alpha {links['tcp']['alpha'] * 1e6:.1f} us, {1e-9 / links['tcp']['beta']:.3f} GB/s "
          f"({links['tcp']['source']}); shm {1e-9 / links['shm']['beta']:.2f} GB/s")
    for collective, rows in result["collectives"].items():
        algos = ALGOS[collective]
        print(f"{collective}: time in ms (slowest rank, best of passes); pred = the model's ms for auto's "
              f"choice / for the measured best")
        print(f"{'size':>9} " + " ".join(f"{a[:9]:>9}" for a in algos) +
              f" {'auto':>9} {'auto chose':>17} {'best':>17} {'auto/best':>9} {'pick/best':>9} {'pred':>17}")
        for row in rows:
            r, rp, best = ratio(row)
            t, p = row["times"], row["predicted"]
            pred = f"{p.get(row['auto_algo'], float('nan')) * 1e3:.3g}/{p.get(best, float('nan')) * 1e3:.3g}"
            print(f"{human_bytes(row['bytes']):>9} " + " ".join(f"{t[a] * 1e3:9.3f}" for a in algos) +
                  f" {t['auto'] * 1e3:9.3f} {row['auto_algo']:>17} {best:>17} {r:9.2f} {rp:9.2f} {pred:>17}")
            points.append((r, rp, collective, row["bytes"], row["auto_algo"], best))
    return points


def summary(all_points):
    """Per cluster: points within 10 % by auto's own time and by its pick's forced time,
    and the worst points by the latter (the model's errors)."""
    from hcomm.topology import human_bytes

    print("\n== summary: auto within 10 % of the best forced algorithm (auto's time; its pick's forced time)")
    for (layout, rate), points in all_points.items():
        ok = sum(1 for p in points if p[0] <= WITHIN)
        ok_pick = sum(1 for p in points if p[1] <= WITHIN)
        worst = sorted(points, key=lambda p: p[1], reverse=True)[:3]
        print(f"{layout:>4} {rate:>7}: {ok}/{len(points)}; {ok_pick}/{len(points)} by pick; worst picks " + "; ".join(
            f"{c} {human_bytes(b)} {rp:.2f}x ({a}, best {best}; auto {r:.2f}x)" for r, rp, c, b, a, best in worst))
    total = sum(len(p) for p in all_points.values())
    ok = sum(1 for ps in all_points.values() for p in ps if p[0] <= WITHIN)
    ok_pick = sum(1 for ps in all_points.values() for p in ps if p[1] <= WITHIN)
    print(f"all: {ok}/{total} points within 10 % by auto's time, {ok_pick}/{total} by its pick's forced time")


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
    p.add_argument("--timeout", type=float, default=1200, help="seconds per cluster")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
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
        return worker(args.collectives, sizes, rates[0], args.repeats)
    layouts = args.layouts.split(",")
    for layout in layouts:
        if layout not in LAYOUTS:
            raise SystemExit(f"tuner_validation: unknown layout {layout!r} ({', '.join(LAYOUTS)})")
    reason = NetnsCluster.unavailable()
    if reason:
        raise SystemExit(f"tuner_validation: {reason}")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    print(f"tuner_validation: {' '.join(sys.argv)}\nload before: {uptime()}")
    t0 = time.monotonic()
    all_points, raw = {}, {}
    for rate in rates:
        for layout in layouts:
            result = run_cluster(layout, rate, args, sizes)
            raw[f"{layout} {rate}"] = result
            all_points[(layout, rate)] = report_cluster(layout, rate, result)
            sys.stdout.flush()
    summary(all_points)
    print(f"load after: {uptime()}; {time.monotonic() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
