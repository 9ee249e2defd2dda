"""DDP training step time on the "hcomm" torch backend vs Gloo, plus hcomm's per-call overhead.

    python benchmarks/ddp_step.py                       # 2 ranks, ~25 M parameter MLP, both backends
    python benchmarks/ddp_step.py --ranks 2 --steps 30 --batch 8 --rounds 2
    python benchmarks/ddp_step.py --skip-ddp            # only the per-call overhead table

DDP table: every rank trains the same model (seeded) on its own seeded batches with
DistributedDataParallel (default 25 MB buckets, so allreduce overlaps backward) and SGD;
a step is zero_grad + forward + backward + optimizer step, timed on each rank, the max
over ranks taken per step, and the median over steps reported. Backends run one after
the other in the same invocation and alternate for --rounds rounds so machine noise
hits both; "ratio" is hcomm / gloo (lower is better). "max |dw|" compares the final
weights of the hcomm run with the gloo run (same seeds, same data): it should be at
rounding level.

Overhead table: float32 SUM allreduce of --small bytes on the hcomm group, through
torch.distributed.all_reduce vs the raw hcomm Communicator behind the same group
(`group.comm.allreduce`), median of per-rank means over --calls calls.
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


def ddp_steps(args, rank):
    """Per-step times (s, this rank) and the final flat weights."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(make_model(args.width, args.hidden))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(100 + rank)
    times = []
    for _ in range(args.warmup + args.steps):
        x = torch.randn(args.batch, args.width, generator=gen)
        y = torch.randn(args.batch, args.width, generator=gen)
        dist.barrier()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return times[args.warmup:], weights


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


def worker(rank, args, backend, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(args.threads))
    torch.set_num_threads(args.threads)
    if backend == "hcomm":
        import hcomm.torch  # noqa: F401 - registers the backend
    dist.init_process_group(backend, rank=rank, world_size=args.ranks)
    result = {}
    if not args.skip_ddp:
        times, weights = ddp_steps(args, rank)
        per_step = torch.tensor(times, dtype=torch.float64)
        dist.all_reduce(per_step, op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
        result["steps"] = per_step.tolist()
        result["weights"] = weights.numpy() if rank == 0 else None  # by value: the process exits next
    if backend == "hcomm" and not args.skip_overhead:
        row = {k: torch.tensor(v, dtype=torch.float64) for k, v in overhead(args).items()}
        for v in row.values():
            dist.all_reduce(v, op=dist.ReduceOp.MAX)
        result["overhead"] = {k: v.item() for k, v in row.items()}
    dist.destroy_process_group()
    if rank == 0:
        out.put(result)


def run(args, backend):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=worker, args=(r, args, backend, port, out)) for r in range(args.ranks)]
    for p in procs:
        p.start()
    try:
        while True:  # poll, so a rank that dies (import error, crash) ends the run
            try:
                result = out.get(timeout=1.0)
                break
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"{backend}: ranks {dead} exited with {[procs[r].exitcode for r in dead]}")
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="gloo/hcomm alternations")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--small", type=int, default=4096, help="bytes for the per-call overhead table")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--skip-ddp", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args()

    params = sum(p.numel() for p in make_model(args.width, args.hidden).parameters())
    steps = {"gloo": [], "hcomm": []}
    weights, over = {}, None
    for _ in range(args.rounds if not args.skip_ddp else 1):
        for backend in ("gloo", "hcomm") if not args.skip_ddp else ("hcomm",):
            res = run(args, backend)
            steps[backend] += res.get("steps", [])
            weights[backend] = res.get("weights")
            over = res.get("overhead", over)

    if not args.skip_ddp:
        print(f"DDP step, {args.ranks} ranks x {args.threads} thread(s), MLP {args.width}-{args.hidden}-"
              f"{args.hidden}-{args.width} = {params / 1e6:.1f} M params, batch {args.batch}/rank, "
              f"{len(steps['gloo'])} steps per backend")
        print(f"{'backend':>8} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8} {'ratio':>6} {'max |dw|':>10}")
        base = statistics.median(steps["gloo"])
        dw = float(abs(weights["hcomm"] - weights["gloo"]).max())
        for backend in ("gloo", "hcomm"):
            s = sorted(steps[backend])
            med = statistics.median(s)
            print(f"{backend:>8} {med * 1e3:10.1f} {s[len(s) // 10] * 1e3:8.1f} {s[(9 * len(s)) // 10] * 1e3:8.1f} "
                  f"{med / base:6.2f} {dw if backend == 'hcomm' else 0.0:10.2e}")
    if over is not None:
        print(f"\nper-call allreduce, {args.small} B float32 SUM, {args.ranks} ranks (max over ranks of the mean)")
        print(f"{'path':>28} {'us/call':>9}")
        print(f"{'hcomm Communicator (raw)':>28} {over['raw']:9.1f}")
        print(f"{'torch.distributed, hcomm':>28} {over['torch']:9.1f}")
        print(f"{'overhead':>28} {over['torch'] - over['raw']:9.1f}")


if __name__ == "__main__":
    main()
