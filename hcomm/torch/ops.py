"""Translate c10d arguments (ReduceOp, dtypes, tensor lists) into what the core takes.

Two kinds of collectives:
- data movement (broadcast, gathers, scatters, alltoall, send/recv) never looks at the
  values, so every tensor travels as raw bytes (a uint8 view) and any dtype works,
  complex and float8 included;
- reductions need a dtype the core can add up; anything else is refused with an error
  that names the op and the dtype, before any byte moves.
"""
import torch
import torch.distributed as dist

from .._buffers import ITEMSIZE

_RED = dist.ReduceOp.RedOpType
_CORE_OPS = {
    _RED.SUM: "sum", _RED.PRODUCT: "prod", _RED.MIN: "min", _RED.MAX: "max",
    _RED.AVG: "avg", _RED.PREMUL_SUM: "premul_sum",
}
# The core has no bitwise reductions; these run as an allgather plus a local fold,
# which moves size x more bytes but is exact for every integer dtype.
BITWISE_OPS = {_RED.BAND: torch.bitwise_and, _RED.BOR: torch.bitwise_or, _RED.BXOR: torch.bitwise_xor}

REDUCIBLE_DTYPES = {
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.int8, torch.uint8, torch.int32, torch.int64, torch.bool,
}
assert {str(d).split(".")[1] for d in REDUCIBLE_DTYPES} <= set(ITEMSIZE)


class ReduceSpec:
    """One reduction as the core understands it: name (or a bitwise fold) and factor."""

    __slots__ = ("name", "factor", "fold")

    def __init__(self, name, factor=None, fold=None):
        self.name, self.factor, self.fold = name, factor, fold


def reduce_spec(reduce_op, what):
    """ReduceOp (or its RedOpType) -> ReduceSpec. Compared through `.op`: a ReduceOp that
    comes back from opts does not compare equal to the enum by itself in torch 2.13."""
    kind = getattr(reduce_op, "op", reduce_op)
    if kind in BITWISE_OPS:
        return ReduceSpec(None, fold=BITWISE_OPS[kind])
    name = _CORE_OPS.get(kind)
    if name is None:
        raise RuntimeError(f"hcomm {what}: reduce op {reduce_op} is not supported")
    factor = None
    if name == "premul_sum":
        factor = getattr(reduce_op, "factor", None)
        if factor is None:
            raise RuntimeError(f"hcomm {what}: PREMUL_SUM arrived without its factor")
        factor = float(factor.item() if isinstance(factor, torch.Tensor) else factor)
    return ReduceSpec(name, factor)


def check_reducible(tensor, spec, what):
    if tensor.dtype not in REDUCIBLE_DTYPES:
        raise RuntimeError(f"hcomm {what}: cannot reduce dtype {tensor.dtype} "
                           f"(supported: {', '.join(sorted(str(d) for d in REDUCIBLE_DTYPES))})")
    if spec.fold is not None and tensor.is_floating_point():
        raise RuntimeError(f"hcomm {what}: bitwise reduce ops need an integer or bool tensor, got {tensor.dtype}")
    if tensor.dtype == torch.bool and spec.name in ("sum", "prod", "avg", "premul_sum"):
        # bool sum / prod are logical or / and, as in Gloo
        spec.name = {"sum": "max", "prod": "min"}.get(spec.name, spec.name)
        if spec.name in ("avg", "premul_sum"):
            raise RuntimeError(f"hcomm {what}: op {spec.name} is not defined for bool tensors")


def check_cpu(tensors, what):
    for t in tensors:
        if t.device.type != "cpu":
            raise RuntimeError(f"hcomm {what}: tensor on {t.device}; the hcomm torch backend is registered "
                               "for cpu only in this build")


def as_bytes(t):
    """A flat uint8 view of a contiguous tensor (0-dim and empty included)."""
    flat = t.reshape(-1)
    if flat.dtype == torch.bool:
        return flat.view(torch.uint8)
    return flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)


class Staged:
    """Contiguous stand-ins for caller tensors, copied back by finish() for outputs.

    Gloo accepts non-contiguous tensors by working on copies; so do we. Tensors that are
    already contiguous are used in place (no copy)."""

    def __init__(self):
        self._back = []

    def input(self, t):
        return t if t.is_contiguous() else t.contiguous()

    def output(self, t):
        if t.is_contiguous():
            return t
        tmp = t.contiguous()
        self._back.append((t, tmp))
        return tmp

    def finish(self):
        for orig, tmp in self._back:
            orig.copy_(tmp)
