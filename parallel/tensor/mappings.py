"""Autograd pairs over the raw moves of comm.py: each forward has its adjoint as backward.

    function                            forward                 backward
    copy_to_tp_region                   identity                allreduce
    reduce_from_tp_region               allreduce               identity
    scatter_to_tp_region                split last dim          gather last dim
    gather_from_tp_region               gather last dim         split last dim
    scatter_to_sequence_region          split seq dim           gather seq dim
    gather_from_sequence_region         gather seq dim          reduce-scatter seq dim
                                                                (or split, see below)
    reduce_scatter_to_sequence_region   reduce-scatter seq dim  gather seq dim

Why the pairs: a replicated input that feeds rank-different weights (column-parallel
linear) gets a partial gradient on each rank, so its backward must sum them; a partial
output that is summed in forward (row-parallel linear) has a gradient that is already
complete on each rank. Sequence parallelism replaces the allreduce by a reduce-scatter
plus an allgather along the sequence, which moves the same bytes but leaves the
activations between tp regions (LayerNorm, dropout, residual) sharded by sequence.

Activations are batch-first, [batch, seq, hidden], so the sequence dim is 1 (SEQ_DIM).
With a one-rank group each function returns its input and adds no autograd node.
"""
import torch

from .comm import _gather, _reduce, _reduce_scatter, _split, group_size

SEQ_DIM = 1


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)  # a view, so autograd sees a distinct output

    @staticmethod
    def backward(ctx, grad):
        return _reduce(grad, ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ScatterAlong(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _split(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather(grad, ctx.dim, ctx.group), None, None


class _GatherAlong(torch.autograd.Function):
    """Gather in forward; backward reduce-scatters when the gathered tensor fed
    rank-different computations (its gradient is partial per rank), else splits."""

    @staticmethod
    def forward(ctx, x, group, dim, grad_is_partial):
        ctx.group, ctx.dim, ctx.partial = group, dim, grad_is_partial
        return _gather(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        move = _reduce_scatter if ctx.partial else _split
        return move(grad, ctx.dim, ctx.group), None, None, None


class _ReduceScatterAlong(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _reduce_scatter(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather(grad, ctx.dim, ctx.group), None, None


def copy_to_tp_region(x, group):
    return x if group_size(group) == 1 else _CopyToTP.apply(x, group)


def reduce_from_tp_region(x, group):
    return x if group_size(group) == 1 else _ReduceFromTP.apply(x, group)


def scatter_to_tp_region(x, group):
    return x if group_size(group) == 1 else _ScatterAlong.apply(x, group, x.dim() - 1)


def gather_from_tp_region(x, group):
    return x if group_size(group) == 1 else _GatherAlong.apply(x, group, x.dim() - 1, False)


def scatter_to_sequence_region(x, group, dim=SEQ_DIM):
    return x if group_size(group) == 1 else _ScatterAlong.apply(x, group, dim)


def gather_from_sequence_region(x, group, dim=SEQ_DIM, grad_is_partial=True):
    """Allgather the sequence shards. grad_is_partial=True (the default) is for a gather
    that feeds a column-parallel layer: each rank's gradient covers only its output
    columns, so backward sums them (reduce-scatter). Use False when the gathered tensor
    is consumed identically on every rank."""
    return x if group_size(group) == 1 else _GatherAlong.apply(x, group, dim, grad_is_partial)


def reduce_scatter_to_sequence_region(x, group, dim=SEQ_DIM):
    return x if group_size(group) == 1 else _ReduceScatterAlong.apply(x, group, dim)
