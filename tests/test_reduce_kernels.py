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


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int8", "uint8", "int32", "int64"])
@pytest.mark.parametrize("op", ["sum", "max"])
@pytest.mark.parametrize("shift", [0, 1, 3])
def test_streamed_kernel_matches_plain(level, dtype, op, shift):
    """Streaming stores (results that are not read again soon): unaligned heads, 4 KiB
    blocks and tails, against numpy; torch for bfloat16, which numpy lacks."""
    torch.manual_seed(5)
    n = 3 * 4096 + 77
    tdt = getattr(torch, dtype)
    if tdt.is_floating_point:
        a, b = torch.randn(n).to(tdt), torch.randn(n).to(tdt)
    else:
        lo = 0 if dtype == "uint8" else -100
        a, b = torch.randint(lo, 100, (n,), dtype=tdt), torch.randint(lo, 100, (n,), dtype=tdt)
    fn = {"sum": torch.add, "max": torch.maximum}[op]
    expected = fn(a.float(), b.float()).to(tdt) if tdt in (torch.float16, torch.bfloat16) else fn(a, b)
    out = torch.full((n + shift,), 7, dtype=tdt)[shift:]  # dst starts off 32-byte alignment
    _C._local_reduce(level, dtype, op, _ptr(out), _ptr(a), _ptr(b), n, streamed=True)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("level", LEVELS)
def test_streamed_kernel_on_a_dst_that_never_aligns(level):
    """float64 at an odd 4-byte offset can never reach 32-byte alignment: plain stores."""
    raw = np.zeros(8 * 1001 + 4, np.uint8)
    out = raw[4:4 + 8 * 1001].view(np.float64)
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal(1001), rng.standard_normal(1001)
    _C._local_reduce(level, "float64", "sum", _ptr(out), _ptr(a), _ptr(b), 1001, streamed=True)
    np.testing.assert_array_equal(out, a + b)
