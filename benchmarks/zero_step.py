"""ZeRO step time against torch FSDP2 (fully_shard) and DDP, same backend, model and data.

    .venv/bin/python benchmarks/zero_step.py                      # 4 gloo ranks, bf16
    .venv/bin/python benchmarks/zero_step.py --world 2 --dtype fp32 --steps 20
    .venv/bin/python benchmarks/zero_step.py --backend hcomm       # hcomm's torch backend
    .venv/bin/python benchmarks/zero_step.py --backend nccl        # on GPUs (device cuda)

One step = forward + backward + optimizer step + zero_grad (AdamW). Both sides use the
same sharding granularity: FSDP2 wraps every Linear and the root; ZeRO stage 3 gets
units=(nn.Linear,) (LayerNorms go to the root unit). Mixed precision: bf16 parameters
and reduce-scatters with fp32 master/optimizer (FSDP2: MixedPrecisionPolicy(param_dtype=
bf16, reduce_dtype=bf16)). zero3-nocheck is stage 3 without the per-module control-flow
check (one tiny all-gather per unit per pass; see stage3.py); fsdp2-fused is FSDP2 with
AdamW(fused=True), the kernel ZeroOptimizer picks for its flat fp32 shards. The sides
are built together and alternate step by step, so every side sees the same machine load.
Reported: the median over --steps timed steps after --warmup of the slowest rank, with a
barrier before each; ratio = time / FSDP2 time (< 1 is faster); the ZeRO sides' model
state per rank (ZeroOptimizer.memory_plan(), real tensors) and, for fp32, its ratio to
16 Psi / N. The last line (RATIO ...) is the compact summary.

    .venv/bin/python benchmarks/zero_step.py --world 2 --backend hcomm --dtype fp32 \
        --mlp 1024,4096,4096,1024 --kinds fsdp2 fsdp2-fused zero3      # issue 21's figure
"""
import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from hcomm.parallel.zero import ZeroOptimizer


def make_model(hidden, layers, device, mlp=None):
    """hidden x hidden Linear + LayerNorm + GELU blocks and a head; or with mlp (widths,
    e.g. [1024, 4096, 4096, 1024]) a plain Linear + ReLU MLP of those widths."""
    torch.manual_seed(0)
    if mlp:
        mods = [m for a, b in zip(mlp, mlp[1:]) for m in (nn.Linear(a, b), nn.ReLU())][:-1]
        return nn.Sequential(*mods).to(device)
    mods = []
    for _ in range(layers):
        mods += [nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU()]
    return nn.Sequential(*mods, nn.Linear(hidden, 10)).to(device)


def fsdp2(model, dtype, world, device, **optim_kwargs):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device, (world,))
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype) if dtype != torch.float32 \
        else MixedPrecisionPolicy()
    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, **optim_kwargs)


def build(kind, args, world, device):
    model = make_model(args.hidden, args.layers, device, args.mlp)
    if kind == "fsdp2":
        return fsdp2(model, args.torch_dtype, world, device)
    if kind == "fsdp2-fused":   # the peer with torch's fused AdamW kernel too (one pass per tensor)
        return fsdp2(model, args.torch_dtype, world, device, fused=True)
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        ddp = DistributedDataParallel(model)
        return ddp, torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    stage = int(kind[4])   # zero1, zero2, zero3, zero3-nocheck
    mixed = None if args.torch_dtype == torch.float32 else args.torch_dtype
    zopt = ZeroOptimizer(model, torch.optim.AdamW, stage=stage, group=dist.group.WORLD, bucket_mb=args.bucket_mb,
                         mixed_precision=mixed, units=(nn.Linear,) if stage == 3 else None,
                         check_control_flow=kind != "zero3-nocheck", print_plan=False, lr=1e-3)
    return model, zopt


def one_step(model, opt, x, device):
    model(x).float().pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()


def worker(rank, world, port, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = "cuda" if args.backend == "nccl" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank)
    torch.set_num_threads(args.threads)
    if args.backend == "hcomm":
        import hcomm.torch  # noqa: F401 - registers the backend
    dist.init_process_group(args.backend, rank=rank, world_size=world)
    try:
        sides = {kind: build(kind, args, world, device) for kind in args.kinds}
        times = {kind: [] for kind in args.kinds}
        for s in range(args.warmup + args.steps):
            g = torch.Generator().manual_seed(s * 100 + rank)
            x = torch.randn(args.batch, args.mlp[0] if args.mlp else args.hidden, generator=g).to(device)
            for kind in args.kinds:   # alternate step by step: every side sees the same load
                dist.barrier()
                t0 = time.perf_counter()
                one_step(*sides[kind], x, device)
                dt = torch.tensor([time.perf_counter() - t0], device=device)
                dist.all_reduce(dt, op=dist.ReduceOp.MAX)   # the slowest rank's step
                if s >= args.warmup:
                    times[kind].append(float(dt))
        states = {kind: opt.memory_plan().model_state_real for kind, (_, opt) in sides.items()
                  if isinstance(opt, ZeroOptimizer)}
        if rank == 0:
            out.put(({k: statistics.median(t) for k, t in times.items()}, states))
    finally:
        dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mlp", type=lambda s: [int(w) for w in s.split(",")], default=None,
                    help="widths of a plain Linear + ReLU MLP instead, e.g. 1024,4096,4096,1024")
    ap.add_argument("--bucket-mb", type=float, default=4.0)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--kinds", nargs="+", default=["fsdp2", "ddp", "zero1", "zero2", "zero3", "zero3-nocheck"])
    args = ap.parse_args()
    args.torch_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if "fsdp2" not in args.kinds:
        args.kinds.insert(0, "fsdp2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args.world, port, args, out)) for r in range(args.world)]
    for p in procs:
        p.start()
    res, states = out.get()
    for p in procs:
        p.join()
    n = sum(p.numel() for p in make_model(args.hidden, args.layers, "cpu", args.mlp).parameters())
    print(f"\nstep time, N={args.world}, backend {args.backend}, {args.dtype}, Ψ={n:,}, batch {args.batch}, "
          f"{args.threads} thread(s) per rank, median of {args.steps} steps (sides alternate step by step)")
    print(f"{'kind':>13} {'ms/step':>9} {'vs FSDP2':>9}  model state per rank")
    for kind in args.kinds:
        state = f"  {states[kind] / 2 ** 20:,.1f} MiB" if kind in states else ""
        print(f"{kind:>13} {res[kind] * 1e3:>9.1f} {res[kind] / res['fsdp2']:>9.2f}{state}")
    ratio = " ".join(f"{k}={res[k] / res['fsdp2']:.2f}x" for k in args.kinds if k != "fsdp2")
    bound = 16 * n / args.world if args.dtype == "fp32" else None
    mem = " ".join(f"{k}_state={states[k] / bound:.3f}x16Psi/N" for k in states if k.startswith("zero3")) \
        if bound else ""
    print(f"RATIO zero_step fsdp2={res['fsdp2'] * 1e3:.0f}ms {ratio} {mem}".rstrip())


if __name__ == "__main__":
    main()
