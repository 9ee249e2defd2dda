"""Speed of exact numerics, side by side with a baseline build (issue 20's speed checks).

1. float16 and bfloat16 SUM allreduce, 1-64 MiB on 2 and 4 ranks: this tree (float32 accumulation,
   rounded once) against a baseline checkout (e.g. /work/main: partials rounded to 16
   bits at every hop). Ratio = this / baseline time; <= 1 means no slower.
2. HCOMM_DETERMINISTIC=1 float32 SUM allreduce at 64 MiB on 4 ranks against this tree's
   automatic choice without it. Ratio = deterministic / auto; the target is <= 1.3.

Both sides run this tree's hcomm.bench (the baseline's build through a package overlay,
so that bfloat16, which older benches lack, is measured the same way on both).
Each configuration runs `repeats` times, interleaved (A B A B ...) so that a change in
the machine's load hits both sides; hcomm-bench's median-free mean of `iters` timed
iterations per run, out-of-place, and the ratio's range over the repeats is printed
with the load (uptime) before and after.

    python benchmarks/numerics_speed.py --baseline /work/main --repeats 3
    python benchmarks/numerics_speed.py --baseline /work/main --repeats 3 --cpu --skip-deterministic
    python benchmarks/numerics_speed.py --baseline /work/main --skip-deterministic --ranks 4 --max-size 4M --rank-order
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def overlay(tree, where):
    """A package folder under `where` whose hcomm is `tree`'s build with this tree's
    hcomm.bench, so that both sides run the same harness (older benches lack bfloat16)."""
    pkg = os.path.join(where, "hcomm")
    os.makedirs(pkg)
    for name in os.listdir(os.path.join(tree, "hcomm")):
        src = os.path.join(HERE if name == "bench" else tree, "hcomm", name)
        os.symlink(src, os.path.join(pkg, name))
    return where


def cpu_seconds(tree, ranks, dtype, size, iters):
    """CPU seconds (user + system, every rank) of one out-of-place + in-place allreduce
    pair: a run of `iters` timed iterations less a run of one, so that start-up and the
    input's set-up cancel. With more ranks than cores, wall time follows the CPU time the
    ranks need (waits spin and yield), and this figure moves far less with other jobs'
    load than wall time does."""
    def run(n):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        bench(tree, ranks, dtype, size, size, n)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return (run(iters) - run(1)) / (iters - 1)


def cpu_vs_baseline(args, dtype, ranks):
    """Prints this and the baseline's CPU time per allreduce pair, interleaved, per size."""
    for size in ("4M", "64M"):
        iters = 200 if size == "4M" else 16  # enough calls that start-up noise (~0.1 s) is small
        mine, base = [], []
        for _ in range(args.repeats):
            base.append(cpu_seconds(args.baseline, ranks, dtype, size, iters))
            mine.append(cpu_seconds(HERE, ranks, dtype, size, iters))
        rs = sorted(m / b for m, b in zip(mine, base))
        print(f"  cpu {dtype} {ranks} ranks {size:>3}: this/baseline {rs[0]:.2f}-{rs[-1]:.2f}  this "
              f"{min(mine) * 1e3:.1f}-{max(mine) * 1e3:.1f} ms  baseline {min(base) * 1e3:.1f}-{max(base) * 1e3:.1f} ms",
              flush=True)


def bench(tree, ranks, dtype, lo, hi, iters, env_extra=None):
    """{size: microseconds} from one hcomm-bench run with `tree`'s virtual environment
    and build; a tree other than this one runs under this tree's bench (overlay())."""
    py = os.path.join(tree, ".venv", "bin", "python")
    with tempfile.NamedTemporaryFile(suffix=".json") as f, tempfile.TemporaryDirectory() as tmp:
        cmd = [py, "-m", "hcomm.bench", "allreduce", "-b", lo, "-e", hi, "-f", "4", "-d", dtype, "--ranks",
               str(ranks), "-n", str(iters), "-w", "3", "-c", "0", "--json", f.name]
        env = dict(os.environ, **(env_extra or {}))
        cwd = tree
        if os.path.realpath(tree) != os.path.realpath(HERE):
            env["PYTHONPATH"] = overlay(tree, tmp)
            cwd = tmp  # not the tree: its own hcomm/ would come first on sys.path
        subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=600)
        rows = json.load(open(f.name))["implementations"]["hcomm"]["rows"]
    return {r["size"]: r["out_of_place"]["time"] for r in rows}


def ratios(a_runs, b_runs):
    """Per size: (min, max) over repeats of a/b."""
    out = {}
    for size in a_runs[0]:
        rs = [a[size] / b[size] for a, b in zip(a_runs, b_runs)]
        out[size] = (min(rs), max(rs), [round(x, 2) for x in rs])
    return out


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def half_vs_baseline(args, dtype, ranks):
    """Prints this / baseline time per size for one 16-bit dtype and rank count; with
    --rank-order also this tree under HCOMM_DETERMINISTIC=1 (folds in rank order, where
    without it they take contributions as they arrive), interleaved in the same runs."""
    mine, base, ordered = [], [], []
    for _ in range(args.repeats):
        base.append(bench(args.baseline, ranks, dtype, "1M", args.max_size, args.iters))
        mine.append(bench(HERE, ranks, dtype, "1M", args.max_size, args.iters, {"HCOMM_DETERMINISTIC": "0"}))
        if args.rank_order:
            ordered.append(bench(HERE, ranks, dtype, "1M", args.max_size, args.iters, {"HCOMM_DETERMINISTIC": "1"}))
    print(f"{dtype} sum allreduce, {ranks} ranks: this / baseline time (min-max (median) over {args.repeats} runs)",
          flush=True)
    sides = [("", mine)] + ([("rank order", ordered)] if args.rank_order else [])
    for size in base[0]:
        for name, runs in sides:
            lo, hi, all_ = ratios(runs, base)[size]
            print(f"  {size >> 20:3d} MiB {name:>10}  {lo:.2f}-{hi:.2f} ({sorted(all_)[len(all_) // 2]:.2f})  {all_}"
                  f"  this {min(m[size] for m in runs):.0f} us  baseline {min(b[size] for b in base):.0f} us (best)",
                  flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="a checkout with a built .venv (e.g. /work/main)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--ranks", default="2,4")
    p.add_argument("--dtypes", default="half,bfloat16", help="hcomm-bench -d names, comma-separated")
    p.add_argument("--skip-deterministic", action="store_true")
    p.add_argument("--max-size", default="64M", help="largest size of the 16-bit runs (from 1M, x4 steps)")
    p.add_argument("--rank-order", action="store_true",
                   help="also time this tree with HCOMM_DETERMINISTIC=1 (rank-order folds) against the baseline")
    p.add_argument("--cpu", action="store_true", help="CPU time per call instead of wall time (cpu_seconds)")
    args = p.parse_args(argv)
    print("load before:", uptime())
    for dtype in args.dtypes.split(","):
        for ranks in [int(x) for x in args.ranks.split(",")]:
            (cpu_vs_baseline if args.cpu else half_vs_baseline)(args, dtype, ranks)
    if not args.skip_deterministic:
        det, auto = [], []
        for _ in range(args.repeats):
            auto.append(bench(HERE, 4, "float", "64M", "64M", args.iters, {"HCOMM_DETERMINISTIC": "0"}))
            det.append(bench(HERE, 4, "float", "64M", "64M", args.iters, {"HCOMM_DETERMINISTIC": "1"}))
        for size, (lo, hi, all_) in ratios(det, auto).items():
            print(f"float32 sum allreduce 4 ranks {size >> 20} MiB: deterministic / auto {lo:.2f}-{hi:.2f} {all_}")
    print("load after:", uptime())
    return 0


if __name__ == "__main__":
    sys.exit(main())
