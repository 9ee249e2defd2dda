"""Seeded per-rank inputs, the numpy reference output, and the #wrong count.

Every rank can rebuild every other rank's input from (seed, rank, block, count), so
each rank checks its own output against a reference it computes alone, with no extra
communication. Inputs are small integers stored in the benchmark dtype: sums, minima
and maxima of them are exact in any order (so floats compare tightly, integers
exactly), and products use {-1, 1, 2} so they stay finite for a useful number of ranks.

bfloat16: numpy has none, so its buffers hold the raw bits as uint16 (BF16 below, a
storage type the bench has no other use for); inputs, references and #wrong convert
at the edges, and the runners hand the memory to their library as torch.bfloat16.
"""
import numpy as np

from .factors import REDUCING

BF16 = np.dtype(np.uint16)  # bfloat16 bits
# nccl-tests' type names, with numpy's names accepted as aliases.
DTYPES = {
    "int8": np.int8, "uint8": np.uint8, "int32": np.int32, "int64": np.int64,
    "half": np.float16, "float": np.float32, "double": np.float64, "bfloat16": BF16,
}
DTYPE_ALIASES = {"float16": "half", "float32": "float", "float64": "double", "int": "int32",
                 "char": "int8", "fp16": "half", "fp32": "float", "fp64": "double", "bf16": "bfloat16"}
OPS = ("sum", "prod", "min", "max", "avg")
# Filled into receive buffers before a checked call, so a call that writes nothing is
# counted wrong: no sum, min, max or product of the inputs below can equal it.
SENTINEL = 99


def canonical_dtype(name):
    """nccl-tests' name for a datatype given by either spelling; ValueError otherwise."""
    key = DTYPE_ALIASES.get(name, name)
    if key not in DTYPES:
        choices = ", ".join(list(DTYPES) + list(DTYPE_ALIASES))
        raise ValueError(f"unknown datatype {name!r}; choose one of {choices}")
    return key


def np_dtype(name):
    """The numpy type of a datatype's buffers (BF16 bits for bfloat16)."""
    return np.dtype(DTYPES[canonical_dtype(name)])


def to_bf16(values):
    """float values -> bfloat16 bits, rounded to nearest even (NaN stays NaN)."""
    f = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (f + 0x7FFF + ((f >> 16) & 1)) >> 16
    return np.where(np.isnan(f.view(np.float32)), (f >> 16) | 0x40, rounded).astype(np.uint16)


def from_bf16(bits):
    """bfloat16 bits -> float32 values (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def redop_for(collective, op):
    """The redop column: the op for reducing collectives, 'none' for the others."""
    return op if collective in REDUCING else "none"


def block_input(seed, rank, block, count, dtype, op):
    """Block `block` (of `count` elements) of rank `rank`'s input."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng([seed, rank, block, count])
    signed = dtype.kind != "u"
    if op == "prod":
        table = np.array([-1, 1, 2] if signed else [1, 2], dtype=np.int8)
        small = table[rng.integers(0, len(table), size=count, dtype=np.int8)]
    else:
        lo, hi = (-4, 4) if signed else (0, 8)
        small = rng.integers(lo, hi + 1, size=count, dtype=np.int8)
    return to_bf16(small) if dtype == BF16 else small.astype(dtype)


def rank_input(seed, rank, lay, dtype, op):
    """Rank `rank`'s whole send buffer: lay.blocks blocks of lay.count elements, or one
    block of lay.send elements for the single-block collectives."""
    if lay.blocks == 1:
        return block_input(seed, rank, 0, lay.send, dtype, op)
    return np.concatenate([block_input(seed, rank, b, lay.count, dtype, op) for b in range(lay.blocks)])


def reduce_blocks(blocks, op, dtype):
    """numpy reference of an elementwise reduction over ranks' blocks (any iterable, so
    a generator keeps one rank's block in memory at a time).

    Floats accumulate in float64 and round once at the end; integers wrap in their
    own type, as C arithmetic does; avg of integers is the truncated quotient.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose one of {', '.join(OPS)}")
    dtype = np.dtype(dtype)
    if dtype == BF16:  # in float64, rounded to bfloat16 once
        return to_bf16(reduce_blocks((from_bf16(b) for b in blocks), op, np.float64))
    acc_type = np.float64 if dtype.kind == "f" else (np.int64 if op == "avg" else dtype)
    acc, n = None, 0
    for b in blocks:
        n += 1
        if acc is None:
            acc = b.astype(acc_type, copy=True)
        elif op in ("sum", "avg"):
            acc += b
        elif op == "prod":
            acc *= b
        elif op == "min":
            np.minimum(acc, b, out=acc)
        else:
            np.maximum(acc, b, out=acc)
    if acc is None:
        raise ValueError("reduce_blocks needs at least one block")
    if op == "avg":
        acc = acc / n if dtype.kind == "f" else np.trunc(acc / n)
    return acc.astype(dtype)


def expected_output(lay, rank, nranks, *, seed, dtype, op, root):
    """What rank `rank` must hold after the collective, or None when it holds nothing
    checkable (reduce on a non-root rank, barrier)."""
    c, coll = lay.count, lay.collective

    def block(r, b=0, n=None):
        return block_input(seed, r, b, c if n is None else n, dtype, op)

    if coll == "allreduce" or (coll == "reduce" and rank == root):
        return reduce_blocks((block(r) for r in range(nranks)), op, dtype)
    if coll == "broadcast":
        return block(root)
    if coll == "allgather":
        return np.concatenate([block(r) for r in range(nranks)])
    if coll == "reduce_scatter":
        return reduce_blocks((block(r, rank) for r in range(nranks)), op, dtype)
    if coll == "alltoall":
        return np.concatenate([block(r, rank) for r in range(nranks)])
    if coll == "sendrecv":
        return block((rank - 1) % nranks)
    return None


def tolerance(dtype, op):
    """(rtol, atol) for comparing a result with the reference.

    Inputs are small integers, so sums, products, minima and maxima are exact; only avg
    rounds (a float quotient, or an integer one an implementation may round either way).
    """
    dtype = np.dtype(dtype)
    if op != "avg":
        return 0.0, 0.0
    if dtype == BF16:
        return 2.0 ** -7, 2.0 ** -8
    if dtype.kind == "f":
        eps = float(np.finfo(dtype).eps)
        return 2 * eps, eps
    return 0.0, 1.0


def count_wrong(result, expected, dtype, op):
    """Elements of `result` that differ from `expected` beyond the tolerance."""
    if result.shape != expected.shape:
        raise ValueError(f"result has shape {result.shape}, expected {expected.shape}")
    if result.size == 0:
        return 0
    rtol, atol = tolerance(dtype, op)
    if np.dtype(dtype) == BF16:
        result, expected = from_bf16(result), from_bf16(expected)
    if rtol == 0 and atol == 0:
        return int(np.count_nonzero(result != expected))  # NaN != NaN: counted wrong
    ok = np.isclose(result.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol)
    return int(ok.size - np.count_nonzero(ok))
