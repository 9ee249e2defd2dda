"""One call against a stream of calls: what each rank spends on a latency-bound
collective when its calls are aligned by a barrier (the latency the tuner's model
prices) and when they run back to back (what tuner_validation.py times: 20 calls a
pass, so one call's tail overlaps the next one's head).

    sudo .venv/bin/python benchmarks/tuner_call_vs_stream.py --layout 2x2 --rate 10gbit \
        --collective broadcast --size 8 --algos binomial,hierarchical

Per pass and algorithm, every rank's mean per call in both regimes (us), interleaved
(A stream, A aligned, B stream, B aligned, ...). Broadcast is from rank 1, as in
tuner_validation.py. Found with it (docs/tuner.md, round 7): on 2 x 2, broadcast of 8 B
takes about as long aligned either way, but in a stream hierarchical's slowest rank
spends 17-20 us a call against binomial's 8-15.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from hierarchical_cluster import _last_json  # noqa: E402  (namespace set-up reused, not copied)
from tuner_validation import BCAST_ROOT, LAYOUTS, _call, aligned  # noqa: E402


def _per_call(comm, call, calls, is_aligned):
    """This rank's mean seconds per call: back to back, or each call after a barrier
    (the barrier's own time left out; tuner_validation.aligned, which warms first)."""
    comm.barrier()
    if is_aligned:
        return aligned(comm, call, calls)
    t0 = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - t0) / calls


def worker(collective, nbytes, algos, calls, passes):
    import numpy as np

    import hcomm

    comm = hcomm.init(timeout=300)
    out = {}
    for _ in range(passes):
        for algo in algos:
            call = _call(comm, collective, nbytes, algo)
            for regime in ("stream", "aligned"):
                t = np.zeros(comm.size)
                t[comm.rank] = _per_call(comm, call, calls, regime == "aligned")
                comm.allreduce(t, op="sum")  # every rank's time, gathered
                out.setdefault(f"{algo} {regime}", []).append([round(float(v) * 1e6, 1) for v in t])
    rank = comm.rank
    comm.close()
    if rank == 0:
        print(json.dumps(out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", default="2x2", choices=tuple(LAYOUTS))
    p.add_argument("--rate", default="10gbit")
    p.add_argument("--collective", default="broadcast", choices=("allreduce", "reduce_scatter", "allgather", "broadcast"))
    p.add_argument("--size", type=int, default=8, help="bytes, as tuner_validation.py counts them")
    p.add_argument("--algos", default="binomial,hierarchical")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    algos = args.algos.split(",")
    if args.calls < 1 or args.passes < 1:
        raise SystemExit(f"tuner_call_vs_stream: --calls {args.calls} and --passes {args.passes} must be >= 1")
    if args.worker:
        return worker(args.collective, args.size, algos, args.calls, args.passes)
    from hcomm.topology import NetnsCluster, wait_all

    reason = NetnsCluster.unavailable()
    if reason:
        raise SystemExit(f"tuner_call_vs_stream: {reason}")
    argv = [sys.executable, os.path.abspath(__file__), "--worker", "--collective", args.collective,
            "--size", str(args.size), "--algos", args.algos, "--calls", str(args.calls), "--passes", str(args.passes)]
    env = dict(os.environ, PYTHONPATH=ROOT, HCOMM_DRIFT="0")
    per_host = LAYOUTS[args.layout]
    print(f"{args.collective} {args.size} B on {args.layout} at {args.rate} (root {BCAST_ROOT} for broadcast); "
          f"load {os.getloadavg()[0]:.1f}; us a call per rank, one list per pass")
    with NetnsCluster(len(per_host), rate=args.rate, prefix=f"cs{os.getpid() % 100000}") as cluster:
        result = _last_json(wait_all(cluster.launch(per_host, argv, env=env), 300), f"{args.layout} {args.rate}")
    for key, rows in result.items():
        slowest = [max(r) for r in rows]
        print(f"  {key:28s} slowest rank {min(slowest):.1f}-{max(slowest):.1f}  per rank {rows}")


if __name__ == "__main__":
    main()
