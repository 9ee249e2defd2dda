"""Gradient clipping by the whole model's norm when the model is split over tensor- and
pipeline-parallel groups (what Megatron's clip_grad_norm_fp32 does), for training with a
plain torch optimizer; ZeroOptimizer(clip_grad_norm=..., tp_group=..., pp_group=...) does
the same over its shards.

Each rank holds a different part of the model, so its squared gradient norm is summed
over the tp and pp groups. A parameter that is not tp-sharded (a layer norm, a
row-parallel bias: its module's partition_dims says None for it, or the module has no
partition_dims) is the same on every tp rank and counts once, on tp rank 0. Gradients
must already be reduced over dp (DDP, the pipeline runtime's dp reduction), so every dp
replica computes the same norm.
"""
import torch
import torch.distributed as dist

from .tensor import partition_dim


def tp_duplicates(module, names, tp_group):
    """The names among `names` this rank leaves out of a norm: parameters replicated over
    tp_group, on every tp rank but the first."""
    if tp_group is None or dist.get_rank(tp_group) == 0:
        return frozenset()
    return frozenset(n for n in names if partition_dim(module, n) is None)


def sum_over(sq, groups):
    """All-reduce (SUM) the tensor `sq` over each of `groups` in turn (None: skipped)."""
    for group in groups:
        if group is not None:
            dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=group)
    return sq


def clip_grad_norm_(module, max_norm, tp_group=None, pp_group=None):
    """Scale the gradients of `module` so that the whole model's L2 norm is at most
    max_norm (as torch.nn.utils.clip_grad_norm_ does on an unsplit model); returns that
    norm before clipping, a float, the same on every rank. Collective over tp_group and
    pp_group: every rank of both calls it, with or without gradients of its own."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
    params = list(module.named_parameters())
    named = [(n, p) for n, p in params if p.grad is not None]
    skip = tp_duplicates(module, [n for n, _ in named], tp_group)
    device = params[0][1].device if params else torch.device("cpu")
    sq = torch.zeros(1, dtype=torch.float64, device=device)
    for n, p in named:
        if n not in skip:
            sq += p.grad.detach().double().pow(2).sum()
    total = sum_over(sq, (tp_group, pp_group)).sqrt().item()
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for _, p in named:
            p.grad.detach().mul_(coef)
    return total
