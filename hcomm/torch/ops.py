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
    """One reduction as the core understands it: a core op name and factor, or a
    bitwise fold done locally. Immutable: the common ones are built once, below."""

    __slots__ = ("name", "factor", "fold")

    def __init__(self, name, factor=None, fold=None):
        self.name, self.factor, self.fold = name, factor, fold


# Indexed by RedOpType.value: a dict keyed by the pybind enum costs a slow __hash__ on
# every call, and this sits on the per-call path.
_SPECS = {k.value: ReduceSpec(v) for k, v in _CORE_OPS.items() if v != "premul_sum"}
_SPECS.update({k.value: ReduceSpec(None, fold=f) for k, f in BITWISE_OPS.items()})
_PREMUL = _RED.PREMUL_SUM.value


def reduce_spec(reduce_op, what):
    """ReduceOp (or its RedOpType) -> ReduceSpec. Compared through `.op`: a ReduceOp that
    comes back from opts does not compare equal to the enum by itself in torch 2.13."""
    kind = getattr(reduce_op, "op", reduce_op)
    spec = _SPECS.get(kind.value)
    if spec is not None:
        return spec
    if kind.value != _PREMUL:
        raise RuntimeError(f"hcomm {what}: reduce op {reduce_op} is not supported")
    factor = getattr(reduce_op, "factor", None)
    if factor is None:
        raise RuntimeError(f"hcomm {what}: PREMUL_SUM arrived without its factor")
    return ReduceSpec("premul_sum", float(factor.item() if isinstance(factor, torch.Tensor) else factor))


# Complex numbers add componentwise, so sums (and averages, real premultipliers) run on
# the float view of the same memory, as Gloo accepts them; products and orderings do not
# decompose that way and are refused.
_COMPONENTWISE = {"sum", "avg", "premul_sum"}


def real_view(tensor, spec, what):
    """`tensor`, or for a complex one its float view (same memory, twice the elements)."""
    if not tensor.is_complex():
        return tensor
    if spec.fold is not None or spec.name not in _COMPONENTWISE:
        op = spec.name or "bitwise"
        raise RuntimeError(f"hcomm {what}: reduce op {op} is not defined for complex tensors ({tensor.dtype}); "
                           "only sum, avg and premul_sum are")
    return torch.view_as_real(tensor)


# bool sum / prod are logical or / and, as in Gloo
_BOOL_OPS = {"sum": "max", "prod": "min", "min": "min", "max": "max"}


def check_reducible(tensor, spec, what):
    """Refuse what the core cannot reduce; return the core op name to use for `tensor`."""
    dtype = tensor.dtype
    if dtype not in REDUCIBLE_DTYPES:
        raise RuntimeError(f"hcomm {what}: cannot reduce dtype {dtype} "
                           f"(supported: {', '.join(sorted(str(d) for d in REDUCIBLE_DTYPES))})")
    if spec.fold is not None:
        if tensor.is_floating_point():
            raise RuntimeError(f"hcomm {what}: bitwise reduce ops need an integer or bool tensor, got {dtype}")
        return None
    if dtype == torch.bool:
        name = _BOOL_OPS.get(spec.name)
        if name is None:
            raise RuntimeError(f"hcomm {what}: op {spec.name} is not defined for bool tensors")
        return name
    return spec.name


def as_bytes(t):
    """A flat uint8 view of a contiguous tensor (0-dim and empty included)."""
    return t.reshape(-1).view(torch.uint8)


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
