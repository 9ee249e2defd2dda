"""Numerics of the reductions, against numpy, bit for bit.

float16 / bfloat16 SUM: every algorithm returns the float32 fold of the ranks' inputs,
rounded once; that is within one 16-bit ulp of the exact sum rounded once (checked
against float64). Without HCOMM_DETERMINISTIC the fold takes the inputs as they arrive;
for these inputs (a few binades) the float32 sums in other orders (six random
permutations per case, checked once by hand) round to the same 16-bit bits, so the bits
still equal the rank-order fold's (test_fold_arrival.py uses inputs where order matters). HCOMM_DETERMINISTIC=1: every floating SUM (float32 too) is the
fold in rank order in the accumulation type, the same bits whatever the algorithm,
segment size or layout (test_deterministic.py covers layouts and transports).

The references are computed here, one process, from numpy arrays: the rank-order fold
(`acc = x0; acc = acc + x1; ...` in float32) and the exact sum (float64, which holds
the sum of eight 16-bit values exactly enough for the one-ulp bound).
"""
import numpy as np
import pytest
import torch

from harness import run_comm

ALGOS = ["ring", "tree", "halving_doubling"]


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch):
    # Ordered folds go in pieces (ordered.cc): small ones so that the counts below cross many.
    monkeypatch.setenv("HCOMM_ORDERED_PIECE_BYTES", "65536")
    # ...and an allreduce chunk's block in fold pieces smaller still (several per block).
    monkeypatch.setenv("HCOMM_ORDERED_FOLD_BYTES", "12000")
# Odd counts around the halving-doubling switch (256 KiB) and the tree halves.
COUNTS = [1, 7, 1001, 70_001, 200_003]  # the last two: several 64 KiB pieces and chunks (ordered.cc)


def inputs(dtype, count, n, seed):
    """Every rank's input as float32 values already representable in `dtype`."""
    rng = np.random.default_rng([seed, n, count])
    x = rng.standard_normal((n, count)).astype(np.float32) * np.float32(4)
    return np.stack([representable(dtype, v) for v in x])


def representable(dtype, f32):
    """f32 rounded to `dtype` and back: values the 16-bit dtype holds exactly."""
    if dtype == "float32":
        return f32
    y = to16(dtype, f32)
    return y.float().numpy() if isinstance(y, torch.Tensor) else y.astype(np.float32)


def to16(dtype, f32):
    """float32 -> the 16-bit dtype, rounded to nearest-even (torch does it for bfloat16)."""
    if dtype == "float16":
        return f32.astype(np.float16)
    return torch.from_numpy(np.ascontiguousarray(f32)).to(torch.bfloat16)


def as_array(dtype, f32row):
    if dtype == "float32":
        return f32row.copy()
    return to16(dtype, f32row)


def bits(x):
    if isinstance(x, torch.Tensor):
        return x.view(torch.int16).numpy().copy()
    return x.view(np.uint32 if x.dtype == np.float32 else np.uint16).copy()


def fold_in_rank_order(stack):
    acc = stack[0].astype(np.float32).copy()
    for row in stack[1:]:
        acc = acc + row.astype(np.float32)  # float32 + float32, rounded per add, in rank order
    return acc


def ulp16(dtype, values):
    """The spacing of the 16-bit dtype at |values| (float64)."""
    mant = 10 if dtype == "float16" else 7
    tiny = -14 if dtype == "float16" else -126
    e = np.floor(np.log2(np.maximum(np.abs(values), 2.0 ** tiny)))
    return 2.0 ** (e - mant)


def _allreduce_body(comm, dtype, counts, algos, seed):
    results = {}
    for count in counts:
        stack = inputs(dtype, count, comm.size, seed)
        for algo in algos:
            x = as_array(dtype, stack[comm.rank])
            comm.allreduce(x, algo=algo)
            results[(count, algo)] = bits(x)
    return results


def _expected_bits(dtype, stack):
    folded = fold_in_rank_order(stack)
    return bits(as_array(dtype, folded)), folded


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_16bit_sum_is_the_float32_fold_rounded_once(dtype, n):
    seed = 11
    out = run_comm(_allreduce_body, n, args=(dtype, COUNTS, ALGOS, seed))
    for count in COUNTS:
        stack = inputs(dtype, count, n, seed)
        want, folded = _expected_bits(dtype, stack)
        exact = stack.astype(np.float64).sum(0)
        for algo in ALGOS:
            for r in range(n):
                got = out[r][(count, algo)]
                assert np.array_equal(got, want), f"{dtype} n={n} count={count} {algo} rank {r}: " \
                    f"{np.count_nonzero(got != want)} elements differ from the float32 fold in rank order"
        # and that fold is within one 16-bit ulp of the exact sum
        got = as_array(dtype, folded)
        got = got.to(torch.float64).numpy() if isinstance(got, torch.Tensor) else got.astype(np.float64)
        assert np.all(np.abs(got - exact) <= ulp16(dtype, exact)), f"{dtype} n={n} count={count}"


def _rooted_body(comm, dtype, count, seed):
    stack = inputs(dtype, count, comm.size, seed)
    got = {}
    for root in range(comm.size):
        out = as_array(dtype, np.zeros(count, np.float32))
        comm.reduce(as_array(dtype, stack[comm.rank]), out, root=root)
        if comm.rank == root:
            got[("reduce", root)] = bits(out)
    counts = [count // comm.size + (1 if q < count % comm.size else 0) for q in range(comm.size)]
    mine = as_array(dtype, np.zeros(counts[comm.rank], np.float32))
    comm.reduce_scatterv(as_array(dtype, stack[comm.rank]), mine, counts)
    got["reduce_scatterv"] = bits(mine)
    return got, counts


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("n", [3, 6, 7])
def test_16bit_reduce_and_reduce_scatter_round_once(dtype, n):
    count, seed = 100_003, 5  # several 64 KiB pieces per block
    out = run_comm(_rooted_body, n, args=(dtype, count, seed))
    want, _ = _expected_bits(dtype, inputs(dtype, count, n, seed))
    for r in range(n):
        got, counts = out[r]
        assert np.array_equal(got[("reduce", r)], want), f"reduce root {r}"
        lo = sum(counts[:r])
        assert np.array_equal(got["reduce_scatterv"], want[lo:lo + counts[r]]), f"reduce_scatterv rank {r}"


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8])
def test_deterministic_float32_is_the_rank_order_sum_for_every_algorithm(n, monkeypatch):
    monkeypatch.setenv("HCOMM_DETERMINISTIC", "1")
    seed, counts = 3, [1, 1001, 70_001]
    out = run_comm(_allreduce_body, n, args=("float32", counts, ALGOS + [None], seed))
    for count in counts:
        stack = inputs("float32", count, n, seed)
        want = bits(fold_in_rank_order(stack))
        for algo in ALGOS + [None]:
            for r in range(n):
                got = out[r][(count, algo)]
                assert np.array_equal(got, want), f"n={n} count={count} {algo} rank {r}: " \
                    f"{np.count_nonzero(got != want)} of {count} differ from the rank-order sum"


def _small_ops_body(comm):
    """16-bit ops other than SUM: PROD folds in float32 too; MIN/MAX are exact anyway."""
    res = {}
    for dtype in ("float16", "bfloat16"):
        rng = np.random.default_rng([9, comm.size])
        stack = rng.uniform(0.8, 1.25, (comm.size, 999)).astype(np.float32)
        stack = np.stack([representable(dtype, v) for v in stack])
        for op in ("prod", "max", "avg"):
            x = as_array(dtype, stack[comm.rank])
            comm.allreduce(x, op=op, algo="ring")
            res[(dtype, op)] = (bits(x), stack)
    return res


def test_16bit_prod_min_max_avg():
    n = 5
    out = run_comm(_small_ops_body, n)
    for (dtype, op), (got, stack) in out[0].items():
        if op == "prod":
            acc = stack[0].copy()
            for row in stack[1:]:
                acc = acc * row
        elif op == "max":
            acc = stack.max(0)
        else:  # avg: the sum rounded once, then divided (a second rounding)
            s = as_array(dtype, fold_in_rank_order(stack))
            s = s.float().numpy() if isinstance(s, torch.Tensor) else s.astype(np.float32)
            acc = s / np.float32(n)
        assert np.array_equal(got, bits(as_array(dtype, acc))), f"{dtype} {op}"
        for r in range(1, n):
            assert np.array_equal(out[r][(dtype, op)][0], got)


@pytest.mark.parametrize("value, ok", [("avx3", False), ("AVX2", False), ("generic", True), ("avx2", True)])
def test_hcomm_simd_values_are_checked(value, ok):
    """An unknown HCOMM_SIMD raises, as every other knob does (it used to pick AVX-512)."""
    import os
    import subprocess
    import sys

    code = "import hcomm._C as c; print(c.simd_level())"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HCOMM_SIMD": value},
                          capture_output=True, text=True, timeout=60)
    if ok:
        assert proc.returncode == 0 and proc.stdout.strip() in ("generic", "avx2"), proc.stderr
    else:
        assert proc.returncode != 0 and f"HCOMM_SIMD: unknown value '{value}' (generic, avx2, avx512)" in proc.stderr
