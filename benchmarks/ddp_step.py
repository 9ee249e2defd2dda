"""DDP training step time on the "hcomm" torch backend vs Gloo, plus hcomm's per-call overhead.

    python benchmarks/ddp_step.py                       # 2 ranks, ~25 M parameter MLP
    python benchmarks/ddp_step.py --ranks 2 --steps 30 --batch 8
    python benchmarks/ddp_step.py --skip-ddp            # only the per-call overhead table

One job, both backends: the default group is hcomm and a Gloo group spans the same
ranks. Two DDP copies of one seeded model (default 25 MB buckets, so allreduce overlaps
backward; SGD) train on the same seeded batches, one on each group, step for step,
alternating which goes first, so whatever else the machine is doing hits both alike.
A step is zero_grad + forward + backward + optimizer step, timed on each rank; the max
over ranks is taken per step and the median over steps reported. "ratio" is hcomm /
gloo (lower is better); "max |dw|" compares the final weights of the two copies (same
seeds, same data): it should be at rounding level.

Overhead table: float32 SUM allreduce of --small bytes on the hcomm group, through
torch.distributed.all_reduce vs the raw hcomm Communicator behind the same group
(`group.comm.allreduce`), the best of three passes of --calls calls, max over ranks.
"""
import argparse
import os
import queue
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(width, hidden):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, width))


def ddp_steps(args, rank, groups):
    """Per-step times (s, this rank) for each group's DDP copy, and their final weights."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    models = {name: DDP(make_model(args.width, args.hidden), process_group=g, bucket_cap_mb=args.bucket_mb,
                        gradient_as_bucket_view=args.bucket_view) for name, g in groups.items()}
    opts = {name: torch.optim.SGD(m.parameters(), lr=1e-3) for name, m in models.items()}
    gen = torch.Generator().manual_seed(100 + rank)
    times = {name: [] for name in groups}
    for step in range(args.warmup + args.steps):
        x = torch.randn(args.batch, args.width, generator=gen)
        y = torch.randn(args.batch, args.width, generator=gen)
        order = list(groups) if step % 2 == 0 else list(reversed(list(groups)))
        for name in order:
            dist.barrier()
            start = time.perf_counter()
            opts[name].zero_grad(set_to_none=False)
            nn.functional.mse_loss(models[name](x), y).backward()
            opts[name].step()
            times[name].append(time.perf_counter() - start)
    weights = {name: torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for name, m in models.items()}
    return {name: t[args.warmup:] for name, t in times.items()}, weights


def per_call_us(fn, calls):
    for _ in range(max(calls // 10, 10)):
        fn()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def overhead(args):
    x = torch.ones(args.small // 4)
    comm = dist.group.WORLD.comm
    row = {}
    for _ in range(3):  # best of three passes each, alternating
        for name, fn in (("raw", lambda: comm.allreduce(x)), ("torch", lambda: dist.all_reduce(x))):
            row[name] = min(row.get(name, float("inf")), per_call_us(fn, args.calls))
    return row


def worker(rank, args, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(args.threads))
    torch.set_num_threads(args.threads)
    import hcomm.torch  # noqa: F401 - registers the backend

    dist.init_process_group("hcomm", rank=rank, world_size=args.ranks)
    groups = {"gloo": dist.new_group(backend="gloo"), "hcomm": dist.group.WORLD}
    result = {}
    if not args.skip_ddp:
        times, weights = ddp_steps(args, rank, groups)
        for name, t in times.items():
            per_step = torch.tensor(t, dtype=torch.float64)
            dist.all_reduce(per_step, op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
            result[name] = per_step.tolist()
        result["max_dw"] = (weights["hcomm"] - weights["gloo"]).abs().max().item()
    if not args.skip_overhead:
        row = {k: torch.tensor(v, dtype=torch.float64) for k, v in overhead(args).items()}
        for v in row.values():
            dist.all_reduce(v, op=dist.ReduceOp.MAX)
        result["overhead"] = {k: v.item() for k, v in row.items()}
    dist.destroy_process_group()
    if rank == 0:
        out.put(result)


def run(args):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=worker, args=(r, args, port, out)) for r in range(args.ranks)]
    for p in procs:
        p.start()
    try:
        while True:  # poll, so a rank that dies (import error, crash) ends the run
            try:
                return out.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"ranks {dead} exited with {[procs[r].exitcode for r in dead]}")
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()


def print_ddp(args, res):
    params = sum(p.numel() for p in make_model(args.width, args.hidden).parameters())
    print(f"DDP step, {args.ranks} ranks x {args.threads} thread(s), MLP {args.width}-{args.hidden}-"
          f"{args.hidden}-{args.width} = {params / 1e6:.1f} M params, batch {args.batch}/rank, "
          f"{args.steps} steps, buckets {args.bucket_mb:g} MB{' as grad views' if args.bucket_view else ''}, "
          "backends interleaved step by step")
    print(f"{'backend':>8} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8} {'ratio':>6} {'max |dw|':>10}")
    base = statistics.median(res["gloo"])
    for name in ("gloo", "hcomm"):
        s = sorted(res[name])
        med = statistics.median(s)
        dw = res["max_dw"] if name == "hcomm" else 0.0
        print(f"{name:>8} {med * 1e3:10.1f} {s[len(s) // 10] * 1e3:8.1f} {s[(9 * len(s)) // 10] * 1e3:8.1f} "
              f"{med / base:6.2f} {dw:10.2e}")


def print_overhead(args, over):
    print(f"\nper-call allreduce, {args.small} B float32 SUM, {args.ranks} ranks (max over ranks)")
    print(f"{'path':>28} {'us/call':>9}")
    print(f"{'hcomm Communicator (raw)':>28} {over['raw']:9.1f}")
    print(f"{'torch.distributed, hcomm':>28} {over['torch']:9.1f}")
    print(f"{'overhead':>28} {over['torch'] - over['raw']:9.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket_cap_mb (torch's default 25)")
    ap.add_argument("--bucket-view", action="store_true", help="DDP gradient_as_bucket_view=True")
    ap.add_argument("--small", type=int, default=4096, help="bytes for the per-call overhead table")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--skip-ddp", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args()
    res = run(args)
    if not args.skip_ddp:
        print_ddp(args, res)
    if not args.skip_overhead:
        print_overhead(args, res["overhead"])


if __name__ == "__main__":
    main()
