"""Gradients of tp-replicated parameters under sequence parallelism, reduced once per step.

With sequence_parallel, a LayerNorm (or a row-parallel bias, or GPT's position table) is
replicated over the tp group but each rank only applies it to its 1/tp slice of the
sequence, so after backward each rank holds a *partial* gradient; the dense gradient is
their sum over tp. Summing each such tensor inside autograd would cost one small
allreduce per parameter per micro-batch; instead the partial gradients accumulate
locally and one bucketed allreduce per optimizer step sums them all:

    loss.backward()                                   # every micro-batch
    reduce_sequence_parallel_grads(model, tp_group)   # once, before clipping / step

ZeroOptimizer(..., tp_group=tp) does the same inside step(), on its gradient shards.

Which parameters: those of modules with `sequence_parallel` true whose `partition_dims`
entry is None (replicated), i.e. read from the layers, not marked on the parameters.
"""
from typing import List, Tuple

import torch
import torch.distributed as dist
from torch import nn

from .comm import group_size


def sequence_parallel_params(module: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """(name, parameter) of every tp-replicated parameter that sees a sequence shard."""
    out = []
    for prefix, m in module.named_modules():
        if not getattr(m, "sequence_parallel", False):
            continue
        for pname, dim in getattr(m, "partition_dims", {}).items():
            p = getattr(m, pname, None)
            if dim is None and isinstance(p, nn.Parameter) and p.requires_grad:
                out.append((f"{prefix}.{pname}" if prefix else pname, p))
    return out


def check_sp_group(module: nn.Module, group) -> None:
    """Raise when sequence-parallel layers span more ranks than `group` (e.g. None)."""
    if group_size(group) > 1:
        return
    for prefix, m in module.named_modules():
        if getattr(m, "sequence_parallel", False) and group_size(getattr(m, "group", None)) > 1:
            raise ValueError(f"module '{prefix or type(m).__name__}' is sequence-parallel over {group_size(m.group)} ranks, so its "
                             f"replicated parameters' gradients must be summed over that tp group: pass it")


def allreduce_bucket(tensors: List[torch.Tensor], group) -> None:
    """Sum `tensors` over `group` in place with one allreduce of their concatenation."""
    if not tensors or group_size(group) == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def reduce_sequence_parallel_grads(module: nn.Module, group) -> None:
    """Sum the partial gradients of `module`'s sequence-parallel replicated parameters over
    the tp `group`, in one bucket. Collective over the tp group: every rank calls it, once
    per optimizer step, after the last backward. A parameter without a gradient counts as
    zero (every rank must contribute the same bucket layout)."""
    check_sp_group(module, group)
    params = [p for _, p in sequence_parallel_params(module)]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    allreduce_bucket([p.grad for p in params], group)
