"""Where a DDP step's time goes, per backend: compute alone, DDP with a no-op comm hook
(bucket bookkeeping without communication), full DDP, and the bucket allreduces alone.

    python benchmarks/ddp_breakdown.py                 # hcomm and gloo, 2 ranks
    python benchmarks/ddp_breakdown.py --steps 40

Same model and batch as benchmarks/ddp_step.py (a 25 M-parameter MLP, batch 8 per rank,
one thread per rank). Each phase is the median over steps (rank 0's times). Explains why
the DDP ratio is what it is on a machine without a spare core: the shared-memory
allreduce is CPU work and cannot overlap the backward pass.
"""
import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from ddp_step import _free_port, make_model


def _noop_hook(state, bucket):
    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def _steps(model, opt, x, y, steps):
    """Median ms of forward, backward and optimizer step."""
    phases = []
    for _ in range(steps):
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        phases.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    return [statistics.median(p[i] for p in phases[3:]) * 1e3 for i in range(3)]


def _bucket_allreduces(steps, mb, buckets):
    """Median ms of `buckets` async allreduces of `mb` MB, then waiting for all."""
    t = [torch.randn(int(mb * 2 ** 20) // 4) for _ in range(buckets)]
    times = []
    for _ in range(steps):
        dist.barrier()
        t0 = time.perf_counter()
        for w in [dist.all_reduce(b, async_op=True) for b in t]:
            w.wait()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:]) * 1e3


def worker(rank, args, backend, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import hcomm.torch  # noqa: F401  (registers the backend)
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group(backend, rank=rank, world_size=args.ranks)
    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(args.batch, args.width, generator=gen), torch.randn(args.batch, args.width, generator=gen)
    row = {}
    plain = make_model(args.width, args.hidden)
    row["compute"] = _steps(plain, torch.optim.SGD(plain.parameters(), lr=1e-3), x, y, args.steps)
    noop = DDP(make_model(args.width, args.hidden))
    noop.register_comm_hook(None, _noop_hook)
    row["ddp, no-op hook"] = _steps(noop, torch.optim.SGD(noop.parameters(), lr=1e-3), x, y, args.steps)
    full = DDP(make_model(args.width, args.hidden))
    row["ddp"] = _steps(full, torch.optim.SGD(full.parameters(), lr=1e-3), x, y, args.steps)
    params = sum(p.numel() for p in plain.parameters()) * 4 / 2 ** 20
    buckets = max(1, round(params / 25))
    row["allreduces"] = _bucket_allreduces(args.steps, params / buckets, buckets)
    if rank == 0:
        out.put((backend, row, buckets, params / buckets))
    dist.destroy_process_group()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--backends", default="hcomm,gloo")
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    print(f"{'backend':>8} {'phase':>16} {'fwd ms':>8} {'bwd ms':>8} {'step ms':>8} {'total ms':>9}")
    for backend in args.backends.split(","):
        out = ctx.Queue()
        mp.start_processes(worker, args=(args, backend, _free_port(), out), nprocs=args.ranks, start_method="spawn")
        name, row, buckets, mb = out.get()
        for phase in ("compute", "ddp, no-op hook", "ddp"):
            f, b, s = row[phase]
            print(f"{name:>8} {phase:>16} {f:8.1f} {b:8.1f} {s:8.1f} {f + b + s:9.1f}")
        print(f"{name:>8} {f'{buckets} x {mb:.0f} MB allreduce':>16} {'':>8} {'':>8} {'':>8} {row['allreduces']:9.1f}")


if __name__ == "__main__":
    main()
