"""The fused 16-bit kernels (csrc/reduce/half_fused.inc) at every SIMD level this CPU
has, against numpy bit for bit: plain float16/bfloat16 reductions and every form of a
fold step (reduce/memory.h's accumulate: a none / 16-bit / float32, dst 16-bit / float32),
on lengths that leave every tail (vector bodies of 8 and 16 lanes), with NaN, infinities,
subnormals, signed zeros and values that overflow or round at the halfway point."""
import numpy as np
import pytest
import torch

from hcomm import _C

LEVELS = [lv for lv in ("generic", "avx2", "avx512")
          if ["generic", "avx2", "avx512"].index(lv) <= ["generic", "avx2", "avx512"].index(_C.simd_level())]
LENGTHS = [1, 7, 15, 16, 17, 33, 1037]
OPS = {"sum": np.add, "prod": np.multiply,
       # the kernels' Min(a, b) = b < a ? b : a, Max(a, b) = a < b ? b : a (NaN order as the scalar code)
       "min": lambda a, b: np.where(b < a, b, a), "max": lambda a, b: np.where(a < b, b, a)}


def _ptr(a):
    return a.__array_interface__["data"][0]


def specials(dtype):
    """16-bit bit patterns worth a test: NaNs (quiet, signalling, negative), infinities,
    signed zeros, the smallest subnormal, the largest finite."""
    if dtype == "float16":
        return np.array([0x7e00, 0x7c01, 0xfe00, 0x7c00, 0xfc00, 0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x7bff,
                         0xfbff, 0x3c00], np.uint16)
    return np.array([0x7fc0, 0x7f81, 0xffc0, 0x7f80, 0xff80, 0x0000, 0x8000, 0x0001, 0x8001, 0x007f, 0x7f7f,
                     0xff7f, 0x3f80], np.uint16)


def random16(dtype, n, rng):
    """n 16-bit patterns: normal values of mixed scale, with the specials sprinkled in."""
    f = (rng.standard_normal(n) * np.exp2(rng.integers(-20, 16, n))).astype(np.float32)
    x = to16(dtype, f)
    s = specials(dtype)
    idx = rng.choice(n, size=min(n, len(s)), replace=False)
    x[idx] = s[: len(idx)]
    return x


def to16(dtype, f32):
    """float32 -> 16-bit patterns, rounded once to nearest-even (numpy for float16, torch
    for bfloat16, which numpy lacks)."""
    if dtype == "float16":
        with np.errstate(over="ignore"):  # past 65504: infinity, as the kernels round
            return np.asarray(f32, np.float32).astype(np.float16).view(np.uint16)
    return torch.from_numpy(np.ascontiguousarray(f32, np.float32)).to(torch.bfloat16).view(torch.int16).numpy() \
        .view(np.uint16)


def widen(dtype, x16):
    if dtype == "float16":
        return x16.view(np.float16).astype(np.float32)
    return (x16.astype(np.uint32) << 16).view(np.float32)


def same_bits16(dtype, got, want, what):
    """Equal bit for bit, except that NaN payloads only need to be NaN (quieted)."""
    g, w = widen(dtype, got), widen(dtype, want)
    nan = np.isnan(w)
    assert np.array_equal(np.isnan(g), nan), what
    assert np.array_equal(got[~nan], want[~nan]), f"{what}: {np.count_nonzero(got[~nan] != want[~nan])} differ"


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("n", LENGTHS)
def test_fold_steps_match_numpy(level, dtype, op, n):
    rng = np.random.default_rng([n, len(op), len(dtype)])
    a16, b16 = random16(dtype, n, rng), random16(dtype, n, rng)
    fa16, fb = widen(dtype, a16), widen(dtype, b16)
    with np.errstate(all="ignore"):
        a32 = widen(dtype, random16(dtype, n, rng)) * np.float32(3)  # a float32 partial, not 16-bit-exact
        cases = {  # (a, a_wide) -> the float32 value before the (optional) rounding
            "none": (None, False, fb),
            "half": (a16, False, OPS[op](fa16, fb)),
            "wide": (a32, True, OPS[op](a32, fb)),
        }
    for name, (a, a_wide, t) in cases.items():
        ptr_a = _ptr(a) if a is not None else 0
        wide_out = np.full(n, 7, np.float32)
        _C._local_accumulate(level, dtype, op, _ptr(wide_out), True, ptr_a, a_wide, _ptr(b16), n)
        nan = np.isnan(t)
        assert np.array_equal(np.isnan(wide_out), nan), f"{name} wide"
        assert np.array_equal(wide_out[~nan].view(np.uint32), t[~nan].view(np.uint32)), f"{name} wide"
        out16 = np.full(n, 7, np.uint16)
        _C._local_accumulate(level, dtype, op, _ptr(out16), False, ptr_a, a_wide, _ptr(b16), n)
        same_bits16(dtype, out16, to16(dtype, t), f"{level} {dtype} {op} n={n} a={name} rounded")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_plain_16bit_reduce_and_aliasing(level, dtype):
    """reduce() of 16-bit inputs (the fused kernel with no float32 side), dst aliasing a
    and, as a fold step, a float32 partial updated in place."""
    rng = np.random.default_rng(11)
    n = 1037
    a16, b16 = random16(dtype, n, rng), random16(dtype, n, rng)
    with np.errstate(all="ignore"):
        t = widen(dtype, a16) + widen(dtype, b16)
    want = to16(dtype, t)
    out = np.empty_like(a16)
    _C._local_reduce(level, dtype, "sum", _ptr(out), _ptr(a16), _ptr(b16), n)
    same_bits16(dtype, out, want, "reduce")
    _C._local_reduce(level, dtype, "sum", _ptr(a16), _ptr(a16), _ptr(b16), n)
    same_bits16(dtype, a16, want, "reduce in place")
    acc = widen(dtype, random16(dtype, n, rng))
    with np.errstate(all="ignore"):
        t2 = acc + widen(dtype, b16)
    _C._local_accumulate(level, dtype, "sum", _ptr(acc), True, _ptr(acc), True, _ptr(b16), n)
    nan = np.isnan(t2)
    assert np.array_equal(acc[~nan].view(np.uint32), t2[~nan].view(np.uint32)) and np.array_equal(np.isnan(acc), nan)


@pytest.mark.parametrize("level", LEVELS)
def test_halfway_and_overflow_rounding(level):
    """Sums that land exactly between two 16-bit values round to even; sums past the
    largest finite value become infinity; subnormal sums stay exact."""
    for dtype, big in (("float16", 65504.0), ("bfloat16", 3.3895e38)):
        b = to16(dtype, np.array([1.0, 1.0, big, -big, 2.0 ** -24, 1.0], np.float32))
        a32 = np.array([2.0 ** -11, 3 * 2.0 ** -11, big, -big, 2.0 ** -24, 2.0 ** -8 * 3], np.float32)
        out = np.empty(len(b), np.uint16)
        _C._local_accumulate(level, dtype, "sum", _ptr(out), False, _ptr(a32), True, _ptr(b), len(b))
        with np.errstate(all="ignore"):
            same_bits16(dtype, out, to16(dtype, a32 + widen(dtype, b)), f"{level} {dtype}")
