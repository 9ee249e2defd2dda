"""Raw tensor-parallel communication: the four moves every tp layer is built from.

Convention for the whole tensor package: `group` is the tensor-parallel process group,
and `group=None` means *no* tensor parallelism (one rank; the dense layer), not the
world group as elsewhere in torch.distributed. Every helper returns its input untouched
when the group has one rank, so a tp=1 model runs no collective at all.

These helpers are not differentiable by themselves; mappings.py pairs them into
autograd functions. They always return a new tensor and never write into their input,
because the input may be an activation autograd saved or a gradient shared with
another branch of the graph.
"""
from typing import List, Optional

import torch
import torch.distributed as dist


def group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


def _chunks(x: torch.Tensor, dim: int, group, what: str) -> List[torch.Tensor]:
    n = group_size(group)
    if x.size(dim) % n:
        raise ValueError(f"{what}: size {x.size(dim)} of dim {dim} (shape {tuple(x.shape)}) "
                         f"is not divisible by the tensor-parallel size {n}")
    return [c.contiguous() for c in torch.chunk(x, n, dim=dim)]


def _reduce(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """Allreduce over the group into a fresh tensor."""
    if group_size(group) == 1:
        return x
    out = x.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=op, group=group)
    return out


def _split(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """This rank's 1/n slice of x along dim (no communication)."""
    if group_size(group) == 1:
        return x
    return _chunks(x, dim, group, "split")[group_rank(group)]


def _gather(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Concatenate every rank's x along dim, in group-rank order."""
    n = group_size(group)
    if n == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=dim)


def _reduce_scatter(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Sum x over the group and keep this rank's 1/n slice along dim."""
    n = group_size(group)
    if n == 1:
        return x
    parts = _chunks(x, dim, group, "reduce_scatter")
    out = torch.empty_like(parts[0])
    dist.reduce_scatter(out, parts, group=group)
    return out


def check_divisible(what: str, size: int, group: Optional[object]) -> int:
    """size // tp size, or a ValueError that names the layer argument and the numbers."""
    n = group_size(group)
    if size % n:
        raise ValueError(f"{what}({size}) is not divisible by the tensor-parallel size({n})")
    return size // n
