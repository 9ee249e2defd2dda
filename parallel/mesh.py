"""Parallel degrees, the rank layout they imply, and the process groups built from it.

Vocabulary (used across hcomm.parallel): an *axis* is one way of splitting the ranks
(dp = data, tp = tensor, pp = pipeline); a *dim* is a tensor dimension. A *group* is
the set of global ranks that differ only along one axis.

Rank layout: tp is the fastest-varying axis, then dp, then pp:

    global_rank = pp_rank * (dp * tp) + dp_rank * tp + tp_rank

tp ranks are adjacent so that a tp group sits inside one host (tp does an allreduce
per layer and needs the fastest links); dp is next so a host's remaining ranks share a
pipeline stage; pp, which only sends activations to a neighbour, spans hosts.

Example, 8 ranks, tp=2, dp=2, pp=2:

    rank:      0  1  2  3  4  5  6  7
    pp_rank:   0  0  0  0  1  1  1  1
    dp_rank:   0  0  1  1  0  0  1  1
    tp_rank:   0  1  0  1  0  1  0  1

    tp groups: [0, 1] [2, 3] [4, 5] [6, 7]
    dp groups: [0, 2] [1, 3] [4, 6] [5, 7]
    pp groups: [0, 4] [1, 5] [2, 6] [3, 7]     (stage 0 = ranks 0-3, stage 1 = ranks 4-7)

`rank_layout(cfg)` computes these groups without any process, so the layout is unit
tested on its own; `build_mesh(cfg)` turns them into torch.distributed groups and
returns one `Mesh`, which is passed explicitly to whatever needs it (no module globals).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Dict, List, Optional

AXES = ("tp", "dp", "pp")

# Strategy name -> (check on the config, what it requires in words).
_STRATEGIES = {
    "DATA_PARALLEL": (lambda c: c.tp == 1 and c.pp == 1, "tp == pp == 1"),
    "TENSOR_PARALLEL": (lambda c: c.tp > 1 and c.pp == 1, "tp > 1 and pp == 1"),
    "PIPELINE_PARALLEL": (lambda c: c.pp > 1 and c.tp == 1, "pp > 1 and tp == 1"),
    "MODEL_PARALLEL": (lambda c: c.tp * c.pp > 1, "tp * pp > 1"),
    "HYBRID": (lambda c: c.tp * c.pp > 1 and c.dp > 1, "tp * pp > 1 and dp > 1"),
}

# Training-config key -> ParallelConfig field. Several platforms spell the same degree
# differently; all spellings of one field are accepted but may not disagree.
_CONFIG_KEYS = {
    "data_parallel_size": "dp",
    "tensor_parallel_size": "tp",
    "tensor_model_parallel_size": "tp",
    "pipeline_stages": "pp",
    "pipeline_parallel_size": "pp",
    "pipeline_model_parallel_size": "pp",
    "virtual_pipeline_stages": "vpp",
    "virtual_pipeline_model_parallel_size": "vpp",
    "zero_stage": "zero_stage",
    "micro_batch_size": "micro_batch_size",
    "global_batch_size": "global_batch_size",
    "sequence_parallel": "sequence_parallel",
}
_OTHER_KEYS = ("parallel_strategy", "gradient_accumulation_steps")
# Words that mark an unknown key as a parallelism key (so probably a typo, not a key of
# some other subsystem that happens to share the dict).
_PARALLEL_WORDS = ("parallel", "pipeline", "zero", "micro_batch", "global_batch", "accumulation")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class ParallelConfig:
    """Degrees of parallelism and batch sizes of one training job.

    dp, tp, pp: data, tensor and pipeline degrees; dp * tp * pp = world size.
    vpp: virtual pipeline stages (model chunks) per pipeline rank; > 1 only with pp > 1.
    zero_stage: 0 (off), 1 (optimizer state), 2 (+ gradients), 3 (+ parameters), over dp.
    micro_batch_size: samples per forward on one dp rank.
    global_batch_size: samples per optimizer step over all dp ranks; defaults to
        micro_batch_size * dp (no gradient accumulation).
    sequence_parallel: shard activations along the sequence in the tp regions that
        tensor parallelism leaves replicated (LayerNorm, dropout).
    """

    dp: int
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    zero_stage: int = 0
    micro_batch_size: int = 1
    global_batch_size: Optional[int] = None
    sequence_parallel: bool = False

    def __post_init__(self):
        for name in ("dp", "tp", "pp", "vpp", "micro_batch_size"):
            _check_int(name, getattr(self, name), 1)
        _check_int("zero_stage", self.zero_stage, 0)
        if self.zero_stage > 3:
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.vpp > 1 and self.pp == 1:
            raise ValueError(f"vpp({self.vpp}) > 1 needs pipeline parallelism, but pp(1)")
        if not isinstance(self.sequence_parallel, bool):
            raise TypeError(f"sequence_parallel must be a bool, got {self.sequence_parallel!r}")
        self._check_batch()

    def _check_batch(self) -> None:
        per_step = self.micro_batch_size * self.dp
        if self.global_batch_size is None:
            object.__setattr__(self, "global_batch_size", per_step)  # frozen: set once here
            return
        _check_int("global_batch_size", self.global_batch_size, 1)
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size({self.global_batch_size}) is not divisible by "
                f"micro_batch_size({self.micro_batch_size}) * dp({self.dp}) = {per_step}")

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def grad_accum_steps(self) -> int:
        """Micro-batches each dp rank runs per optimizer step."""
        return self.global_batch_size // (self.micro_batch_size * self.dp)

    def validate(self, world_size: int) -> "ParallelConfig":
        _check_int("world_size", world_size, 1)
        if self.world_size != world_size:
            raise ValueError(f"dp({self.dp}) * tp({self.tp}) * pp({self.pp}) = {self.world_size} "
                             f"!= world_size({world_size})")
        return self

    @classmethod
    def from_config(cls, d: dict, world_size: int) -> "ParallelConfig":
        """Read a training-platform config dict, derive dp, and validate against world_size.

        Keys: tensor_parallel_size, pipeline_stages (or pipeline_parallel_size),
        virtual_pipeline_stages, zero_stage, micro_batch_size, global_batch_size,
        data_parallel_size (derived as world_size // (tp * pp) when absent),
        sequence_parallel, gradient_accumulation_steps (checked against the derived
        value) and parallel_strategy (DATA_PARALLEL, TENSOR_PARALLEL, PIPELINE_PARALLEL,
        MODEL_PARALLEL, HYBRID; checked against the degrees). Keys of other subsystems
        are ignored; an unknown key that looks like a parallelism key raises.
        """
        _check_int("world_size", world_size, 1)
        kw = _read_keys(d)
        tp, pp = kw.get("tp", 1), kw.get("pp", 1)
        for name, value in (("tensor_parallel_size", tp), ("pipeline_stages", pp)):
            _check_int(name, value, 1)
        if "dp" not in kw:
            if world_size % (tp * pp):
                raise ValueError(f"world_size({world_size}) is not divisible by "
                                 f"tp({tp}) * pp({pp}) = {tp * pp}")
            kw["dp"] = world_size // (tp * pp)
        cfg = cls(**kw).validate(world_size)
        _check_strategy(cfg, d.get("parallel_strategy"))
        _check_accum(cfg, d.get("gradient_accumulation_steps"))
        return cfg


def _read_keys(d: dict) -> Dict[str, object]:
    """Map config keys to ParallelConfig fields; raise on typos and on disagreeing aliases."""
    if not isinstance(d, dict):
        raise TypeError(f"config must be a dict, got {type(d).__name__}")
    known = list(_CONFIG_KEYS) + list(_OTHER_KEYS)
    kw, source = {}, {}
    for key, value in d.items():
        if key in _CONFIG_KEYS:
            name = _CONFIG_KEYS[key]
            if name in kw and kw[name] != value:
                raise ValueError(f"config keys disagree: {source[name]}={kw[name]!r} but {key}={value!r}")
            kw[name], source[name] = value, key
        elif key not in _OTHER_KEYS:
            _reject_if_parallel_key(key, known)
    return kw


def _reject_if_parallel_key(key, known: List[str]) -> None:
    if not isinstance(key, str):
        return
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    if close or any(word in key.lower() for word in _PARALLEL_WORDS):
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown parallelism key {key!r} in config{hint} "
                         f"(known keys: {', '.join(sorted(known))})")


def _check_strategy(cfg: ParallelConfig, strategy) -> None:
    if strategy is None:
        return
    name = str(strategy).upper()
    if name not in _STRATEGIES:
        raise ValueError(f"unknown parallel_strategy {strategy!r}; expected one of {', '.join(_STRATEGIES)}")
    check, needs = _STRATEGIES[name]
    if not check(cfg):
        raise ValueError(f"parallel_strategy {name} needs {needs}, "
                         f"but dp({cfg.dp}) tp({cfg.tp}) pp({cfg.pp})")


def _check_accum(cfg: ParallelConfig, steps) -> None:
    if steps is not None and steps != cfg.grad_accum_steps:
        raise ValueError(
            f"gradient_accumulation_steps({steps}) != global_batch_size({cfg.global_batch_size}) // "
            f"(micro_batch_size({cfg.micro_batch_size}) * dp({cfg.dp})) = {cfg.grad_accum_steps}")


# ---------------------------------------------------------------------------- layout

def global_rank(cfg: ParallelConfig, pp_rank: int, dp_rank: int, tp_rank: int) -> int:
    return pp_rank * (cfg.dp * cfg.tp) + dp_rank * cfg.tp + tp_rank


def coords(cfg: ParallelConfig, rank: int) -> Dict[str, int]:
    """{'tp': tp_rank, 'dp': dp_rank, 'pp': pp_rank} of a global rank."""
    if not 0 <= rank < cfg.world_size:
        raise ValueError(f"rank {rank} outside world_size({cfg.world_size})")
    return {"tp": rank % cfg.tp, "dp": (rank // cfg.tp) % cfg.dp, "pp": rank // (cfg.tp * cfg.dp)}


def rank_layout(cfg: ParallelConfig) -> Dict[str, List[List[int]]]:
    """Every group of every axis, as lists of global ranks, in a fixed order.

    {'tp': [[0, 1], [2, 3], ...], 'dp': [[0, 2], [1, 3], ...], 'pp': [[0, 4], ...]}
    The order is the order in which build_mesh creates the groups on every rank.
    """
    sizes = {"tp": cfg.tp, "dp": cfg.dp, "pp": cfg.pp}
    layout = {}
    for axis in AXES:
        groups = {}
        for rank in range(cfg.world_size):
            c = coords(cfg, rank)
            others = tuple(c[a] for a in AXES if a != axis)  # rank's position off this axis
            groups.setdefault(others, []).append(rank)
        layout[axis] = sorted(groups.values())
        assert all(len(g) == sizes[axis] for g in layout[axis])
    return layout


def describe_layout(cfg: ParallelConfig) -> str:
    """The layout as text, in the form of the module docstring's example (for logs)."""
    ranks = range(cfg.world_size)
    cs = [coords(cfg, r) for r in ranks]
    lines = [f"{'rank:':<10}" + " ".join(f"{r:>2}" for r in ranks)]
    lines += [f"{axis + '_rank:':<10}" + " ".join(f"{c[axis]:>2}" for c in cs) for axis in ("pp", "dp", "tp")]
    layout = rank_layout(cfg)
    lines.append("")
    lines += [f"{axis} groups: " + " ".join(str(g) for g in layout[axis]) for axis in AXES]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ mesh

@dataclass
class Mesh:
    """This rank's view of the layout: its coordinates, groups and neighbours.

    tp_ranks / dp_ranks / pp_ranks are the global ranks of this rank's group on each
    axis, ordered by the rank along that axis (so tp_ranks[tp_rank] == rank).
    """

    cfg: ParallelConfig
    rank: int
    world_size: int
    tp_group: object = field(repr=False)
    dp_group: object = field(repr=False)
    pp_group: object = field(repr=False)
    tp_ranks: List[int] = field(default_factory=list)
    dp_ranks: List[int] = field(default_factory=list)
    pp_ranks: List[int] = field(default_factory=list)

    @property
    def tp_rank(self) -> int:
        return self.tp_ranks.index(self.rank)

    @property
    def dp_rank(self) -> int:
        return self.dp_ranks.index(self.rank)

    @property
    def pp_rank(self) -> int:
        return self.pp_ranks.index(self.rank)

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.cfg.pp - 1

    @property
    def pp_prev(self) -> Optional[int]:
        """Global rank of the previous pipeline stage (same tp and dp rank), or None."""
        return None if self.is_first_stage else self.pp_ranks[self.pp_rank - 1]

    @property
    def pp_next(self) -> Optional[int]:
        return None if self.is_last_stage else self.pp_ranks[self.pp_rank + 1]

    def group(self, axis: str):
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        return getattr(self, f"{axis}_group")


def _my_group(groups: List[List[int]], rank: int) -> List[int]:
    return next(g for g in groups if rank in g)


def build_mesh(cfg: ParallelConfig, rank: Optional[int] = None, world_size: Optional[int] = None,
               backend: Optional[str] = None) -> Mesh:
    """Create the tp, dp and pp groups of `cfg` on an initialised torch.distributed.

    Every rank must call this with the same cfg: torch.distributed.new_group is
    collective, so every rank creates every group, in rank_layout's order, and keeps the
    ones it belongs to. `backend` is passed to new_group (None = the default group's).
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("build_mesh needs torch.distributed initialised (init_process_group) first")
    rank = dist.get_rank() if rank is None else rank
    world_size = dist.get_world_size() if world_size is None else world_size
    if (rank, world_size) != (dist.get_rank(), dist.get_world_size()):
        raise ValueError(f"rank({rank}) / world_size({world_size}) differ from torch.distributed's "
                         f"({dist.get_rank()} / {dist.get_world_size()})")
    cfg.validate(world_size)
    layout = rank_layout(cfg)
    groups = {}
    for axis in AXES:
        for ranks in layout[axis]:
            pg = dist.new_group(ranks, backend=backend)
            if rank in ranks:
                groups[axis] = pg
    return Mesh(cfg=cfg, rank=rank, world_size=world_size,
                tp_group=groups["tp"], dp_group=groups["dp"], pp_group=groups["pp"],
                tp_ranks=_my_group(layout["tp"], rank), dp_ranks=_my_group(layout["dp"], rank),
                pp_ranks=_my_group(layout["pp"], rank))
