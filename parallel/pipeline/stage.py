"""Cutting a model into pipeline stages.

A stage is a module called as ``stage(*tensors)`` on the tensors that cross its input
boundary, returning one tensor or a tuple (several tensors may cross a boundary, of any
dtype: hidden states, a residual, integer positions ...).  ``StageChain`` runs a list of
layers with that convention, unpacking a tuple output into the next layer's arguments,
so the unpipelined reference model and its stages compute the same thing.

    layers = [Embed(), Block(), Block(), Block(), Block(), Head()]
    stages = split_layers(layers, 3)                  # [Embed, Block] [Block, Block] [Block, Head]
    mine = stages_for_rank(stages, pp_rank, sched)    # {stage index: module} on this rank

Which stages a pp rank holds is the schedule's placement (schedules.py): r, r + p, r + 2p,
... under the loop placement, r and 2p - 1 - r under ZB-V's V.
"""
from typing import Dict, List, Optional, Sequence

import torch.nn as nn


class StageChain(nn.Module):
    """Layers run in order; a tuple result is unpacked into the next layer's arguments."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, *args):
        x = args
        for layer in self.layers:
            x = layer(*x) if isinstance(x, tuple) else layer(x)
        return x


def _as_layer_list(layers) -> List[nn.Module]:
    if isinstance(layers, StageChain):
        return list(layers.layers)
    if isinstance(layers, (nn.Sequential, nn.ModuleList, list, tuple)):
        out = list(layers)
    else:
        raise TypeError(f"layers must be an nn.Sequential, nn.ModuleList or list of modules, "
                        f"got {type(layers).__name__}")
    for i, layer in enumerate(out):
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer {i} is a {type(layer).__name__}, not an nn.Module")
    return out


def split_layers(layers, num_stages: int, sizes: Optional[Sequence[int]] = None) -> List[StageChain]:
    """Cut layers into num_stages consecutive StageChains sharing the same module objects.

    Without sizes the cut must be even (the common case: equal-cost transformer blocks);
    sizes (layers per stage, summing to the number of layers) allows uneven cuts.
    """
    mods = _as_layer_list(layers)
    if not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages must be a positive int, got {num_stages!r}")
    if sizes is None:
        if len(mods) % num_stages:
            raise ValueError(f"{len(mods)} layers cannot be split evenly into {num_stages} stages "
                             f"({len(mods)} % {num_stages} = {len(mods) % num_stages}); pass sizes= to split unevenly")
        sizes = [len(mods) // num_stages] * num_stages
    sizes = list(sizes)
    if len(sizes) != num_stages or any(not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"sizes must be {num_stages} positive ints, got {sizes}")
    if sum(sizes) != len(mods):
        raise ValueError(f"sizes {sizes} sum to {sum(sizes)}, but there are {len(mods)} layers")
    stages, start = [], 0
    for n in sizes:
        stages.append(StageChain(mods[start:start + n]))
        start += n
    return stages


def stages_for_rank(stages: Sequence[nn.Module], pp_rank: int, schedule) -> Dict[int, nn.Module]:
    """The stages schedule places on pp_rank, as {stage index: module}."""
    if len(stages) != schedule.num_stages:
        raise ValueError(f"{len(stages)} stage modules for a schedule of {schedule.num_stages} stages "
                         f"(p={schedule.num_ranks} * v={schedule.virtual_stages})")
    if not 0 <= pp_rank < schedule.num_ranks:
        raise ValueError(f"pp_rank {pp_rank} outside [0, {schedule.num_ranks})")
    return {s: stages[s] for s in schedule.stages_of(pp_rank)}
