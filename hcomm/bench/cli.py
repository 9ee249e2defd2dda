"""hcomm-bench's command line: nccl-tests' flags, the parent that spawns ranks, and the
rank-side entry that sweeps one or more implementations.

    hcomm-bench allreduce -b 8 -e 64M -f 2 --ranks 4 --compare gloo,mpi --json out.json
    mpirun -np 4 hcomm-bench allreduce -b 4K -e 4K          # every process is a rank
    torchrun --nproc-per-node 2 -m hcomm.bench allgather -d half
    hcomm-bench allreduce --device cuda -d bfloat16 --compare nccl   # GPU buffers, torch's nccl beside

-t is nccl-tests' threads per process: hcomm-bench runs one thread per rank, so -t 1 is
accepted and anything else is refused (the collective is the first argument or
--collective).

Exit status: 0 when every implementation that was asked for ran (or was skipped with a
reason) and nothing was wrong; 1 when a result was wrong, the primary implementation
did not run, or one crashed or timed out; 2 for bad flags.
"""
import argparse
import datetime
import importlib.util
import json
import os
import re
import socket
import sys
import tempfile

from . import launch
from .data import OPS, canonical_dtype
from .factors import COLLECTIVES, ROOTED, sweep_sizes
from .report import SCHEMA, ProgressLine, comparison, format_report, impl_result, plot, total_wrong
from .runners import IMPLEMENTATIONS, Unsupported, hcomm_missing, open_runner
from .sweep import Spec, run_sweep

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text):
    """Bytes from '4096', '4K', '64M', '1G' (binary units, as nccl-tests reads them)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: expected a byte count such as 4096, 4K, 64M or 1G")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def _positive(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _non_negative(text):
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _dtype(text):
    try:
        return canonical_dtype(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _threads(text):
    """nccl-tests' -t (threads per process): only 1 here; a collective name gets a pointer."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"-t is nccl-tests' threads per process, not the collective: write "
                                         f"'hcomm-bench {text}' or --collective {text}") from None
    if v != 1:
        raise argparse.ArgumentTypeError(f"-t {v}: hcomm-bench runs one thread per rank (nccl-tests' -t 1); for "
                                         "more ranks use --ranks N or a launcher (mpirun, torchrun)")
    return v


def _algo(text):
    if not re.fullmatch(r"[a-z][a-z_]*", text):
        raise argparse.ArgumentTypeError(f"bad --algo {text!r}: an algorithm name such as ring, tree, "
                                         "halving_doubling, binomial, or auto")
    return text


def _impl_list(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in IMPLEMENTATIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"bad --compare {text!r}: names must come from {', '.join(IMPLEMENTATIONS)}")
    return list(dict.fromkeys(names))


def build_parser():
    p = argparse.ArgumentParser(
        prog="hcomm-bench",
        description="Collective microbenchmarks with nccl-tests' flags and columns; hcomm with Gloo and "
                    "Open MPI side by side.")
    p.add_argument("collective_pos", nargs="?", metavar="COLLECTIVE", choices=COLLECTIVES,
                   help=f"one of {', '.join(COLLECTIVES)} (default allreduce)")
    p.add_argument("--collective", choices=COLLECTIVES, help="the collective, as an option")
    p.add_argument("-t", "--nthreads", type=_threads, default=1,
                   help="threads per rank, as nccl-tests' -t: only 1 (the collective is --collective)")
    p.add_argument("-b", "--minbytes", type=parse_size, default=8, help="smallest size, e.g. 8, 4K (default 8)")
    p.add_argument("-e", "--maxbytes", type=parse_size, default=32 << 20, help="largest size (default 32M)")
    p.add_argument("-f", "--stepfactor", type=int, default=2, help="multiply the size by this (default 2)")
    p.add_argument("-i", "--stepbytes", type=parse_size, default=0, help="add this to the size when -f is 1")
    p.add_argument("-n", "--iters", type=_positive, default=20, help="timed iterations per size (default 20)")
    p.add_argument("-w", "--warmup_iters", type=_non_negative, default=5, help="untimed iterations (default 5)")
    p.add_argument("-c", "--check", type=int, choices=(0, 1), default=1, help="check results: 1 (default) or 0")
    p.add_argument("-d", "--datatype", type=_dtype, default="float",
                   help="int8 uint8 int32 int64 half float double bfloat16")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the buffers live: cpu (default) or cuda (rank r uses GPU r mod the GPU count; "
                        "hcomm and nccl run there)")
    p.add_argument("-o", "--op", choices=OPS, default="sum", help="reduction (default sum)")
    p.add_argument("-r", "--root", type=_non_negative, default=0, help="root of broadcast / reduce (default 0)")
    p.add_argument("--algo", type=_algo, default="auto",
                   help="hcomm's algorithm: allreduce ring, tree, halving_doubling; reduce and broadcast "
                        "binomial, tree, native (default auto: its tuner's choice)")
    p.add_argument("--ranks", type=_positive, help="local ranks to spawn when no launcher started us (default 2)")
    p.add_argument("--impl", choices=IMPLEMENTATIONS, default="hcomm", help="implementation measured first (default hcomm)")
    p.add_argument("--compare", type=_impl_list, default=[],
                   help="peers on the same sizes, e.g. gloo,mpi (host buffers) or nccl (--device cuda)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="plot busbw against size, one line per implementation")
    p.add_argument("--timeout", type=_positive, default=900, help="seconds per implementation (default 900)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the checked inputs")
    # internal: a spawned rank writes its implementation's result here instead of printing
    p.add_argument("--_result", dest="result", help=argparse.SUPPRESS)
    p.add_argument("--_progress", dest="progress", action="store_true", help=argparse.SUPPRESS)
    # test hook: rank 0 (the root for reduce) corrupts this many elements of its first checked output
    p.add_argument("--_plant-wrong", dest="plant_wrong", type=_non_negative, default=0, help=argparse.SUPPRESS)
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.collective_pos and args.collective and args.collective_pos != args.collective:
        p.error(f"collective given twice: {args.collective_pos!r} and --collective {args.collective!r}")
    args.collective = args.collective or args.collective_pos or "allreduce"
    del args.collective_pos
    if args.impl in args.compare:
        p.error(f"--compare names the primary implementation {args.impl!r}")
    try:
        sweep_sizes(args.minbytes, args.maxbytes, args.stepfactor, args.stepbytes)
    except ValueError as e:
        p.error(str(e))
    return args


def make_spec(args):
    sizes = sweep_sizes(args.minbytes, args.maxbytes, args.stepfactor, args.stepbytes)
    return Spec(collective=args.collective, dtype=args.datatype, op=args.op, root=args.root, sizes=tuple(sizes),
                iters=args.iters, warmup=args.warmup_iters, check=bool(args.check), seed=args.seed,
                algo=None if args.algo == "auto" else args.algo, device=args.device)


def check_world(spec, nranks):
    """UsageError for a benchmark that cannot run on `nranks` ranks."""
    if spec.collective in ROOTED and spec.root >= nranks:
        raise launch.UsageError(f"root {spec.root} is not a rank of a {nranks}-rank world")
    if spec.collective == "sendrecv" and nranks < 2:
        raise launch.UsageError("sendrecv needs at least 2 ranks")


def _planter(count, spec):
    """The --_plant-wrong hook: corrupt `count` elements of one rank's first checked output."""
    if count == 0:
        return None
    target = spec.root if spec.collective == "reduce" else 0
    done = []

    def tamper(out, rank, in_place):
        if rank == target and not in_place and not done and out.size >= count:
            out[:count] += 1
            done.append(True)
    return tamper


# Limit on each blocking call (init included) handed to hcomm and gloo: far above any
# single call here, far below --timeout, so a hung collective fails with its own error.
OP_TIMEOUT = 120


def run_impl(name, world, spec, args):
    """Sweep one implementation on this rank; Unsupported becomes a skipped result."""
    progress = ProgressLine(f"{name} {spec.collective}", world.rank == 0 and (args.progress or sys.stderr.isatty()))
    try:
        runner = open_runner(name, world, spec, min(args.timeout, OP_TIMEOUT))
    except Unsupported as e:
        return impl_result("skipped", str(e), launcher=world.launcher)
    try:
        rows = run_sweep(runner, spec, world.rank, world.size, progress, tamper=_planter(args.plant_wrong, spec))
        return impl_result("ok", launcher=world.launcher, info=runner.info(), rows=rows)
    finally:
        progress.done()
        runner.close()


def run_in_world(args, world, argv):
    """Entry on every rank started by a launcher (or by our own parent)."""
    if args.ranks is not None and args.ranks != world.size:
        raise launch.UsageError(f"--ranks {args.ranks} but the {world.launcher} world has {world.size} ranks")
    spec = make_spec(args)
    check_world(spec, world.size)
    names = [args.impl] if args.result else [args.impl, *args.compare]
    world = launch.complete_world(world, need_unique_id="hcomm" in names and hcomm_missing() is None)
    start = _now()
    results = {name: run_impl(name, world, spec, args) for name in names}
    if world.rank != 0:
        return 0
    if args.result:
        with open(args.result, "w") as f:
            json.dump(results[args.impl], f)
        return 0
    return finish(build_document(args, spec, world.size, results, start, argv), args)


def worker_args(args, impl, result_path, progress):
    """The flags a spawned rank gets: the same benchmark, one implementation."""
    a = [args.collective, "-b", str(args.minbytes), "-e", str(args.maxbytes), "-f", str(args.stepfactor),
         "-i", str(args.stepbytes), "-n", str(args.iters), "-w", str(args.warmup_iters), "-c", str(args.check),
         "-d", args.datatype, "-o", args.op, "-r", str(args.root), "--algo", args.algo, "--impl", impl,
         "--device", args.device,
         "--timeout", str(args.timeout), "--seed", str(args.seed), "--_result", result_path]
    if progress:
        a.append("--_progress")
    if args.plant_wrong:
        a += ["--_plant-wrong", str(args.plant_wrong)]
    return a


def precheck(name):
    """Why `name` cannot be spawned on this machine, or None."""
    if name == "hcomm":
        return hcomm_missing()
    if name in ("gloo", "nccl") and importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    if name == "mpi":
        if importlib.util.find_spec("mpi4py") is None:
            return "mpi4py is not installed"
        if launch.mpirun_command(1, []) is None:
            return "mpirun is not on PATH (install Open MPI: apt-get install openmpi-bin libopenmpi-dev)"
    return None


def spawn_impl(name, args, nranks, workdir):
    """Run one implementation on `nranks` fresh ranks and return its result dict."""
    reason = precheck(name)
    if reason:
        return impl_result("skipped", reason)
    result_path = os.path.join(workdir, f"{name}.json")
    show = sys.stderr.isatty()
    wargs = worker_args(args, name, result_path, progress=show)
    if name == "mpi":
        cmd = launch.mpirun_command(nranks, wargs)
        launched, launcher = launch.spawn_mpirun(cmd, args.timeout, workdir, show), " ".join(cmd[:5])
    else:
        import hcomm

        uid = hcomm.get_unique_id() if name == "hcomm" else None
        launched = launch.spawn_local(wargs, nranks, uid, args.timeout, workdir, show)
        launcher = f"hcomm-bench --ranks {nranks}"
    if launched.timed_out:
        return impl_result("failed", f"timed out after {args.timeout} s\n{launched.stderr_tail}", launcher)
    if any(launched.returncodes) or not os.path.exists(result_path):
        return impl_result("failed", f"ranks exited with {launched.returncodes}\n{launched.stderr_tail}", launcher)
    with open(result_path) as f:
        res = json.load(f)
    res["launcher"] = launcher
    return res


def orchestrate(args, argv):
    """Entry when no launcher started us: spawn the ranks per implementation."""
    nranks = args.ranks or 2
    spec = make_spec(args)
    check_world(spec, nranks)
    start = _now()
    with tempfile.TemporaryDirectory(prefix="hcomm-bench-") as tmp:
        results = {name: spawn_impl(name, args, nranks, tmp) for name in [args.impl, *args.compare]}
    return finish(build_document(args, spec, nranks, results, start, argv), args)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def build_document(args, spec, nranks, results, start, argv):
    return {"schema": SCHEMA, "collective": spec.collective, "datatype": spec.dtype, "op": spec.op,
            "device": spec.device,
            "root": spec.root, "algo": spec.algo, "ranks": nranks, "iters": spec.iters,
            "warmup_iters": spec.warmup, "check": spec.check, "seed": spec.seed, "primary": args.impl,
            "command": ["hcomm-bench", *argv], "host": socket.gethostname(), "start_time": start,
            "end_time": _now(), "implementations": results, "comparison": comparison(results, args.impl)}


def exit_status(doc):
    impls = doc["implementations"]
    if impls[doc["primary"]]["status"] != "ok" or any(r["status"] == "failed" for r in impls.values()):
        return 1
    return 1 if any(total_wrong(r["rows"]) for r in impls.values()) else 0


def finish(doc, args):
    sys.stdout.write(format_report(doc))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"# JSON written to {args.json}")
    if args.plot:
        plot(doc, args.plot)
        print(f"# plot written to {args.plot}")
    sys.stdout.flush()
    return exit_status(doc)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        world = launch.detect_world()
        return run_in_world(args, world, argv) if world else orchestrate(args, argv)
    except launch.UsageError as e:
        print(f"hcomm-bench: error: {e}", file=sys.stderr)
        return 2
