"""hcomm.parallel's pipeline step against torch.distributed.pipelining's, same model, backend and data.

    .venv/bin/python benchmarks/pipeline_vs_torch.py                  # 2 ranks, hcomm, m = 8
    .venv/bin/python benchmarks/pipeline_vs_torch.py --steps 20 --batch 128

Model: 8 x (Linear(1024, 1024) + ReLU), cut into p = 2 stages of 4 layers; MSE loss; one
step = the pipelined forward and backward of one batch in m micro-batches (no optimizer,
gradients zeroed between steps). Sides, run alternately step by step in one job so both
see the same machine load:
  torch-1f1b   torch.distributed.pipelining.Schedule1F1B over PipelineStage
  hcomm-1f1b   hcomm.parallel.pipeline.PipelineRuntime with the 1f1b schedule
  hcomm-zb-h1  the same runtime with the zb-h1 schedule (split backward)
  hcomm-zb-v   the same runtime with the zb-v schedule: the model cut into 2p chunks of
               2 layers, rank r holding chunks r and 2p-1-r (so the loss is on rank 0)
Reported: the median step over --steps timed steps after --warmup, the slowest rank,
with a barrier before each; ratio = time / torch-1f1b (< 1 is faster); the last line
(RATIO ...) is the compact summary. Where the hcomm sides' time goes: parallel/pipeline/
wgrad.py (the Linear weight gradients) and README's parallel speed section.
"""
import argparse
import os
import socket
import statistics
import sys
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

SIDES = ("torch-1f1b", "hcomm-1f1b", "hcomm-zb-h1", "hcomm-zb-v")


def make_stage(index, count, layers, width):
    """Piece `index` of the model cut into `count` equal consecutive pieces (same seed: the
    pieces of every side are the same model)."""
    torch.manual_seed(0)
    mods = []
    for _ in range(layers):
        mods += [nn.Linear(width, width), nn.ReLU()]
    per = len(mods) // count
    return nn.Sequential(*mods[index * per:(index + 1) * per])


def torch_side(rank, p, args):
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    stage = PipelineStage(make_stage(rank, p, args.layers, args.width), rank, p, torch.device("cpu"))
    sched = Schedule1F1B(stage, n_microbatches=args.m, loss_fn=F.mse_loss)

    def step(x, y):
        if rank == 0:
            sched.step(x)
        else:
            sched.step(target=y)
        stage.submod.zero_grad(set_to_none=True)
    return step


def hcomm_side(rank, p, args, name):
    from hcomm.parallel.pipeline import PipelineRuntime, build_schedule

    sched = build_schedule(name, p, args.m, 2 if name == "zb-v" else 1)
    stages = {s: make_stage(s, sched.num_stages, args.layers, args.width) for s in sched.stages_of(rank)}
    rt = PipelineRuntime(stages, sched, F.mse_loss, pp_rank=rank, pp_ranks=list(range(p)), verbose=False)

    def step(x, y):
        rt.step(x if rank == 0 else None, y if rt.holds_last_stage else None)
        for module in stages.values():
            module.zero_grad(set_to_none=True)
    return step


def _worker(rank, p, port, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.backend == "hcomm":
        import hcomm.torch  # noqa: F401 - registers the backend
    dist.init_process_group(args.backend, rank=rank, world_size=p)
    try:
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(args.batch, args.width, generator=g), torch.randn(args.batch, args.width, generator=g)
        steps = {"torch-1f1b": torch_side(rank, p, args), "hcomm-1f1b": hcomm_side(rank, p, args, "1f1b"),
                 "hcomm-zb-h1": hcomm_side(rank, p, args, "zb-h1"), "hcomm-zb-v": hcomm_side(rank, p, args, "zb-v")}
        times = {s: [] for s in SIDES}
        for i in range(args.warmup + args.steps):
            for side in SIDES:   # alternate: every side sees the same load
                dist.barrier()
                t0 = time.perf_counter()
                steps[side](x, y)
                dt = torch.tensor([time.perf_counter() - t0])
                dist.all_reduce(dt, op=dist.ReduceOp.MAX)
                if i >= args.warmup:
                    times[side].append(float(dt))
        if rank == 0:
            out.put({s: statistics.median(t) for s, t in times.items()})
    finally:
        dist.destroy_process_group()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="hcomm")
    ap.add_argument("--p", type=int, default=2)
    ap.add_argument("--m", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, args.p, port, args, out)) for r in range(args.p)]
    for proc in procs:
        proc.start()
    result = out.get(timeout=1800)
    for proc in procs:
        proc.join(timeout=30)
    base = result["torch-1f1b"]
    print(f"{args.layers} x Linear({args.width}) + ReLU, p={args.p}, m={args.m}, batch {args.batch}, "
          f"{args.backend}, {args.threads} thread(s) per rank, median of {args.steps} steps")
    for side in SIDES:
        print(f"{side:<12} {result[side] * 1e3:9.1f} ms   {result[side] / base:5.2f}x")
    print(f"RATIO pipeline_vs_torch torch-1f1b={base * 1e3:.1f}ms hcomm-1f1b={result['hcomm-1f1b'] / base:.2f}x "
          f"hcomm-zb-h1={result['hcomm-zb-h1'] / base:.2f}x hcomm-zb-v={result['hcomm-zb-v'] / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
