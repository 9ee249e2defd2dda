"""Tensor parallelism for a model written with plain torch layers: parallelize(module, plan, tp).

The plan maps module-name patterns (fnmatch, matched against the qualified names of
`module.named_modules()`) to a style, as torch's `parallelize_module` and Megatron's
layer specs do:

    plan = {
        "tok_emb":          "vocab",      # nn.Embedding -> VocabParallelEmbedding (rows split)
        "blocks.*.attn.q":  "colwise",    # nn.Linear -> ColumnParallelLinear (outputs split)
        "blocks.*.attn.k":  "colwise",
        "blocks.*.attn.v":  "colwise",
        "blocks.*.attn.out": "rowwise",   # nn.Linear -> RowParallelLinear (inputs split, sum)
        "blocks.*.mlp.up":  "colwise",
        "blocks.*.mlp.down": "rowwise",
        "lm_head":          Colwise(gather_output=True),   # full logits for F.cross_entropy
    }
    parallelize(model, plan, tp_group)

Each matched layer is replaced by its parallel twin holding this rank's shard of the
dense layer's own weights (so the parallelized model computes what the dense one did),
on the same dtype and device. The usual pairing is colwise then rowwise: the colwise
output stays split along the features and the rowwise layer takes it as it is
(input_is_parallel=True), one allreduce per pair in forward and one in backward.

What the model's own code must allow: between a colwise and a rowwise layer it sees
only this rank's features. Attention must therefore infer the local number of heads,
e.g. `q.view(b, s, -1, head_dim)` (torchtitan's models do this), not `view(b, s,
n_heads, head_dim)`. A fused qkv Linear cannot be column-split as it is (the q, k and v
rows of one rank would be different heads' q rows); use separate q, k, v layers.

Errors, before any module is replaced: a pattern that matches no module, a module
matched by two patterns, a style on the wrong layer type, and a split size not
divisible by the tp size, each naming the module (and the pattern). Sequence
parallelism is not offered here: it also changes the activations' shape between layers
(the sequence is split), which a plain model's code (position embeddings, residual
adds) does not expect; hcomm.parallel.models.GPT shows a model written for it.

`group=None` means tp = 1 (the model is left dense), as everywhere in hcomm.parallel.tensor.
"""
import fnmatch
from dataclasses import dataclass
from typing import Dict, List, Tuple, Union

import torch
from torch import nn

from .comm import _split, group_size
from .layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding


@dataclass(frozen=True)
class Colwise:
    """nn.Linear -> ColumnParallelLinear; gather_output=True returns the full output."""
    gather_output: bool = False


@dataclass(frozen=True)
class Rowwise:
    """nn.Linear -> RowParallelLinear; input_is_parallel=False splits a full input first."""
    input_is_parallel: bool = True


@dataclass(frozen=True)
class Vocab:
    """nn.Embedding -> VocabParallelEmbedding (the vocabulary's rows split over tp)."""


Style = Union[Colwise, Rowwise, Vocab, str]
_NAMED = {"colwise": Colwise(), "rowwise": Rowwise(), "vocab": Vocab()}
_NEEDS = {Colwise: nn.Linear, Rowwise: nn.Linear, Vocab: nn.Embedding}


def _style(pattern: str, style: Style):
    if isinstance(style, str):
        if style not in _NAMED:
            raise ValueError(f"plan[{pattern!r}]: unknown style {style!r}; expected one of {sorted(_NAMED)} "
                             f"or Colwise(...), Rowwise(...), Vocab()")
        return _NAMED[style]
    if type(style) not in _NEEDS:
        raise TypeError(f"plan[{pattern!r}]: style must be a string or Colwise/Rowwise/Vocab, got {style!r}")
    return style


def match_plan(module: nn.Module, plan: Dict[str, Style]) -> List[Tuple[str, nn.Module, object]]:
    """(name, layer, style) for every module the plan matches; raises on a bad plan."""
    if not isinstance(plan, dict) or not plan:
        raise ValueError("plan must be a non-empty dict of module-name pattern -> style")
    styles = {p: _style(p, s) for p, s in plan.items()}
    found, used = {}, {p: 0 for p in plan}
    for name, layer in module.named_modules():
        for pattern, style in styles.items():
            if name and fnmatch.fnmatchcase(name, pattern):
                if name in found:
                    raise ValueError(f"module '{name}' is matched by two plan patterns: "
                                     f"{found[name][2]!r} and {pattern!r}")
                found[name] = (layer, style, pattern)
                used[pattern] += 1
    unused = [p for p, n in used.items() if n == 0]
    if unused:
        raise ValueError(f"plan patterns {unused} match no module of {type(module).__name__} "
                         f"(module names look like {[n for n, _ in module.named_modules() if n][:6]})")
    _check_not_tied(module, found)
    for name, (layer, style, pattern) in found.items():
        need = _NEEDS[type(style)]
        if type(layer) is not need:
            raise TypeError(f"module '{name}' ({type(layer).__name__}, plan[{pattern!r}] = {style!r}) "
                            f"is not an nn.{need.__name__}")
    return [(name, layer, style) for name, (layer, style, _) in found.items()]


def _check_not_tied(module: nn.Module, found: dict) -> None:
    """A weight shared with another module (a tied embedding and head) would be untied."""
    owners = {}
    for owner, sub in module.named_modules(remove_duplicate=False):
        for p in sub.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(owner)
    for name, (layer, _, _) in found.items():
        for p in layer.parameters(recurse=False):
            others = sorted(owners[id(p)] - {name})
            if others:
                raise ValueError(f"module '{name}' shares a parameter with {others} (tied weights): "
                                 f"parallelizing it would untie them")


def _check_split(name: str, what: str, size: int, tp: int) -> None:
    if size % tp:
        raise ValueError(f"module '{name}': {what}({size}) is not divisible by the tensor-parallel size({tp})")


def _twin(name: str, layer: nn.Module, style, group) -> nn.Module:
    """The parallel layer holding this rank's shard of `layer`'s weights."""
    tp = group_size(group)
    dtype, device = layer.weight.dtype, layer.weight.device
    if isinstance(style, Vocab):
        _check_split(name, "num_embeddings", layer.num_embeddings, tp)
        if layer.padding_idx is not None or layer.max_norm is not None:
            raise ValueError(f"module '{name}': nn.Embedding with padding_idx or max_norm has no vocab-parallel twin")
        new = VocabParallelEmbedding(layer.num_embeddings, layer.embedding_dim, group, dtype=dtype, device=device)
        dims = {"weight": 0}
    elif isinstance(style, Colwise):
        _check_split(name, "out_features", layer.out_features, tp)
        new = ColumnParallelLinear(layer.in_features, layer.out_features, layer.bias is not None,
                                   gather_output=style.gather_output, group=group, dtype=dtype, device=device)
        dims = {"weight": 0, "bias": 0}
    else:
        _check_split(name, "in_features", layer.in_features, tp)
        new = RowParallelLinear(layer.in_features, layer.out_features, layer.bias is not None,
                                input_is_parallel=style.input_is_parallel, group=group, dtype=dtype, device=device)
        dims = {"weight": 1, "bias": None}
    new.train(layer.training)
    with torch.no_grad():   # the twin drew its own dense init (a transient full tensor): replace it
        for pname, p in new.named_parameters(recurse=False):
            dense = getattr(layer, pname)
            p.copy_(dense if dims[pname] is None else _split(dense, dims[pname], group))
    return new


def parallelize(module: nn.Module, plan: Dict[str, Style], group) -> nn.Module:
    """Swap the plan's layers of `module` for tensor-parallel twins over `group`, in place.

    Every rank must pass the same dense weights (e.g. the same seed or checkpoint) and
    the same plan. Returns `module`. Everything is checked before anything is replaced.
    """
    matched = match_plan(module, plan)
    if group_size(group) == 1:
        return module
    twins = [(name, _twin(name, layer, style, group)) for name, layer, style in matched]
    for name, twin in twins:
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, twin)
    return module
