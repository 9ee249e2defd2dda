"""Dropout that keeps a tensor-parallel model equal to its dense twin.

Where an activation is replicated over tp (the residual stream under plain tp), every
rank must drop the same elements or the replicas drift apart; where it is sharded (the
heads inside attention, or the sequence under sequence parallelism), each rank needs its
own slice of independent draws. Both hold if every rank draws the mask of the FULL dense
tensor from a generator that all tp ranks seed and advance alike, and keeps its slice:
the mask is then exactly the dense model's. The price is tp times the random numbers a
rank needs (a transient full-size mask). Megatron instead forks per-rank RNG states,
which is cheaper but leaves the parallel model only statistically equal to the dense one.

Each module owns its generator (one per device, created on first use), so a pipeline
stage's masks do not depend on which other layers live on the same rank. The generator
advances on every training forward: recomputing a forward (activation checkpointing)
must save and restore it with get_rng_state / set_rng_state.
"""
from typing import Dict, Optional

import torch
from torch import nn

from .comm import group_rank, group_size


class ShardedDropout(nn.Module):
    """Dropout(p) of a tensor split across the tp group along `shard_dim` (None: replicated)."""

    def __init__(self, p: float, group=None, shard_dim: Optional[int] = None, seed: int = 0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p, self.group, self.shard_dim, self.seed = p, group, shard_dim, seed
        self._generators: Dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def get_rng_state(self, device="cpu") -> torch.Tensor:
        """State of the generator that draws masks for tensors on `device`."""
        return self._generator(torch.device(device)).get_state()

    def set_rng_state(self, state: torch.Tensor, device="cpu") -> None:
        self._generator(torch.device(device)).set_state(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        n, shape = group_size(self.group), list(x.shape)
        if self.shard_dim is not None:
            shape[self.shard_dim] *= n
        keep = torch.empty(shape, device=x.device, dtype=x.dtype)
        keep.bernoulli_(1.0 - self.p, generator=self._generator(x.device))
        if self.shard_dim is not None and n > 1:
            keep = keep.chunk(n, self.shard_dim)[group_rank(self.group)]
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, shard_dim={self.shard_dim}, tp={group_size(self.group)}"
