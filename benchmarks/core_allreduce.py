"""The README's core table: float32 sum allreduce, hcomm against Open MPI and Gloo,
with the machine's memory bandwidth measured in the same run as the ceiling.

    python benchmarks/core_allreduce.py                     # 2 and 4 ranks, 4 KiB and 64 MiB
    python benchmarks/core_allreduce.py --ranks 2 --json core.json

Every number comes from `hcomm-bench allreduce --compare gloo,mpi` (spawned ranks for
hcomm and Gloo, `mpirun --oversubscribe --allow-run-as-root -np N` for Open MPI through
mpi4py); time is the median over iterations on each rank, then the maximum over ranks.
Small sizes get many iterations (latency is noisy), large ones a few (each is long).

Columns:
  time / busbw  per implementation, out of place and in place (nccl-tests' columns;
                Gloo has no out-of-place allreduce: its out of place adds a copy first)
  x MPI, x Gloo peer time / hcomm time: > 1 means hcomm is faster
  of bound      busbw / the memory-bandwidth bound of a 2-rank allreduce, as the issue
                that set the target defines it: numpy's `a += b` over 64 MiB float32
                arrays in one process moves 3 x 64 MiB; an ideal 2-rank allreduce moves
                2.5 x 64 MiB per rank, so its bound busbw is 3/2.5 = 1.2 x the array
                bytes per second of `a += b` (each rank on its own core: two concurrent
                `a += b` processes each run about as fast as one alone on this machine)
An implementation that cannot run shows its reason instead of numbers: nothing is guessed.
With --repeat R every cell is the best (shortest time) of R whole runs, which filters
out load from other processes on a shared machine; the load average is printed too.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

IMPLS = ("hcomm", "mpi", "gloo")
# `a += b` moves 3 bytes of memory traffic per array byte, an ideal 2-rank allreduce 2.5.
BOUND_PER_ARRAY_RATE = 3 / 2.5
LABELS = {"hcomm": "hcomm", "mpi": "Open MPI", "gloo": "Gloo"}


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def human(nbytes):
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= div and nbytes % div == 0:
            return f"{nbytes // div} {unit}"
    return f"{nbytes} B"


def memory_bound(nbytes=64 << 20, reps=10):
    """Array bytes per second of numpy's `a += b` on float32 arrays of `nbytes`."""
    a = np.ones(nbytes // 4, np.float32)
    b = np.ones(nbytes // 4, np.float32)
    a += b  # first touch outside the timing
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a += b
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times)


def run_bench(ranks, nbytes, iters, warmup, workdir):
    """One hcomm-bench invocation at one size; returns its JSON document."""
    out = os.path.join(workdir, f"r{ranks}_{nbytes}.json")
    cmd = [sys.executable, "-m", "hcomm.bench", "allreduce", "--ranks", str(ranks), "-b", str(nbytes),
           "-e", str(nbytes), "-n", str(iters), "-w", str(warmup), "-d", "float", "-o", "sum",
           "--compare", "mpi,gloo", "--json", out]
    print("# " + " ".join(["hcomm-bench", *cmd[3:]]), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not os.path.exists(out):
        raise SystemExit(f"hcomm-bench wrote no JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    with open(out) as f:
        return json.load(f)


def cell(docs, impl, mode, key):
    """The best value over repeated runs: shortest time, highest bandwidth."""
    vals = [d["implementations"][impl]["rows"][0][mode][key] for d in docs
            if d["implementations"][impl]["status"] == "ok" and d["implementations"][impl]["rows"][0][mode]]
    if not vals:
        return None
    return min(vals) if key == "time" else max(vals)


def fmt(value, spec):
    return format(value, spec) if value is not None else "n/a".rjust(len(format(0.0, spec)))


def table_rows(docs, bound):
    lines = []
    head = (f"{'ranks':>5} {'size':>7} {'mode':>4} |" + "".join(f" {LABELS[i] + ' us':>12} {'GB/s':>6} |" for i in IMPLS)
            + f" {'x MPI':>6} {'x Gloo':>6} {'of bound':>8}")
    lines += [head, "-" * len(head)]
    for (ranks, nbytes), runs in sorted(docs.items()):
        for mode, short in (("out_of_place", "oop"), ("in_place", "ip")):
            t = {i: cell(runs, i, mode, "time") for i in IMPLS}
            bw = {i: cell(runs, i, mode, "bus_bw") for i in IMPLS}
            ratio = {p: (t[p] / t["hcomm"] if t[p] and t["hcomm"] else None) for p in ("mpi", "gloo")}
            of_bound = (bw["hcomm"] / (BOUND_PER_ARRAY_RATE * bound / 1e9)
                        if bw["hcomm"] is not None and nbytes >= (1 << 20) and ranks == 2 else None)
            lines.append(f"{ranks:>5} {human(nbytes):>7} {short:>4} |"
                         + "".join(f" {fmt(t[i], '12.1f')} {fmt(bw[i], '6.2f')} |" for i in IMPLS)
                         + f" {fmt(ratio['mpi'], '6.2f')} {fmt(ratio['gloo'], '6.2f')} {fmt(of_bound, '8.2f')}")
    return lines


def notes(docs):
    """Why an implementation has no numbers, and any wrong results: printed, never hidden."""
    out = []
    for (ranks, nbytes), runs in sorted(docs.items()):
        for name, res in ((n, r) for doc in runs for n, r in doc["implementations"].items()):
            if res["status"] != "ok":
                out.append(f"# {LABELS[name]} at {ranks} ranks, {human(nbytes)}: {res['status']}: "
                           + (res["note"].splitlines() or [""])[0])
            wrong = sum((r[m] or {}).get("nwrong") or 0 for r in res["rows"] for m in ("out_of_place", "in_place"))
            if wrong:
                out.append(f"# {LABELS[name]} at {ranks} ranks, {human(nbytes)}: {wrong} WRONG elements")
    return list(dict.fromkeys(out))  # the same reason from every repeat once


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="2,4", help="comma-separated rank counts (default 2,4)")
    p.add_argument("--sizes", default="4K,64M", help="comma-separated sizes (default 4K,64M)")
    p.add_argument("--small-iters", type=int, default=300, help="iterations below 1 MiB (default 300)")
    p.add_argument("--large-iters", type=int, default=10, help="iterations from 1 MiB (default 10)")
    p.add_argument("--repeat", type=int, default=1, help="whole runs per cell; the best is shown (default 1)")
    p.add_argument("--json", help="write every hcomm-bench document and the bound here")
    args = p.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    sizes = [parse_size(s) for s in args.sizes.split(",")]

    load_before = os.getloadavg()[0]
    bounds = [memory_bound()]
    docs = {(n, s): [] for n in ranks for s in sizes}
    with tempfile.TemporaryDirectory(prefix="core-allreduce-") as tmp:
        for _ in range(args.repeat):  # whole passes, so each cell sees the load at several times
            for n, s in docs:
                small = s < (1 << 20)
                docs[(n, s)].append(run_bench(n, s, args.small_iters if small else args.large_iters,
                                              30 if small else 3, tmp))
            bounds.append(memory_bound())
    bound = max(bounds)  # measured between passes: the best one is the ceiling

    print(f"# core allreduce: float32 sum, {os.cpu_count()} cores, median per rank then max over ranks, "
          f"best of {args.repeat} run(s); load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"# numpy a += b, 64 MiB float32, one process: {bound / 1e9:.2f} GB/s of array "
          f"({3 * bound / 1e9:.1f} GB/s memory traffic); 2-rank allreduce bound "
          f"{BOUND_PER_ARRAY_RATE * bound / 1e9:.2f} GB/s busbw")
    for line in table_rows(docs, bound) + notes(docs):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"memory_bound_bytes_per_s": bound, "repeat": args.repeat,
                       "runs": [{"ranks": n, "size": s, "docs": d} for (n, s), d in sorted(docs.items())]}, f, indent=1)


if __name__ == "__main__":
    main()
