"""Cross-entropy over logits whose vocabulary dim is split across the tp group.

Each rank holds logits[..., r*V/tp : (r+1)*V/tp] (a ColumnParallelLinear head without
gather_output). Gathering the full [tokens, V] logits would cost tp times the memory of
a shard; instead three allreduces of [tokens]-sized tensors give the same loss:

    m      = max over ranks of the local max            (allreduce MAX, for stability)
    target = the target's logit, from the rank that owns it, 0 elsewhere  (allreduce SUM)
    Z      = sum over ranks of sum(exp(logits - m))     (allreduce SUM)
    loss   = log Z - (target - m)

Backward needs no communication: d loss / d logits = softmax - one_hot(target), and each
rank computes its own columns of both.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .comm import _reduce, group_rank, group_size


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    # softmax in at least fp32: exp of half-precision logits loses the small classes
    return logits.float() if logits.element_size() < 4 else logits


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group):
        shard, ctx.dtype = logits.size(-1), logits.dtype
        start = group_rank(group) * shard
        logits = _upcast(logits)
        m = _reduce(logits.amax(dim=-1), group, op=dist.ReduceOp.MAX)
        shifted = logits - m.unsqueeze(-1)
        outside = (target < start) | (target >= start + shard)
        local = (target - start).masked_fill(outside, 0)
        picked = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        picked = _reduce(picked, group)
        exp = shifted.exp()
        z = _reduce(exp.sum(dim=-1), group)
        ctx.save_for_backward(exp.div_(z.unsqueeze(-1)), local, outside)
        return z.log() - picked

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local, outside = ctx.saved_tensors
        grad = softmax.clone()
        hit = (~outside).to(grad.dtype).unsqueeze(-1)
        grad.scatter_add_(-1, local.unsqueeze(-1), -hit)
        return (grad * grad_loss.unsqueeze(-1)).to(ctx.dtype), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group) -> torch.Tensor:
    """Per-token loss [...] (at least float32, same on every tp rank) from vocab-sharded logits
    [..., V / tp] and global target ids [...]. Reduce it (mean) in the caller."""
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                         f"must agree on all dims but the last")
    vocab = logits.size(-1) * group_size(group)
    # out-of-range targets would silently count as "owned by no rank"; checked on the CPU only,
    # where reading the extremes back does not stall an accelerator stream
    if target.device.type == "cpu" and target.numel() and (target.min() < 0 or target.max() >= vocab):
        lo, hi = int(target.min()), int(target.max())
        raise IndexError(f"targets must be in [0, {vocab}), got min {lo} max {hi}")
    if group_size(group) == 1:
        flat = F.cross_entropy(_upcast(logits).flatten(0, -2), target.flatten(), reduction="none")
        return flat.view_as(target)
    return _VocabParallelCrossEntropy.apply(logits, target, group)
