"""`make demo`: the main job on a fresh machine, in four parts and a summary.

1. topology: what hcomm detects on this machine (hosts, NUMA, NICs, fitted link
   costs) and which allreduce algorithm its tuner picks for 16 MiB on 4 ranks;
2. correctness: a 4-rank allreduce of every algorithm against numpy (random data,
   odd sizes, float32, float64, int32);
3. speed: a short hcomm-bench allreduce sweep on 4 local ranks beside Gloo and Open MPI;
4. training: examples/train_gpt.py on 4 ranks (dp=1 x tp=2 x pp=2, ZeRO-1) over the
   "hcomm" torch backend, its loss curve checked against the single-process run.
Each part prints its own output; the summary table gives each part's verdict, time and
headline numbers. Every part runs in its own processes, so one failing part does not
stop the others. About 2-3 minutes on an idle 2-core machine.
"""
import argparse
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RANKS = 4
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_gpt.py"


# ------------------------------------------------------------------ 1. topology

def topology(ranks, tmp):
    """hcomm-topo on `ranks` local processes: the tree, the alpha/beta table, the choice."""
    cmd = [sys.executable, "-m", "hcomm.topo_cli", "--np", str(ranks), "--explain", "allreduce", "16M"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    print(proc.stdout, end="")
    if proc.returncode:
        print(proc.stderr[-2000:], end="")
        return f"exit code {proc.returncode}", ""
    chosen = re.search(r"^(allreduce .*?): (\S+)", proc.stdout, re.M)
    return "ok", (f"{chosen.group(1)}: {chosen.group(2)}" if chosen else "")


# --------------------------------------------------------------- 2. correctness

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


def correctness(ranks, tmp):
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
    ok, worst = True, 0.0
    for i, (algo, dtype, count, _, _) in enumerate(results[0]):
        err = max(results[r][i][3] for r in results)
        dt = max(results[r][i][4] for r in results)
        tol = 1e-5 if dtype == "float32" else 1e-12 if dtype == "float64" else 0
        ok &= err <= tol
        worst = max(worst, err / tol if tol else (0.0 if err == 0 else float("inf")))
        print(f"{algo:>18} {dtype:>8} {count:>9} {err:>12.2e} {dt * 1e3:>10.2f}")
    return ("ok" if ok else "WRONG RESULTS"), f"{len(results[0])} cases, worst error {worst:.2g} x its tolerance"


# --------------------------------------------------------------------- 3. speed

def _largest_busbw(report):
    """{implementation: (size, out-of-place busbw GB/s)} at the largest size each measured."""
    out = {}
    for name, impl in report.get("implementations", {}).items():
        rows = impl.get("rows") or []
        if impl.get("status") == "ok" and rows:
            out[name] = (rows[-1]["size"], rows[-1]["out_of_place"]["bus_bw"])
    return out


def bench(ranks, tmp, maxbytes="16M"):
    from hcomm.bench import main as bench_main

    path = os.path.join(tmp, "bench.json")
    rc = bench_main(["allreduce", "--ranks", str(ranks), "-b", "4K", "-e", maxbytes, "-f", "16",
                     "-n", "10", "-w", "3", "--compare", "gloo,mpi", "--json", path])
    if not os.path.exists(path):
        return f"exit code {rc}", ""
    with open(path) as f:
        best = _largest_busbw(json.load(f))
    detail = ", ".join(f"{name} {bw:.2f}" for name, (_, bw) in best.items())
    size = max((s for s, _ in best.values()), default=0)
    return ("ok" if not rc else f"exit code {rc}"), f"busbw GB/s at {size >> 20} MiB: {detail}"


# ------------------------------------------------------------------ 4. training

def training(ranks, tmp, steps=10):
    """examples/train_gpt.py under torchrun on the hcomm backend, with --check."""
    if not EXAMPLE.exists():
        return "skipped", f"{EXAMPLE} not found (run from a source checkout)"
    path = os.path.join(tmp, "train.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           str(EXAMPLE), "--backend", "hcomm", "--steps", str(steps), "--check", "--json", path,
           "--set", "tensor_parallel_size=2", "--set", f"pipeline_stages={max(1, ranks // 2)}",
           "--set", "zero_stage=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")   # also silences torchrun's warning about it
    rc = subprocess.run(cmd, env=env, timeout=600).returncode
    if not os.path.exists(path):
        return f"exit code {rc}", ""
    with open(path) as f:
        res = json.load(f)
    lay = res["layout"]
    worst = max(abs(a - b) / abs(b) for a, b in zip(res["losses"], res["reference"]))
    detail = (f"dp={lay['dp']} tp={lay['tp']} pp={lay['pp']} zero={lay['zero_stage']}: loss "
              f"{res['losses'][0]:.3f} -> {res['losses'][-1]:.3f}, {res['tokens_per_s']:,.0f} tokens/s, "
              f"vs single process {worst:.1e} (rtol {res['rtol']:.0e})")
    return ("ok" if rc == 0 and res["ok"] else f"exit code {rc}, check {'ok' if res['ok'] else 'FAILED'}"), detail


# ---------------------------------------------------------------------- main

PARTS = (
    ("topology", "1. topology and the tuner's choice", topology),
    ("allreduce correctness", "2. {ranks}-rank allreduce against numpy", correctness),
    ("allreduce sweep with peers", "3. hcomm-bench allreduce, {ranks} ranks, with Gloo and Open MPI", bench),
    ("3-D training run", "4. GPT training, {ranks} ranks, hcomm backend, checked against one process", training),
)


def _run_part(fn, ranks, tmp):
    try:
        return fn(ranks, tmp)
    except Exception as exc:  # noqa: BLE001 - one part failing must not hide the others
        return f"error: {type(exc).__name__}: {exc}", ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=RANKS)
    ap.add_argument("--skip", default="", help="comma-separated part numbers to leave out, e.g. 3")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    summary, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hcomm-demo-") as tmp:
        for i, (name, title, fn) in enumerate(PARTS, 1):
            if str(i) in skip:
                summary.append((name, "skipped", 0.0, "--skip"))
                continue
            print(f"\n== {title.format(ranks=args.ranks)} ==", flush=True)
            t0 = time.perf_counter()
            state, detail = _run_part(fn, args.ranks, tmp)
            summary.append((name, state, time.perf_counter() - t0, detail))
    print(f"\n== summary ({time.perf_counter() - start:.0f} s) ==")
    print(f"  {'part':<28} {'result':<8} {'time':>6}  details")
    for name, state, seconds, detail in summary:
        print(f"  {name:<28} {state:<8} {seconds:>5.0f}s  {detail}")
    return 0 if all(s in ("ok", "skipped") for _, s, _, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
