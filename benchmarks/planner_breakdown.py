"""Where a real training step's time goes, beside the planner's terms for the same plan.

    python benchmarks/planner_breakdown.py --np 4 --plans 6          # plan here, run 6 plans, print both
    python benchmarks/planner_breakdown.py --np 4 --only "z3 mb1"     # the plans whose name holds this
    python benchmarks/planner_breakdown.py --topology c.json ...      # a calibration kept in a file
    python benchmarks/planner_breakdown.py --layout 0,0,0,1 --only "pp4 z0 mb8"   # simulated hosts 3 + 1
                                                 # (network namespaces as planner_accuracy.py's case c)

Each plan runs examples/train_gpt.py's Trainer under torchrun with timers around what a
step does, on every rank, as exclusive times (a collective inside a forward counts as
the collective, not the forward):

    forward      stage modules' forward (hooks on each stage), loss included
    backward     torch.autograd.backward (gradient hooks' collectives excluded)
    optimizer    opt.step (ZeRO's collectives inside it excluded)
    coll <kind>  time inside the hcomm process group's blocking collective calls, by kind
                 and group size; p2p send/recv posting; Work.wait (async collectives, p2p)
    other        step - all of the above: the pipeline runtime's Python, batch slicing

Beside the wall times, `cpu forward`, `cpu backward`, `cpu optimizer`: the thread's CPU
time in each (wall over CPU is the wait for a core; CPU over the profile is work the
profile did not see). `phases` splits each step at the pipeline runtime's status
all-gather into its pipeline phase and its step end, beside the model's makespan and
step-end terms; `--trace N` prints every rank's timeline of the last N steps (one
monotonic clock for all the machine's processes).

Every rank's row is printed beside the planner's terms for the plan
(`format_explain`). This is the tool the cost model was checked with term by term
(docs/planner.md); it asserts nothing.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

_PG_METHODS = {"allreduce": "allreduce", "allgather": "allgather", "all_gather_single": "allgather",
               "reduce_scatter": "reduce_scatter", "reduce_scatter_single": "reduce_scatter",
               "broadcast": "broadcast", "send": "p2p post", "recv": "p2p post", "barrier": "barrier"}


class Clock:
    """Exclusive time per category: entering a category pauses the one around it. Beside
    the wall time, the thread's CPU time of the compute categories (`cpu forward`, ...):
    wall over CPU is the time a rank's compute spent waiting for a core, CPU over the
    profile is work the profile did not see."""

    COMPUTE = ("forward", "backward", "optimizer")
    WAITS = ("wait", "coll ")      # the calling thread blocked on hcomm: its CPU there is the spin/yield

    def __init__(self):
        self.totals, self.counts, self.stack = {}, {}, []
        self.events = []        # (category, start, end) of every exclusive slice (--trace)

    def _add(self, cat, t0, c0, now, cnow):
        self.totals[cat] = self.totals.get(cat, 0.0) + now - t0
        if cat in self.COMPUTE:
            self.totals["cpu " + cat] = self.totals.get("cpu " + cat, 0.0) + cnow - c0
        elif cat.startswith(self.WAITS):
            self.totals["cpu waits"] = self.totals.get("cpu waits", 0.0) + cnow - c0
            self.totals["waits"] = self.totals.get("waits", 0.0) + now - t0
        self.events.append((cat, t0, now))

    def enter(self, cat):
        now, cnow = time.perf_counter(), time.thread_time()
        if self.stack:
            self._add(*self.stack[-1], now, cnow)
        self.stack.append((cat, now, cnow))
        self.counts[cat] = self.counts.get(cat, 0) + 1

    def exit(self):
        now, cnow = time.perf_counter(), time.thread_time()
        self._add(*self.stack.pop(), now, cnow)
        if self.stack:
            self.stack[-1] = (self.stack[-1][0], now, cnow)

    def wrap(self, fn, cat):
        def timed(*a, **k):
            name = cat(*a, **k) if callable(cat) else cat
            self.enter(name)
            try:
                return fn(*a, **k)
            finally:
                self.exit()
        return timed

    def take(self):
        self.events = []
        out, self.totals = self.totals, {}
        out.update({"#" + k: v for k, v in self.counts.items() if k.startswith(("coll", "wait"))})
        self.counts = {}
        return out


def _instrument(clock, trainer):
    import torch
    from hcomm.torch.backend import ProcessGroupHcomm
    from hcomm.torch.work import HcommWork

    for meth, kind in _PG_METHODS.items():
        orig = getattr(ProcessGroupHcomm, meth)
        setattr(ProcessGroupHcomm, meth,
                clock.wrap(orig, lambda self, *a, _k=kind, **kw: f"coll {_k} n{self.size()}"))
    HcommWork.wait = clock.wrap(HcommWork.wait, "wait")
    torch.autograd.backward = clock.wrap(torch.autograd.backward, "backward")
    for stage in trainer.stages.values():
        stage.register_forward_pre_hook(lambda *a: clock.enter("forward"))
        stage.register_forward_hook(lambda *a: clock.exit())
    trainer.opt.step = clock.wrap(trainer.opt.step, "optimizer")
    trainer.pipe.loss_fn = clock.wrap(trainer.pipe.loss_fn, "forward")


def rank_main(config_path, steps, out_path):
    """One rank (under torchrun): run `steps` steps; rank 0 writes every rank's rows."""
    import hcomm.torch  # noqa: F401
    import torch
    import torch.distributed as dist
    import train_gpt
    from hcomm.parallel.mesh import ParallelConfig, build_mesh

    torch.set_num_threads(1)
    config = json.loads(Path(config_path).read_text())
    dist.init_process_group("hcomm")
    pcfg = ParallelConfig.from_config(config, dist.get_world_size())
    trainer = train_gpt.Trainer(config, pcfg, build_mesh(pcfg), verbose=False)
    clock = Clock()
    _instrument(clock, trainer)
    rows, trace = [], []
    for step in range(steps):
        clock.take()
        c0, p0, t0 = time.thread_time(), time.process_time(), time.perf_counter()
        trainer.step(step)
        t1 = time.perf_counter()
        cpu = {"cpu step thread": time.thread_time() - c0, "cpu step process": time.process_time() - p0}
        # CLOCK_MONOTONIC is one clock for every process of the machine: the ranks' slices line up
        trace.append([(cat, a, b) for cat, a, b in clock.events] + [("step", t0, t1)])
        row = clock.take()
        row["step"] = t1 - t0
        row["other"] = row["step"] - sum(v for k, v in row.items()
                                         if k not in ("step", "waits") and not k.startswith(("#", "cpu ")))
        row.update(cpu)
        rows.append(row)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {"rows": rows, "trace": trace})
    if dist.get_rank() == 0:
        Path(out_path).write_text(json.dumps(everyone))
    dist.destroy_process_group()


def measure(config, steps=6, np_=4, launch=None, traces=None):
    """Per rank, the median over steps (first left out) of every category, in seconds.
    `launch(argv)`: start the ranks another way (network-namespace hosts, _netns_launcher);
    default torchrun here. `traces`: a list that receives, per step, every rank's
    (category, start, end) slices."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg, out = os.path.join(tmp, "c.json"), os.path.join(tmp, "r.json")
        Path(cfg).write_text(json.dumps(config))
        argv = [__file__, "--rank-main", cfg, "--steps", str(steps), "--out", out]
        if launch:
            launch([sys.executable] + argv)
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={np_}"] + argv
            proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                                  timeout=600)
            if proc.returncode:
                raise RuntimeError(proc.stderr[-3000:])
        everyone = json.loads(Path(out).read_text())
    ranks = [r["rows"] for r in everyone]
    if traces is not None:
        traces.extend([r["trace"][i] for r in everyone] for i in range(len(everyone[0]["trace"])))
    out = []
    for rows in ranks:
        rows = rows[1:] or rows
        keys = sorted({k for r in rows for k in r})
        out.append({k: statistics.median(r.get(k, 0.0) for r in rows) for k in keys})
    return out


def format_measured(ranks):
    keys = sorted({k for r in ranks for k in r if k not in ("step",)})
    lines = [f"    {'measured (ms)':<28}" + "".join(f"{'rank ' + str(i):>9}" for i in range(len(ranks)))]
    for k in keys + ["step"]:
        scale = 1 if k.startswith("#") else 1e3
        lines.append(f"    {k:<28}" + "".join(f"{r.get(k, 0.0) * scale:9.2f}" for r in ranks))
    return "\n".join(lines)


def format_cpu(ranks):
    """Per rank, what of the step used a core: the process's CPU (every thread) against the
    wall, the compute's, and the waits' (the caller's thread inside hcomm calls and
    Work.wait; the other threads' CPU, hcomm's progress thread mostly, beside it). The
    planner's active-rank count takes a waiting rank as leaving the cores to the others."""
    lines = [f"    {'cpu (ms)':<28}" + "".join(f"{'rank ' + str(i):>9}" for i in range(len(ranks)))]
    rows = {"step wall": lambda r: r["step"],
            "process cpu (all threads)": lambda r: r.get("cpu step process", 0.0),
            "compute cpu": lambda r: sum(r.get("cpu " + k, 0.0) for k in Clock.COMPUTE),
            "waits wall": lambda r: r.get("waits", 0.0),
            "waits cpu (caller thread)": lambda r: r.get("cpu waits", 0.0),
            "other threads cpu": lambda r: r.get("cpu step process", 0.0) - r.get("cpu step thread", 0.0)}
    for name, get in rows.items():
        lines.append(f"    {name:<28}" + "".join(f"{get(r) * 1e3:9.2f}" for r in ranks))
    return "\n".join(lines)


def format_trace(ranks, merge_ms=0.05):
    """One step's timeline, a line per rank: each slice as `category@start+length` in ms
    from the earliest rank's step start (slices shorter than merge_ms are left out)."""
    t0 = min(s for slices in ranks for cat, s, _ in slices if cat == "step")
    lines = []
    for i, slices in enumerate(ranks):
        parts = [f"{cat}@{(a - t0) * 1e3:.1f}+{(b - a) * 1e3:.1f}" for cat, a, b in sorted(slices, key=lambda x: x[1])
                 if cat != "step" and (b - a) * 1e3 >= merge_ms]
        end = next(b for cat, _, b in slices if cat == "step")
        lines.append(f"    rank {i} (ends {(end - t0) * 1e3:.1f}): " + "  ".join(parts))
    return "\n".join(lines)


def phases(ranks, world):
    """(pipeline, step end) seconds of one step: from the earliest rank's start until every
    rank has the pipeline runtime's status all-gather over the world (its call and the
    wait after it: no rank starts its optimizer before the last stage's backward ends),
    then until the last rank ends its step. The cost model's makespan and its step-end
    terms (dp sync, optimizer, sp grads, control, clip) price the same two spans."""
    t0 = min(a for slices in ranks for cat, a, _ in slices if cat == "step")
    status = f"coll allgather n{world}"
    boundary = 0.0
    for slices in ranks:
        ordered = sorted((s for s in slices if s[0] != "step"), key=lambda x: x[1])
        # the last world all-gather before the optimizer: a dp group of the whole world
        # (dp4 on 4 ranks) all-gathers in ZeRO-3's forward and backward too
        opt = next((i for i, s in enumerate(ordered) if s[0] == "optimizer"), len(ordered))
        at = next((i for i in range(opt - 1, -1, -1) if ordered[i][0] == status), None)
        if at is None:
            return None
        done = ordered[at][2]
        if at + 1 < len(ordered) and ordered[at + 1][0] == "wait":
            done = ordered[at + 1][2]
        boundary = max(boundary, done)
    end = max(b for slices in ranks for cat, _, b in slices if cat == "step")
    return boundary - t0, end - boundary


def format_phases(traces, est, world):
    """The measured spans of every step after the first (min-max) beside the model's."""
    spans = [p for p in (phases(t, world) for t in traces[1:]) if p]
    if not spans:
        return "  phases: no status all-gather over the world found"
    end_terms = sum(v for k, v in est.terms.items() if k.startswith(("dp ", "optimizer", "sp ", "control", "clip"))
                    and k != "dp ZeRO per micro-batch")
    pipe, end = [p for p, _ in spans], [e for _, e in spans]
    return (f"  phases (ms): pipeline (to the status all-gather) predicted {est.detail['makespan'] * 1e3:.1f}, "
            f"measured {min(pipe) * 1e3:.1f}-{max(pipe) * 1e3:.1f}; step end predicted {end_terms * 1e3:.1f}, "
            f"measured {min(end) * 1e3:.1f}-{max(end) * 1e3:.1f}")


def _netns_launcher(ns, layout):
    """Run argv on the ranks of `layout` (simulated host of each rank) in the namespaces of
    `ns`, as planner_accuracy.py runs its cases b and c."""
    from planner_accuracy import _launch

    from hcomm.topology import wait_all

    def launch(argv):
        results = wait_all(_launch(ns, layout, argv, 29500 + os.getpid() % 100), 600)
        if any(rc for rc, _, _ in results):
            raise RuntimeError("\n".join(se[-1500:] for rc, _, se in results if rc))
    return launch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--np", type=int, default=4)
    ap.add_argument("--model", default='{"vocab_size": 64, "seq_len": 32, "hidden": 64, "heads": 4, "n_layers": 4}')
    ap.add_argument("--global-batch-size", type=int, default=8)
    ap.add_argument("--plans", type=int, default=6, help="plans run: evenly spaced over the ranking")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--only", help="run only plans whose name contains this (the first --plans of them)")
    ap.add_argument("--topology", help="a calibrated topology file (python -m hcomm.parallel.plan.calibrate "
                    "--np 4 --out FILE) instead of calibrating again: the same cluster for several runs")
    ap.add_argument("--layout", help="simulated host of each rank, e.g. 0,0,0,1: network-namespace hosts "
                    "(root), calibrated and run inside them as planner_accuracy.py's cases b and c")
    ap.add_argument("--rate", default="1gbit", help="inter-host rate with --layout")
    ap.add_argument("--trace", type=int, default=0, help="print the timeline of the last N steps, every rank")
    ap.add_argument("--rank-main", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rank_main:
        return rank_main(args.rank_main, args.steps, args.out)
    print(f"load {os.getloadavg()}", flush=True)
    if not args.layout:
        from hcomm.parallel.plan import Cluster

        cluster = Cluster.from_file(args.topology) if args.topology else Cluster.detect(args.np)
        return _run_plans(args, cluster, None)
    from planner_accuracy import detect_netns

    from hcomm.parallel.plan import Cluster
    from hcomm.topology import NetnsCluster

    layout = [int(h) for h in args.layout.split(",")]
    with NetnsCluster(max(layout) + 1, rate=args.rate) as ns, tempfile.TemporaryDirectory() as tmp:
        path = args.topology or os.path.join(tmp, "cluster.json")
        if not os.path.exists(path):      # --topology names a file to keep the calibration in
            detect_netns(ns, layout, path, 29400 + os.getpid() % 100)
        args.np = len(layout)
        return _run_plans(args, Cluster.from_file(path), _netns_launcher(ns, layout))


def _run_plans(args, cluster, launch):
    from hcomm.parallel.plan import format_explain, plan

    print(cluster.summary(), flush=True)
    result = plan(json.loads(args.model), args.global_batch_size, cluster=cluster)
    fits = [e for e in result.ranked if e.fits and (not args.only or args.only in e.cand.name)]
    step = 1 if args.only else max(1, len(fits) // args.plans)
    for est in fits[::step][:args.plans]:
        print("\n" + format_explain(result, est), flush=True)
        traces = []
        measured = measure(result.config(est), args.steps, args.np, launch, traces)
        print(format_measured(measured), flush=True)
        print(format_cpu(measured), flush=True)
        print(format_phases(traces, est, args.np), flush=True)
        for i in range(len(traces) - args.trace, len(traces)) if args.trace else ():
            print(f"  timeline of step {i}:\n" + format_trace(traces[i]), flush=True)
    print(f"load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
