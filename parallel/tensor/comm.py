"""Raw tensor-parallel communication: the four moves every tp layer is built from.

Convention for the whole tensor package: `group` is the tensor-parallel process group,
and `group=None` means *no* tensor parallelism (one rank; the dense layer), not the
world group as elsewhere in torch.distributed. Every helper returns its input untouched
when the group has one rank, so a tp=1 model runs no collective at all.

Gathers and reduce-scatters use the single-tensor collectives (all_gather_into_tensor,
reduce_scatter_tensor), which the hcomm backend runs without per-rank lists: the tensor
is laid out with the split dim first (free for dim 0, one copy otherwise, the same copy
torch.cat or torch.chunk would make).

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


# torch 2.13 renamed the tensor forms (the old names warn); older torch has only the old ones.
def _all_gather_tensor(*args, **kwargs):
    # Looked up at call time, not bound at import: tools that wrap torch.distributed's
    # entry points (hcomm.parallel.plan's profile records every collective) see the call.
    return (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(*args, **kwargs)


def _reduce_scatter_tensor(*args, **kwargs):
    return (getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor)(*args, **kwargs)


def _to_front(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x with `dim` moved to dim 0, contiguous: the layout the single-tensor collectives
    gather and scatter along. No copy when dim is 0 (or every dim before it has size 1)."""
    return x.movedim(dim, 0).contiguous()


def _gather(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Concatenate every rank's x along dim, in group-rank order (one all_gather_into_tensor)."""
    n = group_size(group)
    if n == 1:
        return x
    front = _to_front(x, dim)
    out = torch.empty((n * front.size(0),) + tuple(front.shape[1:]), dtype=x.dtype, device=x.device)
    _all_gather_tensor(out, front, group=group)
    return out if dim == 0 else out.movedim(0, dim).contiguous()


def _reduce_scatter(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Sum x over the group and keep this rank's 1/n slice along dim (one reduce_scatter_tensor)."""
    n = group_size(group)
    if n == 1:
        return x
    if x.size(dim) % n:
        raise ValueError(f"reduce_scatter: size {x.size(dim)} of dim {dim} (shape {tuple(x.shape)}) "
                         f"is not divisible by the tensor-parallel size {n}")
    front = _to_front(x, dim)
    out = torch.empty((front.size(0) // n,) + tuple(front.shape[1:]), dtype=x.dtype, device=x.device)
    _reduce_scatter_tensor(out, front, op=dist.ReduceOp.SUM, group=group)
    return out if dim == 0 else out.movedim(0, dim).contiguous()


def check_divisible(what: str, size: int, group: Optional[object]) -> int:
    """size // tp size, or a ValueError that names the layer argument and the numbers."""
    n = group_size(group)
    if size % n:
        raise ValueError(f"{what}({size}) is not divisible by the tensor-parallel size({n})")
    return size // n
