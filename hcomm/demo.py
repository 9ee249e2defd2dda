"""`make demo`: the main job on a fresh machine.

1. correctness: a 4-rank allreduce of every algorithm against numpy (random data,
   odd sizes, float32 and bfloat16-free dtypes);
2. speed: an hcomm-bench sweep on 4 local ranks, side by side with Gloo and Open MPI.
Each part prints its own table; the run ends with a one-line summary per part.
"""
import argparse
import multiprocessing as mp
import sys
import time

import numpy as np

RANKS = 4


def _check_rank(rank, size, uid, q):
    import hcomm

    comm = hcomm.init(rank=rank, size=size, unique_id=uid)
    rows = []
    for algo in ("ring", "tree", "halving_doubling"):
        for dtype, count in (("float32", 1), ("float32", 100_003), ("float64", 4_000_037), ("int32", 777)):
            inputs = [np.random.default_rng([r, count]).standard_normal(count).astype(dtype) * 10
                      for r in range(size)]
            x = inputs[rank].copy()
            t = time.perf_counter()
            comm.allreduce(x, algo=algo)
            dt = time.perf_counter() - t
            expected = np.sum(np.stack([i.astype(np.float64) for i in inputs]), axis=0)
            err = float(np.max(np.abs(x - expected) / (1 + np.abs(expected)))) if count else 0.0
            rows.append((algo, dtype, count, err, dt))
    comm.close()
    q.put((rank, rows))


def correctness(ranks):
    import hcomm

    uid = hcomm.get_unique_id()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_check_rank, args=(r, ranks, uid, q)) for r in range(ranks)]
    for p in procs:
        p.start()
    results = dict(q.get(timeout=300) for _ in procs)
    for p in procs:
        p.join()
    print(f"{'algorithm':>18} {'dtype':>8} {'count':>9} {'max rel err':>12} {'time (ms)':>10}")
    ok = True
    for i, (algo, dtype, count, _, _) in enumerate(results[0]):
        err = max(results[r][i][3] for r in results)
        dt = max(results[r][i][4] for r in results)
        tol = 1e-5 if dtype == "float32" else 1e-12 if dtype == "float64" else 0
        ok &= err <= tol
        print(f"{algo:>18} {dtype:>8} {count:>9} {err:>12.2e} {dt * 1e3:>10.2f}")
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=RANKS)
    ap.add_argument("--maxbytes", default="64M")
    args = ap.parse_args(argv)
    summary = []
    print(f"== 1. {args.ranks}-rank allreduce against numpy ==")
    ok = correctness(args.ranks)
    summary.append(("allreduce correctness", "ok" if ok else "WRONG RESULTS"))
    print(f"\n== 2. hcomm-bench allreduce, {args.ranks} ranks, with Gloo and Open MPI ==")
    from hcomm.bench import main as bench_main

    rc = bench_main(["allreduce", "--ranks", str(args.ranks), "-b", "4K", "-e", args.maxbytes, "-f", "16",
                     "-n", "10", "-w", "3", "--compare", "gloo,mpi"])
    summary.append(("allreduce sweep with peers", "ok" if not rc else f"exit code {rc}"))
    print("\n== summary ==")
    for name, state in summary:
        print(f"  {name:<32} {state}")
    return 0 if all(s == "ok" for _, s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
