"""The reduction kernels at every SIMD level this CPU has, against numpy, on odd
lengths (vector bodies and scalar tails), aliasing dst with an input."""
import numpy as np
import pytest
import torch

from hcomm import _C

LEVELS = [lv for lv in ("generic", "avx2", "avx512")
          if ["generic", "avx2", "avx512"].index(lv) <= ["generic", "avx2", "avx512"].index(_C.simd_level())]


def _ptr(a):
    return a.data_ptr() if isinstance(a, torch.Tensor) else a.__array_interface__["data"][0]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "uint8", "int32", "int64"])
@pytest.mark.parametrize("op", ["sum", "prod", "min", "max"])
def test_kernel_matches_numpy(level, dtype, op):
    rng = np.random.default_rng(3)
    n = 1037
    if dtype.startswith("float"):
        a, b = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    else:
        a, b = rng.integers(-100 if dtype != "uint8" else 0, 100, n).astype(dtype), \
            rng.integers(-100 if dtype != "uint8" else 0, 100, n).astype(dtype)
    expected = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}[op](a, b)
    out = np.empty_like(a)
    _C._local_reduce(level, dtype, op, _ptr(out), _ptr(a), _ptr(b), n)
    np.testing.assert_array_equal(out, expected)  # one rounding: f16 via f32 equals numpy's f16 op
    _C._local_reduce(level, dtype, op, _ptr(a), _ptr(a), _ptr(b), n)  # dst aliases an input
    np.testing.assert_array_equal(a, expected)


@pytest.mark.parametrize("level", LEVELS)
def test_bfloat16_rounds_to_nearest_even(level):
    a = torch.randn(999).to(torch.bfloat16)
    b = torch.randn(999).to(torch.bfloat16)
    out = torch.empty_like(a)
    _C._local_reduce(level, "bfloat16", "sum", _ptr(out), _ptr(a), _ptr(b), 999)
    assert torch.equal(out, (a.float() + b.float()).to(torch.bfloat16))


@pytest.mark.parametrize("level", LEVELS)
def test_float16_specials(level):
    a = np.array([np.inf, -np.inf, np.nan, 6.0e-8, 65504, -0.0, 1e-5], np.float16)
    b = np.array([1, -1, 1, 6.0e-8, 65504, 0.0, 1e-5], np.float16)
    out = np.empty_like(a)
    _C._local_reduce(level, "float16", "sum", _ptr(out), _ptr(a), _ptr(b), len(a))
    np.testing.assert_array_equal(out, a + b)
