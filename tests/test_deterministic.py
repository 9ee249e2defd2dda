"""HCOMM_DETERMINISTIC=1: every algorithm, segment size, transport and host layout returns
the sum of the ranks' inputs in rank order 0..n-1 in the accumulation type, bit for bit,
for allreduce, reduce and reduce_scatter(v); and what one process computes by summing
the same arrays in rank order with numpy.

Layouts come from a topology file (ranks of one simulated host talk shared memory, the
others tcp), so one layout with a rank per host runs everything over tcp."""
import numpy as np
import pytest

from harness import run_comm
from test_hierarchical import topo_file
from test_numerics import as_array, bits, fold_in_rank_order, inputs

COUNTS = [1, 5, 1001, 90_001]  # 90_001 float32: the halving-doubling switch and several 64 KiB pieces
ALGOS = ["ring", "tree", "halving_doubling", "hierarchical", ""]


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch):
    # Ordered folds go in pieces (ordered.cc): small ones so that the counts below cross many.
    monkeypatch.setenv("HCOMM_ORDERED_PIECE_BYTES", "65536")
    # ...and an allreduce chunk's block in fold pieces smaller still (several per block).
    monkeypatch.setenv("HCOMM_ORDERED_FOLD_BYTES", "12000")


def _allreduce_core(comm, x, algo):
    """Through the core, so that 'hierarchical' can be forced too."""
    from hcomm._buffers import as_buffer

    b = as_buffer(x, "input", writable=True)
    comm._c.allreduce(b.ptr, b.ptr, b.count, b.dtype, "sum", 1.0, algo, False)


def _body(comm, dtype, seed):
    got = {}
    n, r = comm.size, comm.rank
    for count in COUNTS:
        stack = inputs(dtype, count, n, seed)
        for algo in ALGOS:
            x = as_array(dtype, stack[r])
            _allreduce_core(comm, x, algo)
            got[("allreduce", count, algo)] = bits(x)
        root = count % n
        out = as_array(dtype, np.zeros(count, np.float32))
        comm.reduce(as_array(dtype, stack[r]), out, root=root)
        if r == root:
            got[("reduce", count)] = bits(out)
        counts = [(count + q) // n for q in range(n)]  # uneven, sums to count
        mine = as_array(dtype, np.zeros(counts[r], np.float32))
        comm.reduce_scatterv(as_array(dtype, stack[r]), mine, counts)
        got[("reduce_scatterv", count)] = (bits(mine), sum(counts[:r]))
    return got


def _check(out, dtype, n, seed, what):
    for count in COUNTS:
        want = bits(as_array(dtype, fold_in_rank_order(inputs(dtype, count, n, seed))))
        for r in range(n):
            for algo in ALGOS:
                got = out[r][("allreduce", count, algo)]
                assert np.array_equal(got, want), \
                    f"{what}: allreduce {algo or 'auto'} count={count} rank {r}: {np.count_nonzero(got != want)} differ"
            if ("reduce", count) in out[r]:
                assert np.array_equal(out[r][("reduce", count)], want), f"{what}: reduce count={count} root {r}"
            mine, lo = out[r][("reduce_scatterv", count)]
            assert np.array_equal(mine, want[lo:lo + len(mine)]), f"{what}: reduce_scatterv count={count} rank {r}"


LAYOUTS = {"one host": None, "2x2": [2, 2], "3+2": [3, 2], "1 per host (tcp)": [1, 1, 1], "2x3": [3, 3],
           "2+2+3": [2, 2, 3]}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_algorithm_and_layout_gives_the_rank_order_sum(layout, tmp_path, monkeypatch):
    monkeypatch.setenv("HCOMM_DETERMINISTIC", "1")
    sizes = LAYOUTS[layout]
    n = sum(sizes) if sizes else 5
    if sizes:
        monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, sizes))
    for dtype, seed in (("float32", 1), ("bfloat16", 2)):
        _check(run_comm(_body, n, args=(dtype, seed)), dtype, n, seed, f"{layout} {dtype}")


def test_segment_sizes_do_not_change_the_bits(monkeypatch):
    monkeypatch.setenv("HCOMM_DETERMINISTIC", "1")
    for ring, tree, piece, fold in (("4096", "1024", "4096", "1000"), ("1048576", "65536", "8388608", "262144")):
        monkeypatch.setenv("HCOMM_ORDERED_FOLD_BYTES", fold)
        monkeypatch.setenv("HCOMM_RING_SEGMENT_BYTES", ring)
        monkeypatch.setenv("HCOMM_TREE_SEGMENT_BYTES", tree)
        monkeypatch.setenv("HCOMM_ORDERED_PIECE_BYTES", piece)
        _check(run_comm(_body, 4, args=("float32", 3)), "float32", 4, 3, f"segments {ring}/{tree}")


def _f64_body(comm):
    x = np.random.default_rng([4, comm.rank]).standard_normal(3333) * 1e6
    comm.allreduce(x, algo="tree")
    return x


def test_float64_accumulates_in_float64_in_rank_order(monkeypatch):
    monkeypatch.setenv("HCOMM_DETERMINISTIC", "1")
    out = run_comm(_f64_body, 6, mode="process")  # shared memory between processes
    acc = np.random.default_rng([4, 0]).standard_normal(3333) * 1e6
    for q in range(1, 6):
        acc = acc + np.random.default_rng([4, q]).standard_normal(3333) * 1e6
    for r in range(6):
        assert np.array_equal(out[r].view(np.uint64), acc.view(np.uint64)), f"rank {r}"


def _ddp_body(rank, world_size, topo):
    import os

    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    assert os.environ.get("HCOMM_DETERMINISTIC") == "1"
    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 8)),
                bucket_cap_mb=0.05)  # several buckets, so several allreduces
    g = torch.Generator().manual_seed(100 + rank)
    x, y = torch.randn(32, 64, generator=g), torch.randn(32, 8, generator=g)
    torch.nn.functional.mse_loss(model(x), y).backward()
    return [p.grad.numpy().copy() for p in model.parameters()]  # numpy: tensors would travel as shared fds


def _local_grads(world_size):
    """What one process computes: each rank's gradient, summed in rank order, / world_size."""
    import torch

    per_rank = []
    for rank in range(world_size):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 8))
        g = torch.Generator().manual_seed(100 + rank)
        x, y = torch.randn(32, 64, generator=g), torch.randn(32, 8, generator=g)
        torch.nn.functional.mse_loss(model(x), y).backward()
        per_rank.append([p.grad.clone() for p in model.parameters()])
    out = []
    for i in range(len(per_rank[0])):
        acc = per_rank[0][i].clone()
        for r in range(1, world_size):
            acc = acc + per_rank[r][i]
        out.append((acc / world_size).numpy())
    return out


def test_ddp_gradients_repeat_bit_for_bit_across_layouts(tmp_path, monkeypatch):
    from harness import run_torch

    monkeypatch.setenv("HCOMM_DETERMINISTIC", "1")
    want = _local_grads(4)
    for sizes in (None, [1, 3]):  # one host (shm); 1 + 3 hosts (tcp between, shm inside)
        if sizes:
            monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, sizes))
        out = run_torch(_ddp_body, 4, backend="hcomm", args=(sizes,))
        for r in range(4):
            for got, exp in zip(out[r], want):
                assert np.array_equal(got.view(np.uint32), exp.view(np.uint32)), f"layout {sizes} rank {r}"
