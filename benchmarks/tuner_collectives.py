"""The collectives tuned under issue 20, measured side by side in one run:

1. alltoall on N ranks (one host): pairwise against Bruck against the tuner's choice,
   8 B - 1 MiB per rank. Ratio = forced / auto time, per algorithm; the automatic choice
   should be within about 10 % of the better forced one.
2. reduce_scatter on simulated hosts (HCOMM_TOPO_FILE, 2 hosts of R/2 ranks: shm inside,
   tcp over loopback between): ring against hierarchical against auto.
3. The per-call cost of drift bookkeeping: allreduce 8 B - 64 KiB on 2 ranks with
   drift on against HCOMM_DRIFT=0 (same tree), and against a baseline checkout.

Each configuration runs `repeats` times, interleaved (A B C A B C ...) so that a change
in the machine's load hits every side; hcomm-bench's mean of `iters` timed iterations
per run, out-of-place. Printed: each ratio's range over the repeats, the best absolute
times, and the load (uptime) before and after.

    python benchmarks/tuner_collectives.py --repeats 3 [--baseline /work/main]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(tree, collective, ranks, lo, hi, iters, algo="auto", env_extra=None):
    """{size: microseconds} from one hcomm-bench run with `tree`'s virtual environment."""
    exe = os.path.join(tree, ".venv", "bin", "hcomm-bench")
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [exe, collective, "-b", lo, "-e", hi, "-f", "8", "-d", "float", "--ranks", str(ranks),
               "-n", str(iters), "-w", "3", "-c", "0", "--algo", algo, "--json", f.name]
        env = dict(os.environ, **(env_extra or {}))
        subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=900)
        rows = json.load(open(f.name))["implementations"]["hcomm"]["rows"]
    return {r["size"]: r["out_of_place"]["time"] for r in rows}


def side_by_side(title, runs, reference):
    """runs: {label: [ {size: us}, ... per repeat ]}; ratios of each label to `reference`."""
    print(title)
    sizes = list(runs[reference][0])
    for size in sizes:
        cells = []
        for label, reps in runs.items():
            best = min(r[size] for r in reps)
            if label == reference:
                cells.append(f"{label} {best:.1f} us")
                continue
            rs = [r[size] / ref[size] for r, ref in zip(reps, runs[reference])]
            cells.append(f"{label} {min(rs):.2f}-{max(rs):.2f}x ({best:.1f} us)")
        print(f"  {size:>8} B  " + "  ".join(cells))


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def interleaved(repeats, configs):
    """{label: [result per repeat]} running every config once per repeat, in turn."""
    out = {label: [] for label in configs}
    for _ in range(repeats):
        for label, run in configs.items():
            out[label].append(run())
    return out


def topo_file(ranks):
    half = ranks // 2
    hosts = [{"name": "host0", "ranks": list(range(half))}, {"name": "host1", "ranks": list(range(half, ranks))}]
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump({"hosts": hosts}, f)
    f.close()
    return f.name


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--alltoall-ranks", type=int, default=8)
    p.add_argument("--rs-ranks", type=int, default=4)
    p.add_argument("--baseline", help="a checkout with a built .venv (e.g. /work/main) for the drift overhead")
    p.add_argument("--parts", default="alltoall,reduce_scatter,drift", help="which of the three to run")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    print("load before:", uptime())
    if "alltoall" in parts:
        run_alltoall(args)
    if "reduce_scatter" in parts:
        run_reduce_scatter(args)
    if "drift" in parts:
        run_drift(args)
    print("load after:", uptime())
    return 0


def run_alltoall(args):
    n = args.alltoall_ranks
    runs = interleaved(args.repeats, {
        a: (lambda a=a: bench(HERE, "alltoall", n, "8", "1M", args.iters, a)) for a in ("auto", "pairwise", "bruck")})
    side_by_side(f"alltoall, {n} ranks, one host: forced / auto (range over {args.repeats} runs)", runs, "auto")


def run_reduce_scatter(args):
    n = args.rs_ranks
    env = {"HCOMM_TOPO_FILE": topo_file(n)}
    runs = interleaved(args.repeats, {
        a: (lambda a=a: bench(HERE, "reduce_scatter", n, "64K", "32M", args.iters, a, env))
        for a in ("auto", "ring", "hierarchical")})
    side_by_side(f"reduce_scatter, {n} ranks on 2 simulated hosts: forced / auto", runs, "auto")


def run_drift(args):
    configs = {"drift on": lambda: bench(HERE, "allreduce", 2, "8", "64K", args.iters * 5),
               "HCOMM_DRIFT=0": lambda: bench(HERE, "allreduce", 2, "8", "64K", args.iters * 5, "auto",
                                              {"HCOMM_DRIFT": "0"})}
    if args.baseline:
        configs["baseline"] = lambda: bench(args.baseline, "allreduce", 2, "8", "64K", args.iters * 5)
    runs = interleaved(args.repeats, configs)
    side_by_side("allreduce, 2 ranks: drift bookkeeping's cost (ratio to drift on)", runs, "drift on")


if __name__ == "__main__":
    sys.exit(main())
