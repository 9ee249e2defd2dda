"""Seeded per-rank data and numpy references for the collective tests.

Every rank can rebuild every other rank's input from (seed, rank), so each rank checks
its own result against a reference it computes locally. Integers must match exactly
(sums and products wrap like numpy's); floats get a tolerance from dtype and world size.
"""
import numpy as np
import torch

DTYPES = ["float16", "bfloat16", "float32", "float64", "int8", "uint8", "int32", "int64", "bool"]
OPS = ["sum", "prod", "min", "max", "avg", "premul_sum"]


def premul(dtype):
    """The premul_sum factor used in tests: a fraction for floats, an integer otherwise."""
    return 0.5 if dtype in ("float16", "bfloat16", "float32", "float64") else 3


def ops_for(dtype):
    return ["sum", "prod", "min", "max"] if dtype == "bool" else OPS


def make(dtype, count, rank, seed, op="sum"):
    """This rank's input: a torch tensor for bfloat16, a numpy array otherwise."""
    rng = np.random.default_rng([seed, rank, count])
    if dtype == "bool":
        return rng.integers(0, 2, count).astype(bool)
    if dtype in ("int8", "uint8", "int32", "int64"):
        lo, hi = (0, 4) if op == "prod" else (-50 if dtype != "uint8" else 0, 50)
        return rng.integers(lo, hi, count).astype(dtype)
    if op == "prod":
        x = rng.uniform(0.8, 1.25, count)
    else:
        x = rng.standard_normal(count)
    if dtype == "bfloat16":
        return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    return x.astype(dtype)


def to_f64(x):
    if isinstance(x, torch.Tensor):
        return x.to(torch.float64).numpy()
    return x.astype(np.float64)


def reduce_ref(inputs, op, dtype):
    """The expected result of reducing `inputs` (one per rank) with `op`, as float64 for
    floats and in the exact (wrapping) dtype for integers."""
    n = len(inputs)
    if dtype in ("int8", "uint8", "int32", "int64", "bool"):
        stack = np.stack([np.asarray(x) for x in inputs])
        if dtype == "bool":
            return {"sum": stack.any(0), "max": stack.any(0), "prod": stack.all(0), "min": stack.all(0)}[op]
        if op in ("sum", "avg", "premul_sum"):
            s = np.sum(stack, axis=0, dtype=dtype)
            if op == "premul_sum":
                s = np.sum((stack * np.array(premul(dtype), dtype=dtype)).astype(dtype), axis=0, dtype=dtype)
            if op == "avg":
                s64 = s.astype(np.int64)
                s = (np.sign(s64) * (np.abs(s64) // n)).astype(dtype)
            return s
        if op == "prod":
            return np.prod(stack, axis=0, dtype=dtype)
        return stack.min(0) if op == "min" else stack.max(0)
    stack = np.stack([to_f64(x) for x in inputs])
    return {"sum": lambda: stack.sum(0), "avg": lambda: stack.sum(0) / n,
            "premul_sum": lambda: (stack * premul(dtype)).sum(0), "prod": lambda: stack.prod(0),
            "min": lambda: stack.min(0), "max": lambda: stack.max(0)}[op]()


def tolerance(dtype, n):
    """(rtol, atol) for a float result reduced over n ranks."""
    eps = {"float16": 1e-3, "bfloat16": 8e-3, "float32": 2e-6, "float64": 1e-14}[dtype]
    return eps * (n + 2), eps * (n + 2) * 4


def check(got, expected, dtype, n, what=""):
    if isinstance(got, torch.Tensor):
        got = got.to(torch.float64).numpy() if dtype == "bfloat16" else got.numpy()
    got = np.asarray(got)
    if dtype in ("int8", "uint8", "int32", "int64", "bool"):
        if not np.array_equal(got, expected):
            bad = np.flatnonzero(got != expected)[:5]
            raise AssertionError(f"{what}: {len(np.flatnonzero(got != expected))} wrong elements, first at "
                                 f"{bad.tolist()}: got {got[bad].tolist()} expected {np.asarray(expected)[bad].tolist()}")
        return
    rtol, atol = tolerance(dtype, n)
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=rtol, atol=atol, err_msg=what)


def empty_like(x):
    return torch.empty_like(x) if isinstance(x, torch.Tensor) else np.empty_like(x)


def zeros(dtype, count):
    if dtype == "bfloat16":
        return torch.zeros(count, dtype=torch.bfloat16)
    return np.zeros(count, dtype=dtype)


def copy(x):
    return x.clone() if isinstance(x, torch.Tensor) else x.copy()
