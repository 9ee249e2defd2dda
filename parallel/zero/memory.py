"""The memory plan: per-rank bytes from the ZeRO formulas beside the bytes of the real tensors.

Ψ = trainable parameters, N = dp size, P = bytes per parameter element (2 bf16, 4 fp32),
M = fp32 master bytes (4 under mixed precision, 0 when the parameters are fp32 and the
shard is its own master), K = optimizer state bytes per element (AdamW: 8, probed).

    row               stage 1     stage 2     stage 3
    parameters        PΨ          PΨ          PΨ/N
    gradients         PΨ          PΨ/N        PΨ/N
    master weights    MΨ/N        MΨ/N        MΨ/N
    optimizer state   KΨ/N        KΨ/N        KΨ/N
    bf16 + AdamW      4Ψ + 12Ψ/N  2Ψ + 14Ψ/N  16Ψ/N
    fp32 + AdamW      8Ψ + 8Ψ/N   4Ψ + 12Ψ/N  16Ψ/N

Transient rows (peaks, not model state): stage 3 gathered buffers, at most the unit in
use plus one prefetched (2 · P · largest unit); communication buckets, at most
(in-flight limit + 1) flat gradient buckets. Real bytes include the padding of each
flat buffer to a multiple of N (at most N - 1 elements per buffer).
"""
from dataclasses import dataclass, field
from typing import List

import torch

from . import stage12, stage3

ROWS = ("parameters", "gradients", "master weights", "optimizer state")
TRANSIENT = ("gathered buffers", "comm buckets")


def probe_state_bytes_per_element(optimizer_cls, optim_kwargs, device="cpu"):
    """Bytes of per-element state optimizer_cls keeps, found by one step on a 3-element tensor
    on the parameters' device (some options, e.g. fused=True, exist only on some devices)."""
    p = torch.zeros(3, requires_grad=True, device=device)
    p.grad = torch.ones(3, device=device)
    opt = optimizer_cls([p], **optim_kwargs)
    opt.step()
    return sum(t.element_size() for t in opt.state[p].values() if torch.is_tensor(t) and t.numel() == 3)


def optimizer_state_bytes(inner, shards):
    """Real bytes of the inner optimizer's state, or None while it is not allocated yet."""
    total, seen = 0, False
    for s in shards:
        st = inner.state.get(s.master)
        if st:
            seen = True
            total += sum(t.numel() * t.element_size() for t in st.values() if torch.is_tensor(t))
    return total if seen else None


@dataclass
class Row:
    name: str
    formula: str
    formula_bytes: float
    real_bytes: int
    planned: bool = False   # real tensor not allocated yet: its exact planned size is shown


@dataclass
class MemoryPlan:
    header: str
    rows: List[Row] = field(default_factory=list)

    def row(self, name) -> Row:
        return next(r for r in self.rows if r.name == name)

    @property
    def model_state_real(self):
        return sum(self.row(n).real_bytes for n in ROWS)

    @property
    def model_state_formula(self):
        return sum(self.row(n).formula_bytes for n in ROWS)

    @staticmethod
    def build(zopt, measured) -> "MemoryPlan":
        n, psi, stage = zopt.comm.size, zopt.psi, zopt.stage
        p = torch.empty((), dtype=zopt.param_dtype).element_size()
        m = 0 if zopt.param_dtype == torch.float32 else 4
        k = zopt.state_bytes_per_element
        coefs = {"parameters": (p, stage == 3), "gradients": (p, stage >= 2),
                 "master weights": (m, True), "optimizer state": (k, True)}
        shard_elems = sum(s.layout.shard_numel for s in zopt.engine.shards)
        planned = {"gradients": shard_elems * p if stage >= 2 else psi * p,
                   "optimizer state": shard_elems * k}
        plan = MemoryPlan(_header(zopt, p, m, k))
        for name in ROWS:
            c, sharded = coefs[name]
            real = measured[name]
            is_planned = name in planned and (real is None or real == 0)
            plan.rows.append(Row(name, _term(c, sharded), c * psi / (n if sharded else 1),
                                 planned[name] if is_planned else real, is_planned))
        whole = sum(c for c, sh in coefs.values() if not sh)
        part = sum(c for c, sh in coefs.values() if sh)
        plan.rows.append(Row("model state", " + ".join(t for t in (_term(whole, False), _term(part, True)) if t != "0"),
                             plan.model_state_formula, plan.model_state_real))
        for name, (text, nbytes) in _transient_formulas(zopt, p).items():
            plan.rows.append(Row(name, text, nbytes, measured[name]))
        return plan

    def format(self) -> str:
        lines = [self.header,
                 f"  {'row':<17}{'formula':>14}{'formula bytes':>16}{'real bytes':>16}{'real/formula':>14}"]
        for r in self.rows:
            if r.name == "model state":
                lines.append("  " + "-" * 77)
            lines.append(_format_row(r))
        if any(r.planned for r in self.rows):
            lines.append("  * allocated lazily (first backward / first step): the exact size it will have")
        lines.append("  gathered buffers and comm buckets are transient peaks so far, not model state")
        return "\n".join(lines)


def _format_row(r):
    if r.name in TRANSIENT and r.real_bytes == 0 and r.formula_bytes:
        real, ratio = f"{'not run yet':>15} ", "-"   # a peak: nothing measured before a step
    else:
        ratio = f"{r.real_bytes / r.formula_bytes:.3f}" if r.formula_bytes else "-"
        real = f"{r.real_bytes:>15,}{'*' if r.planned else ' '}"
    return f"  {r.name:<17}{r.formula:>14}{r.formula_bytes:>16,.0f}{real}{ratio:>14}"


def _term(c, sharded):
    if c == 0:
        return "0"
    return f"{c}Ψ/N" if sharded else f"{c}Ψ"


def _header(zopt, p, m, k):
    dtype = str(zopt.param_dtype).replace("torch.", "")
    master = "fp32 master shard" if m else "fp32 parameters are their own master"
    return (f"ZeRO stage {zopt.stage} memory plan, rank {zopt.comm.rank} of N={zopt.comm.size}: "
            f"Ψ={zopt.psi:,} parameters, {dtype} parameters/gradients, {master}, "
            f"{zopt.optimizer_cls.__name__} state {k} B/element")


def _transient_formulas(zopt, p):
    """Peak transient bytes by construction (see the module docstring)."""
    if zopt.stage == 3:
        largest = max((u.layout.padded_numel for u in zopt.engine.units), default=0)
        gathered = ("2·PΨ_unit", 2 * p * largest)
        comm = (f"{stage3._INFLIGHT + 1}·PΨ_unit", min(stage3._INFLIGHT + 1, len(zopt.engine.units)) * p * largest)
        return {"gathered buffers": gathered, "comm buckets": comm}
    sizes = sorted((b.layout.padded_numel * p for b in zopt.engine.buckets), reverse=True)
    k = stage12._INFLIGHT + 1
    return {"gathered buffers": ("0", 0), "comm buckets": (f"≤{k}·bucket", sum(sizes[:k]))}
