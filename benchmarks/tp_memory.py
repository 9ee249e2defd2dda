"""Per-rank parameter memory of a tensor-parallel GPT block, and its output vs the dense block.

    python benchmarks/tp_memory.py                         # tp = 1, 2, 4 as local gloo processes
    python benchmarks/tp_memory.py --tp 2 --hidden 512 --heads 8
    torchrun --nproc-per-node 2 benchmarks/tp_memory.py --backend gloo   # tp = world size

For each tp size every rank builds the dense block and the tp block from one seed,
counts the bytes of its parameters (sharded: QKV, projection and MLP weights, column
biases; replicated: LayerNorms and row-parallel biases), runs the same input through
both (plain tp and sequence parallel) and reports the largest difference from the dense
output. The residual-stream column is the bytes of the block's output tensor on one
rank: sequence parallelism divides it by tp. fwd+bwd is a median over --iters on
whatever machine this runs on (CPU and gloo by default); it is context, not a claim.
"""
import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _param_bytes(module, replicated_only=False):
    from hcomm.parallel.tensor import partition_dim

    return sum(p.numel() * p.element_size() for name, p in module.named_parameters()
               if not replicated_only or partition_dim(module, name) is None)


def _run_block(block, x, gy, iters):
    times = []
    for _ in range(max(iters, 1) + 1):   # the first run warms up allocator and groups; dropped
        x = x.detach().requires_grad_()
        start = time.perf_counter()
        y = block(x)
        (y * gy).sum().backward()
        times.append(time.perf_counter() - start)
    return y.detach(), statistics.median(times[1:]) * 1e3


def measure(args):
    """Runs on every rank of an initialised group; returns rank 0's row of the table."""
    from hcomm.parallel.models import GPTBlock, GPTConfig

    tp, rank = dist.get_world_size(), dist.get_rank()
    torch.set_num_threads(args.threads)
    cfg = GPTConfig(hidden=args.hidden, heads=args.heads, seq_len=args.seq)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.seq, args.hidden, generator=gen)
    gy = torch.randn(x.shape, generator=gen)
    dense = GPTBlock(cfg, seed=1)
    want = dense(x).detach()
    group = dist.group.WORLD
    row = {"tp": tp, "dense_bytes": _param_bytes(dense)}
    for sp in (False, True):
        block = GPTBlock(cfg, group=group, sequence_parallel=sp, seed=1)
        xs = x.chunk(tp, 1)[rank] if sp else x
        y, ms = _run_block(block, xs, gy.chunk(tp, 1)[rank] if sp else gy, args.iters)
        ref = want.chunk(tp, 1)[rank] if sp else want
        err = torch.tensor([(y - ref).abs().max().item()])
        dist.all_reduce(err, op=dist.ReduceOp.MAX)
        tag = "sp" if sp else "tp"
        row.update({f"{tag}_err": err.item(), f"{tag}_ms": ms, f"{tag}_act": y.numel() * y.element_size()})
        if not sp:
            row.update(rank_bytes=_param_bytes(block), replicated_bytes=_param_bytes(block, True))
    return row


def _entry(rank, tp, port, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=tp)
    try:
        row = measure(args)
        if rank == 0:
            queue.put(row)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(tp, args):
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_entry, args=(tp, _free_port(), args, queue), nprocs=tp, start_method="spawn")
    return queue.get()


def print_table(rows, args):
    print(f"GPT block: hidden {args.hidden}, heads {args.heads}, ffn {4 * args.hidden}, "
          f"batch {args.batch}, seq {args.seq}, float32")
    head = (f"{'tp':>3} {'params/rank':>12} {'dense':>12} {'ratio':>7} {'x 1/tp':>7} {'replicated':>11} "
            f"{'max|err| tp':>12} {'max|err| sp':>12} {'resid tp':>10} {'resid sp':>10} "
            f"{'fwd+bwd tp ms':>14} {'sp ms':>8}")
    print(head)
    for r in rows:
        ratio = r["rank_bytes"] / r["dense_bytes"]
        print(f"{r['tp']:>3} {r['rank_bytes']:>12,} {r['dense_bytes']:>12,} {ratio:>7.4f} {ratio * r['tp']:>7.4f} "
              f"{r['replicated_bytes']:>11,} {r['tp_err']:>12.2e} {r['sp_err']:>12.2e} "
              f"{r['tp_act']:>10,} {r['sp_act']:>10,} {r['tp_ms']:>14.2f} {r['sp_ms']:>8.2f}")
    print("ratio = params/rank / dense; 'x 1/tp' = ratio * tp (1.0 would be a perfect split; "
          "the excess is the replicated LayerNorms and row biases)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2, 4], help="tp sizes to run locally")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per rank (1 keeps tp ranks from fighting over cores)")
    p.add_argument("--backend", default=None, help="under torchrun: the torch.distributed backend")
    args = p.parse_args()
    if "RANK" in os.environ:   # launched by torchrun / mpirun-with-env: one tp size, the world
        dist.init_process_group(args.backend)
        row = measure(args)
        if dist.get_rank() == 0:
            print_table([row], args)
        dist.destroy_process_group()
        return
    print_table([run_local(tp, args) for tp in args.tp], args)


if __name__ == "__main__":
    main()
