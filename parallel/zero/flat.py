"""Flat buffers: packing parameters back to back, padding, and the sharding arithmetic.

Vocabulary (used across hcomm.parallel.zero):
- *flat buffer*: several parameters laid end to end in one 1-D tensor.
- *padded numel*: the flat length rounded up to a multiple of the dp size N, so that
  every rank owns one equal, contiguous *shard* of `padded_numel // N` elements.
- *slot*: where one parameter sits in the flat buffer (offset, numel, shape).
- *piece*: the part of one slot that falls inside one rank's shard.

Example, N = 2, parameters a (3 elements) and b (4 elements): numel 7, padded 8, shard 4

    flat:    a0 a1 a2 b0 | b1 b2 b3 pad
    rank 0 owns [0, 4): pieces (a, 0..3) and (b, 0..1)
    rank 1 owns [4, 8): piece  (b, 1..4); the pad element is always zero

Everything here is plain arithmetic on shapes, so it is tested without processes.
"""
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple


@dataclass(frozen=True)
class Slot:
    name: str
    shape: Tuple[int, ...]
    offset: int
    numel: int


@dataclass(frozen=True)
class Piece:
    """slot[param_lo:param_hi] (flattened) lives at shard[shard_lo : shard_lo + len]."""
    slot: Slot
    param_lo: int
    param_hi: int
    shard_lo: int

    @property
    def length(self):
        return self.param_hi - self.param_lo


def padded(numel: int, world_size: int) -> int:
    """Round numel up to a multiple of world_size (0 stays 0)."""
    return -(-numel // world_size) * world_size


@dataclass(frozen=True)
class FlatLayout:
    slots: Tuple[Slot, ...]
    world_size: int

    @classmethod
    def build(cls, named_shapes: Sequence[Tuple[str, Sequence[int]]], world_size: int) -> "FlatLayout":
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        slots, offset = [], 0
        for name, shape in named_shapes:
            numel = math.prod(shape)
            slots.append(Slot(name, tuple(int(s) for s in shape), offset, numel))
            offset += numel
        return cls(tuple(slots), world_size)

    @property
    def numel(self) -> int:
        return sum(s.numel for s in self.slots)

    @property
    def padded_numel(self) -> int:
        return padded(self.numel, self.world_size)

    @property
    def shard_numel(self) -> int:
        return self.padded_numel // self.world_size

    def shard_range(self, rank: int) -> Tuple[int, int]:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside [0, {self.world_size})")
        lo = rank * self.shard_numel
        return lo, lo + self.shard_numel

    def pieces(self, rank: int) -> List[Piece]:
        """The parts of each parameter that rank's shard holds, in flat order."""
        lo, hi = self.shard_range(rank)
        out = []
        for s in self.slots:
            a, b = max(lo, s.offset), min(hi, s.offset + s.numel)
            if a < b:
                out.append(Piece(s, a - s.offset, b - s.offset, a - lo))
        return out

    def to_dict(self) -> dict:
        return {"world_size": self.world_size,
                "slots": [{"name": s.name, "shape": list(s.shape), "offset": s.offset, "numel": s.numel}
                          for s in self.slots]}

    @classmethod
    def from_dict(cls, d: dict) -> "FlatLayout":
        slots = tuple(Slot(s["name"], tuple(s["shape"]), s["offset"], s["numel"]) for s in d["slots"])
        return cls(slots, d["world_size"])


def split_into_buckets(sizes_bytes: Sequence[int], bucket_bytes: int) -> List[List[int]]:
    """Group consecutive items (by index) into buckets of about bucket_bytes.

    A bucket closes once it reaches bucket_bytes, so one large parameter gets a bucket of
    its own and no parameter is ever split across buckets (that keeps each parameter's
    gradient hook tied to exactly one reduce-scatter).
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket size must be > 0 bytes, got {bucket_bytes}")
    buckets, cur, cur_bytes = [], [], 0
    for i, nbytes in enumerate(sizes_bytes):
        cur.append(i)
        cur_bytes += nbytes
        if cur_bytes >= bucket_bytes:
            buckets.append(cur)
            cur, cur_bytes = [], 0
    if cur:
        buckets.append(cur)
    return buckets
