"""16-bit folds without HCOMM_DETERMINISTIC take the contributions as they arrive
(algo/ordered.cc, foldAsArrived); with it they keep the rank order, bit for bit.

The inputs span many binades and the last rank's cancels the first's, so that float32
partial sums are inexact and the order of the additions changes the 16-bit bits (checked
below: the rank-order fold and rank 2's own-first fold differ). Without the mode the result must still be the float32 sum rounded once, in
some order: within one 16-bit ulp of the exact sum (float64, which holds these sums
exactly) plus what n-1 float32 additions in any order may lose, (n-1) * 2^-24 * sum|x|
(at these spans a few elements cancel so far that the rank-order fold itself is more
than one ulp off); the same on every rank. Partials rounded to 16 bits at a hop lose
~2^-11 of a partial, far more. With the mode it must be the rank-order fold exactly.
"""
import numpy as np
import pytest
import torch

from harness import run_comm
from test_numerics import ALGOS, as_array, bits, fold_in_rank_order, representable, ulp16

COUNTS = [1, 7, 1001, 70_001, 200_003]


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch):
    # Several fold pieces and chunks per call at these counts (as in test_numerics.py).
    monkeypatch.setenv("HCOMM_ORDERED_PIECE_BYTES", "65536")
    monkeypatch.setenv("HCOMM_ORDERED_FOLD_BYTES", "12000")


def wide_inputs(dtype, count, n, seed):
    """Every rank's input, representable in `dtype`, magnitudes 2^-k..2^k: float16 keeps
    to its normal range, bfloat16 spans more binades than a float32 mantissa holds."""
    rng = np.random.default_rng([seed, n, count, 7])
    span = 12 if dtype == "float16" else 20
    x = rng.standard_normal((n, count)) * np.exp2(rng.integers(-span, span + 1, (n, count)))
    x = np.stack([representable(dtype, v) for v in x.astype(np.float32)])
    x[-1] = -x[0]  # cancels the first: what a float32 partial lost next to it shows in 16 bits
    return x


def as_f64(dtype, x):
    return x.to(torch.float64).numpy() if isinstance(x, torch.Tensor) else x.astype(np.float64)


def from_bits(dtype, b):
    if dtype == "float16":
        return b.view(np.float16).astype(np.float64)
    return torch.from_numpy(b).view(torch.bfloat16).to(torch.float64).numpy()


def _body(comm, dtype, counts, algos, seed):
    res = {}
    for count in counts:
        stack = wide_inputs(dtype, count, comm.size, seed)
        for algo in algos:
            x = as_array(dtype, stack[comm.rank])
            comm.allreduce(x, algo=algo)
            res[(count, algo)] = bits(x)
        sizes = [count // comm.size + (1 if q < count % comm.size else 0) for q in range(comm.size)]
        mine = as_array(dtype, np.zeros(sizes[comm.rank], np.float32))
        comm.reduce_scatterv(as_array(dtype, stack[comm.rank]), mine, sizes)
        res[(count, "reduce_scatterv")] = (bits(mine), sum(sizes[:comm.rank]))
        out = as_array(dtype, np.zeros(count, np.float32))
        comm.reduce(as_array(dtype, stack[comm.rank]), out, root=comm.size - 1)
        res[(count, "reduce")] = bits(out)
    return res


def test_wide_inputs_make_the_order_matter():
    """Else the tests below could not tell one order from another."""
    for dtype in ("float16", "bfloat16"):
        stack = wide_inputs(dtype, 70_001, 5, 1)
        forward = bits(as_array(dtype, fold_in_rank_order(stack)))
        own_first = bits(as_array(dtype, fold_in_rank_order(stack[[2, 0, 1, 3, 4]])))
        assert np.count_nonzero(forward != own_first) > 20, dtype


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_16bit_sum_in_arrival_order_is_rounded_once(dtype, n, monkeypatch):
    monkeypatch.delenv("HCOMM_DETERMINISTIC", raising=False)
    seed = 21
    out = run_comm(_body, n, args=(dtype, COUNTS, ALGOS + [None], seed))
    for count in COUNTS:
        stack = wide_inputs(dtype, count, n, seed).astype(np.float64)
        exact = stack.sum(0)
        tol = ulp16(dtype, exact) + (n - 1) * 2.0 ** -24 * np.abs(stack).sum(0)
        for algo in ALGOS + [None]:
            got = out[0][(count, algo)]
            err = np.abs(from_bits(dtype, got) - exact)
            assert np.all(err <= tol), f"{dtype} n={n} count={count} {algo}: " \
                f"{np.count_nonzero(err > tol)} elements further from the exact sum than a float32 sum rounded once"
            for r in range(1, n):
                assert np.array_equal(out[r][(count, algo)], got), f"{algo}: rank {r} differs from rank 0"
        for r in range(n):
            got, lo = out[r][(count, "reduce_scatterv")]
            err = np.abs(from_bits(dtype, got) - exact[lo:lo + got.size])
            assert np.all(err <= tol[lo:lo + got.size]), f"{dtype} n={n} count={count} reduce_scatterv rank {r}"
        err = np.abs(from_bits(dtype, out[n - 1][(count, "reduce")]) - exact)
        assert np.all(err <= tol), f"{dtype} n={n} count={count} reduce"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("n", [3, 5])
def test_deterministic_16bit_keeps_the_rank_order(dtype, n, monkeypatch):
    monkeypatch.setenv("HCOMM_DETERMINISTIC", "1")
    seed = 4
    out = run_comm(_body, n, args=(dtype, COUNTS, ALGOS + [None], seed))
    for count in COUNTS:
        want = bits(as_array(dtype, fold_in_rank_order(wide_inputs(dtype, count, n, seed))))
        for algo in ALGOS + [None]:
            for r in range(n):
                got = out[r][(count, algo)]
                assert np.array_equal(got, want), f"{dtype} n={n} count={count} {algo} rank {r}: " \
                    f"{np.count_nonzero(got != want)} elements differ from the rank-order fold"
        for r in range(n):
            got, lo = out[r][(count, "reduce_scatterv")]
            assert np.array_equal(got, want[lo:lo + got.size]), f"reduce_scatterv rank {r}"
        assert np.array_equal(out[n - 1][(count, "reduce")], want), "reduce"
