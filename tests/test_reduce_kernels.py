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


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "uint8", "int32", "int64"])
@pytest.mark.parametrize("op", ["sum", "max"])
def test_streaming_reduce_equals_numpy_at_every_alignment(dtype, op):
    """reduceStreaming (used by shm for messages beyond the caches) writes the same
    elements as numpy for any start alignment of dst and lengths around its block size."""
    rng = np.random.default_rng(5)
    itemsize = np.dtype(dtype).itemsize
    for n in (0, 1, 7, 8192 // itemsize - 1, 8192 // itemsize + 3, 3 * 8192 // itemsize + 5):
        for shift in range(0, 17, max(1, itemsize)):
            k = shift // itemsize
            a = rng.integers(0, 50, n + 32).astype(dtype)
            b = rng.integers(0, 50, n + 32).astype(dtype)
            out = np.full(n + 32, 77, dtype)
            _C._local_reduce_streaming(dtype, op, _ptr(out) + k * itemsize, _ptr(a), _ptr(b), n)
            expected = (np.add if op == "sum" else np.maximum)(a[:n], b[:n])
            np.testing.assert_array_equal(out[k:k + n], expected)
            assert (out[:k] == 77).all() and (out[k + n:] == 77).all()  # nothing outside dst
            _C._local_reduce_streaming(dtype, op, _ptr(a), _ptr(a), _ptr(b), n)  # in place
            np.testing.assert_array_equal(a[:n], expected)
