"""ZeRO model-state bytes and communication per step, measured against the formulas.

    .venv/bin/python benchmarks/zero_memory.py                 # 4 gloo ranks, ~1.6M params
    .venv/bin/python benchmarks/zero_memory.py --world 2 --hidden 256 --layers 4

For each stage x dtype it trains a few AdamW steps on N ranks, then reports on rank 0:
- model state: real bytes of the tensors this rank holds after a step (parameters,
  gradient shards, fp32 master, optimizer state; ZeroOptimizer.memory_plan()) beside
  the formula (16Ψ/N for stage 3, 2Ψ + 14Ψ/N for stage 2 bf16, ...), and the ratio;
- bound: the issue's acceptance bound (1.1 x formula) and whether it holds;
- comm/Ψ: logical bytes of one step's reduce-scatters and all-gathers (buffer sizes,
  see hcomm/parallel/zero/comm.py) in units of Ψ x bytes per element: 2 for stages 1
  and 2, 3 for stage 3 less the unit backward starts with (it stays gathered from forward,
  from the second step on); the stage-3 control-flow checks are listed apart (bytes, calls);
- storages: a second, independent count of the same model state: the distinct storages
  behind parameters, gradients, shards and optimizer state (by storage pointer);
- transient peaks: gathered parameter buffers and communication buckets.
"""
import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from hcomm.parallel.zero import ZeroOptimizer

BOUND = 1.1


def make_model(hidden, layers):
    torch.manual_seed(0)
    mods = []
    for _ in range(layers):
        mods += [nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU()]
    return nn.Sequential(*mods, nn.Linear(hidden, 10))


def train_steps(model, zopt, steps, rank, hidden, keep_grads=False):
    for s in range(steps):
        g = torch.Generator().manual_seed(s * 100 + rank)
        x = torch.randn(8, hidden, generator=g)
        model(x).float().pow(2).mean().backward()
        zopt.step()
        if not (keep_grads and s == steps - 1):
            zopt.zero_grad()


def storage_bytes(model, zopt):
    """Independent count: distinct storages behind the model's parameters and gradients, the
    shards (master, grad, stage-3 local copy) and the optimizer state, by storage pointer."""
    tensors = [t for p in model.parameters() for t in (p, p.grad) if t is not None]
    for s in zopt.shards:
        tensors += [t for t in (s.master, s.grad) if t is not None]
        tensors += [t for t in zopt.inner.state.get(s.master, {}).values() if torch.is_tensor(t)]
    tensors += [u.local for u in getattr(zopt.engine, "units", [])]
    seen = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def measure(rank, stage, dtype, args):
    model = make_model(args.hidden, args.layers)
    zopt = ZeroOptimizer(model, torch.optim.AdamW, stage=stage, group=dist.group.WORLD, bucket_mb=args.bucket_mb,
                         mixed_precision=None if dtype == torch.float32 else dtype,
                         print_plan=args.print_plans and rank == 0, lr=1e-3)
    train_steps(model, zopt, 2, rank, args.hidden)
    zopt.comm.reset_counters()
    train_steps(model, zopt, 1, rank, args.hidden, keep_grads=True)   # measured before zero_grad
    plan = zopt.memory_plan()
    elem = torch.empty((), dtype=dtype).element_size()
    b = zopt.comm.bytes
    return {"stage": stage, "dtype": str(dtype).replace("torch.", ""), "psi": zopt.psi,
            "formula": plan.row("model state").formula, "formula_bytes": plan.model_state_formula,
            "real": plan.model_state_real, "storages": storage_bytes(model, zopt),
            "comm_psi": (b["reduce_scatter"] + b["all_gather"]) / (zopt.psi * elem),
            "check_bytes": b["check"], "check_calls": zopt.comm.calls["check"],
            "gathered": plan.row("gathered buffers").real_bytes, "buckets": plan.row("comm buckets").real_bytes,
            "plan": plan.format()}


def worker(rank, world, port, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if args.backend == "hcomm":
        import hcomm.torch  # noqa: F401 - registers the backend
    dist.init_process_group(args.backend, rank=rank, world_size=world)
    try:
        rows = [measure(rank, stage, dtype, args) for dtype in args.dtypes for stage in args.stages]
        if rank == 0:
            out.put(rows)
    finally:
        dist.destroy_process_group()


def print_table(rows, world, backend):
    print(f"\nZeRO model state per rank, N={world}, Ψ={rows[0]['psi']:,} ({backend}, CPU); bound = {BOUND} x formula")
    print(f"{'stage':>5} {'dtype':>9} {'formula':>12} {'formula B':>12} {'real B':>12} {'real/formula':>12} "
          f"{'<= bound':>8} {'storages B':>12} {'comm/Ψ':>7} {'check B (calls)':>16} "
          f"{'gathered B':>11} {'buckets B':>10}")
    for r in rows:
        ratio = r["real"] / r["formula_bytes"]
        print(f"{r['stage']:>5} {r['dtype']:>9} {r['formula']:>12} {r['formula_bytes']:>12,.0f} {r['real']:>12,} "
              f"{ratio:>12.3f} {str(ratio <= BOUND):>8} {r['storages']:>12,} {r['comm_psi']:>7.3f} "
              f"{r['check_bytes']:>9,} ({r['check_calls']:>3}) {r['gathered']:>11,} {r['buckets']:>10,}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--backend", default="gloo", help="gloo or hcomm (CPU)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--bucket-mb", type=float, default=1.0)
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--fp32", action="store_true", help="also measure fp32 (default: bf16 only)")
    ap.add_argument("--print-plans", action="store_true", help="print each memory plan at construction")
    args = ap.parse_args()
    args.dtypes = [torch.bfloat16] + ([torch.float32] if args.fp32 else [])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args.world, port, args, out)) for r in range(args.world)]
    for p in procs:
        p.start()
    rows = out.get()
    for p in procs:
        p.join()
    print(rows[-1]["plan"])
    print_table(rows, args.world, args.backend)


if __name__ == "__main__":
    main()
