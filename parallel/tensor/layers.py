"""Tensor-parallel layers: column/row-parallel linear, vocab-parallel embedding, and the
LayerNorm of sequence-parallel regions.

Initialisation: every layer takes `seed` (an int, or a torch.Generator shared by a whole
model so that its layers draw one stream in construction order), builds the FULL dense
weight from it on every rank, and keeps this rank's shard. A parallel layer's weights
are therefore exactly the shards of the dense layer built with the same seed, and a
parallel model equals its dense twin (`group=None`). The price is one dense init per
rank (time, and a transient full-size tensor in float32 on the CPU); for models whose
full layers do not fit one host, initialise shards with per-rank seeds instead.

Which dim of each parameter is sharded across the tp group is given by the class
attribute `partition_dims` (None = replicated); shard_state_dict / gather_state_dict use
it to move between dense and per-rank state dicts.

Parameters that are replicated across tp but, with sequence parallelism, only see this
rank's slice of the sequence (LayerNorm weight and bias, row-parallel bias) get partial
gradients; sp_grads.py sums them over tp once per step in one bucket (ZeroOptimizer
with tp_group does it in step(); without ZeRO call reduce_sequence_parallel_grads).
The layers find them from `sequence_parallel` and `partition_dims` (None), so nothing is
marked on the parameters.
"""
import math
from typing import Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .comm import _gather, _split, check_divisible, group_rank, group_size
from .mappings import (copy_to_tp_region, gather_from_sequence_region, gather_from_tp_region,
                       reduce_from_tp_region, reduce_scatter_to_sequence_region, scatter_to_tp_region)

Seed = Union[int, torch.Generator]


def make_generator(seed: Seed) -> torch.Generator:
    """A CPU generator: the given one (shared stream) or a fresh one seeded with `seed`."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a torch.Generator, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def dense_linear_params(in_features: int, out_features: int, bias: bool, seed: Seed,
                        init_std: Optional[float] = None):
    """(weight [out, in], bias [out] or None) of the dense layer, drawn from `seed`.

    init_std=None draws both like nn.Linear.reset_parameters (U(-1/sqrt(in), 1/sqrt(in)));
    a float draws the weight from N(0, init_std) and zeroes the bias (GPT style).
    """
    gen = make_generator(seed)
    w = torch.empty(out_features, in_features)
    b = torch.empty(out_features) if bias else None
    if init_std is None:
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0
        w.uniform_(-bound, bound, generator=gen)
        if b is not None:
            b.uniform_(-bound, bound, generator=gen)
    else:
        w.normal_(0.0, init_std, generator=gen)
        if b is not None:
            b.zero_()
    return w, b


def dense_linear(in_features: int, out_features: int, bias: bool = True, seed: Seed = 0,
                 init_std: Optional[float] = None) -> nn.Linear:
    """The plain nn.Linear whose shards a parallel linear with the same seed holds."""
    lin = nn.Linear(in_features, out_features, bias=bias)
    w, b = dense_linear_params(in_features, out_features, bias, seed, init_std)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias:
            lin.bias.copy_(b)
    return lin


def _recorded_linear(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear, reporting (x, y) to layer.linear_recorder where one is set.

    A pipeline's wgrad.LinearGrads sets it while it runs the zero-bubble split: it then
    computes the weight gradient g^T x itself (W), from this call's own input and the
    gradient of this call's output, which are not the layer's input and output (the tp
    copy / sequence gather comes before, the tp reduce / reduce-scatter after).
    """
    y = F.linear(x, weight, bias)
    if layer.linear_recorder is not None:
        layer.linear_recorder(layer, x, y)
    return y


def _param(full: torch.Tensor, dim: Optional[int], group, dtype, device) -> nn.Parameter:
    shard = full if dim is None else _split(full, dim, group)
    return nn.Parameter(shard.to(dtype=dtype or torch.get_default_dtype(), device=device).contiguous())


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W split by output rows: rank r holds out_features / tp outputs.

    Input: replicated [..., in] (or, with sequence_parallel, [batch, seq / tp, in], which
    is gathered along the sequence first). Output: this rank's [..., out / tp] columns,
    or the full [..., out] on every rank with gather_output=True.
    """

    partition_dims = {"weight": 0, "bias": 0}

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gather_output: bool = False,
                 group=None, sequence_parallel: bool = False, seed: Seed = 0,
                 init_std: Optional[float] = None, dtype=None, device=None):
        super().__init__()
        check_divisible("out_features", out_features, group)
        self.in_features, self.out_features = in_features, out_features
        self.gather_output, self.group, self.sequence_parallel = gather_output, group, sequence_parallel
        w, b = dense_linear_params(in_features, out_features, bias, seed, init_std)
        self.weight = _param(w, 0, group, dtype, device)
        self.bias = None if b is None else _param(b, 0, group, dtype, device)
        self.linear_recorder: Optional[Callable] = None   # see _recorded_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            x = gather_from_sequence_region(x, self.group)
        else:
            x = copy_to_tp_region(x, self.group)
        y = _recorded_linear(self, x, self.weight, self.bias)
        return gather_from_tp_region(y, self.group) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features} (/{group_size(self.group)}), "
                f"gather_output={self.gather_output}, sequence_parallel={self.sequence_parallel}")


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W split by input columns: rank r holds in_features / tp inputs.

    Input: this rank's [..., in / tp] slice (input_is_parallel=True, e.g. straight from a
    ColumnParallelLinear) or the full [..., in], which is split here. The partial
    products are summed over tp: allreduce, or with sequence_parallel a reduce-scatter
    that leaves [batch, seq / tp, out]. The bias is replicated and added once, after.
    """

    partition_dims = {"weight": 1, "bias": None}

    def __init__(self, in_features: int, out_features: int, bias: bool = True, input_is_parallel: bool = False,
                 group=None, sequence_parallel: bool = False, seed: Seed = 0,
                 init_std: Optional[float] = None, dtype=None, device=None):
        super().__init__()
        check_divisible("in_features", in_features, group)
        self.in_features, self.out_features = in_features, out_features
        self.input_is_parallel, self.group, self.sequence_parallel = input_is_parallel, group, sequence_parallel
        w, b = dense_linear_params(in_features, out_features, bias, seed, init_std)
        self.weight = _param(w, 1, group, dtype, device)
        self.bias = None if b is None else _param(b, None, group, dtype, device)
        self.linear_recorder: Optional[Callable] = None   # see _recorded_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tp_region(x, self.group)
        y = _recorded_linear(self, x, self.weight)
        if self.sequence_parallel:
            y = reduce_scatter_to_sequence_region(y, self.group)
        else:
            y = reduce_from_tp_region(y, self.group)
        return y if self.bias is None else y + self.bias   # partial grad under sp: sp_grads.py

    def extra_repr(self) -> str:
        return (f"in={self.in_features} (/{group_size(self.group)}), out={self.out_features}, "
                f"input_is_parallel={self.input_is_parallel}, sequence_parallel={self.sequence_parallel}")


class VocabParallelEmbedding(nn.Module):
    """Embedding with the vocabulary split: rank r holds rows [r*V/tp, (r+1)*V/tp).

    Each rank looks up the ids it owns, writes zeros for the others, and the rows are
    summed over tp (allreduce, or a reduce-scatter along the sequence with
    sequence_parallel, which leaves [batch, seq / tp, dim]). init_std=None draws like
    nn.Embedding (N(0, 1)).
    """

    partition_dims = {"weight": 0}

    def __init__(self, num_embeddings: int, embedding_dim: int, group=None, sequence_parallel: bool = False,
                 seed: Seed = 0, init_std: Optional[float] = None, dtype=None, device=None):
        super().__init__()
        per_rank = check_divisible("num_embeddings", num_embeddings, group)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.group, self.sequence_parallel = group, sequence_parallel
        self.vocab_start = group_rank(group) * per_rank
        self.vocab_end = self.vocab_start + per_rank
        full = torch.empty(num_embeddings, embedding_dim).normal_(0.0, init_std or 1.0,
                                                                  generator=make_generator(seed))
        self.weight = _param(full, 0, group, dtype, device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _check_ids(ids, self.num_embeddings)
        if group_size(self.group) == 1:
            out = F.embedding(ids, self.weight)
        else:
            outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
            local = (ids - self.vocab_start).masked_fill(outside, 0)
            out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        if self.sequence_parallel:
            return reduce_scatter_to_sequence_region(out, self.group)
        return reduce_from_tp_region(out, self.group)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings} (/{group_size(self.group)}), {self.embedding_dim}, "
                f"sequence_parallel={self.sequence_parallel}")


def _check_ids(ids: torch.Tensor, num_embeddings: int) -> None:
    # A parallel lookup would silently embed an out-of-range id as zeros; the check reads
    # two scalars back, so it is skipped on accelerators where that would stall the stream.
    if ids.device.type != "cpu" or ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= num_embeddings:
        raise IndexError(f"token ids must be in [0, {num_embeddings}), got min {lo} max {hi}")


class ParallelLayerNorm(nn.Module):
    """LayerNorm whose weight and bias are replicated over tp. With sequence_parallel it
    runs on this rank's sequence shard and sums its parameter gradients over tp."""

    partition_dims = {"weight": None, "bias": None}

    def __init__(self, hidden: int, group=None, sequence_parallel: bool = False, eps: float = 1e-5,
                 dtype=None, device=None):
        super().__init__()
        self.hidden, self.eps = hidden, eps
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight = nn.Parameter(torch.ones(hidden, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(hidden, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.hidden,), self.weight, self.bias, self.eps)   # partial grads under sp


def partition_dim(model: nn.Module, name: str) -> Optional[int]:
    """The tensor dim along which parameter `name` of `model` is split over tp (None: replicated)."""
    owner_name, _, pname = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    return getattr(owner, "partition_dims", {}).get(pname)


def shard_state_dict(model: nn.Module, dense: Dict[str, torch.Tensor], group) -> Dict[str, torch.Tensor]:
    """This rank's state dict of the tp-parallel `model` cut from a dense one (same keys)."""
    return {k: (t if (d := partition_dim(model, k)) is None else _split(t, d, group))
            for k, t in dense.items()}


def gather_state_dict(model: nn.Module, group, tensors: Optional[Dict[str, torch.Tensor]] = None):
    """The dense state dict of the tp-parallel `model` (collective over the tp group).

    `tensors` defaults to model.state_dict(); pass e.g. {name: p.grad} to gather gradients.
    """
    tensors = model.state_dict() if tensors is None else tensors
    return {k: (t if (d := partition_dim(model, k)) is None else _gather(t, d, group))
            for k, t in tensors.items()}
