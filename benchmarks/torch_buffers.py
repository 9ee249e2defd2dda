"""Large allreduces on torch tensors: with and without hcomm's huge-page advice.

    python benchmarks/torch_buffers.py                  # 2 ranks, 64 MiB and 16 MiB float32
    python benchmarks/torch_buffers.py --sizes 24M --iters 30

torch's CPU allocator leaves large tensors on 4 KiB pages (numpy asks for huge pages),
and a peer's process_vm_readv pins every page it reads. hcomm collapses a large send
buffer into huge pages once it is sent a second time (csrc/transport/hugepages.h). One
job, two communicators over the same ranks: one with the advice (the default), one with
HCOMM_SHM_HUGEPAGE_BYTES=0; each has its own tensors, and the calls alternate, so the
machine's load hits both alike. Also a numpy row (huge pages from numpy itself) as the
reference. Time: the median over --iters calls on each rank (after --warmup), then the
maximum over ranks; in place (the torch backend's and DDP's case) and out of place.
"""
import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.multiprocessing as mp

MODES = ("in place", "out of place")


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _comm(rank, world, uid, advice):
    """A communicator whose shm transport reads HCOMM_SHM_HUGEPAGE_BYTES as given."""
    import hcomm

    saved = os.environ.pop("HCOMM_SHM_HUGEPAGE_BYTES", None)
    if not advice:
        os.environ["HCOMM_SHM_HUGEPAGE_BYTES"] = "0"
    try:
        return hcomm.init(rank=rank, size=world, unique_id=uid)
    finally:
        os.environ.pop("HCOMM_SHM_HUGEPAGE_BYTES", None)
        if saved is not None:
            os.environ["HCOMM_SHM_HUGEPAGE_BYTES"] = saved


def _buffers(kind, count):
    if kind == "numpy":
        return np.ones(count, np.float32), np.empty(count, np.float32)
    return torch.ones(count), torch.empty(count)


def worker(rank, args, uids, out):
    torch.set_num_threads(1)
    cases = {"torch, advice": ("torch", _comm(rank, args.ranks, uids[0], True)),
             "torch, no advice": ("torch", _comm(rank, args.ranks, uids[1], False)),
             "numpy": ("numpy", _comm(rank, args.ranks, uids[2], True))}
    rows = {}
    for nbytes in args.sizes:
        bufs = {name: _buffers(kind, nbytes // 4) for name, (kind, _) in cases.items()}
        times = {(name, mode): [] for name in cases for mode in MODES}
        for it in range(args.warmup + args.iters):
            for name, (_, comm) in cases.items():
                x, y = bufs[name]
                for mode in MODES:
                    comm.barrier()
                    t0 = time.perf_counter()
                    comm.allreduce(x, None if mode == "in place" else y, algo="halving_doubling")
                    if it >= args.warmup:
                        times[(name, mode)].append(time.perf_counter() - t0)
                    if mode == "in place":
                        x.fill(1) if isinstance(x, np.ndarray) else x.fill_(1)  # keep values bounded
        rows[nbytes] = {k: statistics.median(v) for k, v in times.items()}
    for _, comm in cases.values():
        comm.close()
    out.put((rank, rows))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--sizes", default="64M,16M", help="comma-separated sizes (default 64M,16M)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    import hcomm

    uids = [hcomm.get_unique_id() for _ in range(3)]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args, uids, out)) for r in range(args.ranks)]
    for p in procs:
        p.start()
    results = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    print(f"# {args.ranks} ranks, float32 sum halving-doubling allreduce, median of {args.iters} calls per rank, "
          f"max over ranks; load average {os.getloadavg()[0]:.1f}")
    print(f"{'size':>8} {'mode':>12} | {'torch, advice':>14} {'no advice':>10} {'numpy':>8} | {'advice gain':>11}")
    for nbytes in args.sizes:
        for mode in MODES:
            t = {name: max(r[nbytes][(name, mode)] for _, r in results) * 1e3
                 for name in ("torch, advice", "torch, no advice", "numpy")}
            print(f"{nbytes >> 20:>5} MiB {mode:>12} | {t['torch, advice']:>11.2f} ms {t['torch, no advice']:>7.2f} ms "
                  f"{t['numpy']:>5.2f} ms | {t['torch, no advice'] / t['torch, advice']:>10.2f}x")


if __name__ == "__main__":
    main()
