"""Parallel degrees, the rank layout they imply, and the process groups built from it.

Vocabulary (used across hcomm.parallel): an *axis* is one way of splitting the ranks
(dp = data, tp = tensor, pp = pipeline); a *dim* is a tensor dimension. A *group* is
the set of global ranks that differ only along one axis.

Rank layout: the axes form a grid of shape (pp, dp, tp), tp the fastest-varying:

    position    = pp_rank * (dp * tp) + dp_rank * tp + tp_rank
    global_rank = rank_order[position]      (rank_order defaults to the identity)

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

With rank_order = (0, 2, 1, 3, 4, 6, 5, 7) the same grid puts tp groups on [0, 2] [1, 3]
[4, 6] [5, 7] and dp groups on [0, 1] [2, 3] ... (a placement chosen by a planner). Within
every group the ranks must ascend along the axis: torch.distributed numbers a group's
members by global rank and every collective follows that number, so the axis rank and
the group rank must be the same; a rank_order that breaks this raises.

`rank_layout(cfg)` computes these groups without any process, so the layout is unit
tested on its own; `build_mesh(cfg)` builds them through torch's DeviceMesh over
rank_grid(cfg) and returns one `Mesh` (groups, ranks and the DeviceMesh), which is
passed explicitly to whatever needs it (no module globals).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

# The mesh axes, outermost first: the dims of the (pp, dp, tp) grid and of torch's
# DeviceMesh. A new axis (context, expert) is one entry here plus its ParallelConfig field.
AXES = ("pp", "dp", "tp")

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
    "rank_order": "rank_order",
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
    rank_order: placement; a permutation of range(world_size), or None (identity). The
        grid position i (row-major over (pp, dp, tp), tp fastest) is held by global rank
        rank_order[i], so a planner can put a tp group on ranks that are not adjacent.
        Each group's ranks must ascend along its axis (torch numbers a group's members by
        global rank); (0, 2, 1, 3) is valid at tp=2 dp=2, (1, 0, 2, 3) is not.
    """

    dp: int
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    zero_stage: int = 0
    micro_batch_size: int = 1
    global_batch_size: Optional[int] = None
    sequence_parallel: bool = False
    rank_order: Optional[Tuple[int, ...]] = None

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
        self._check_rank_order()

    def _check_rank_order(self) -> None:
        order = self.rank_order
        if order is None:
            return
        if not isinstance(order, (tuple, list)) or any(isinstance(r, bool) or not isinstance(r, int) for r in order):
            raise TypeError(f"rank_order must be a tuple of ints, got {order!r}")
        n = self.world_size
        if sorted(order) != list(range(n)):
            missing = sorted(set(range(n)) - set(order))
            extra = sorted(r for r in set(order) if not 0 <= r < n)
            dups = sorted(r for r in set(order) if list(order).count(r) > 1)
            raise ValueError(f"rank_order must be a permutation of range(world_size({n})) = "
                             f"range(dp({self.dp}) * tp({self.tp}) * pp({self.pp})), got {list(order)} "
                             f"(length {len(order)}; missing {missing}, out of range {extra}, repeated {dups})")
        object.__setattr__(self, "rank_order", tuple(order))  # frozen: normalise lists once here
        # torch.distributed numbers a group's members by global rank, and every collective
        # (shard index, gather order) follows that number; the grid's axis rank must agree.
        for axis, groups in _axis_groups(self).items():
            for g in groups:
                if g != sorted(g):
                    raise ValueError(
                        f"rank_order {list(order)} puts {axis} group {g} out of ascending order along {axis}: "
                        f"torch.distributed ranks a group's members by global rank, so each group's ranks "
                        f"must ascend along its axis (here {axis} group {sorted(g)})")

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
    def axes(self) -> Tuple[Tuple[str, int], ...]:
        """(name, degree) of every mesh axis, outermost first: (('pp', pp), ('dp', dp), ('tp', tp))."""
        return tuple((name, getattr(self, name)) for name in AXES)

    def ranks_in_layout_order(self) -> Tuple[int, ...]:
        """Global rank at each position of the (pp, dp, tp) grid: rank_order, or the identity."""
        return self.rank_order if self.rank_order is not None else tuple(range(self.world_size))

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

def _position(cfg: ParallelConfig, coord: Dict[str, int]) -> int:
    """Row-major index of a coordinate in the (pp, dp, tp) grid: tp fastest."""
    pos = 0
    for name, degree in cfg.axes:
        pos = pos * degree + coord[name]
    return pos


def _coord_of_position(cfg: ParallelConfig, pos: int) -> Dict[str, int]:
    coord = {}
    for name, degree in reversed(cfg.axes):
        pos, coord[name] = divmod(pos, degree)
    return {name: coord[name] for name in AXES}


def global_rank(cfg: ParallelConfig, pp_rank: int, dp_rank: int, tp_rank: int) -> int:
    """The global rank holding grid position (pp_rank, dp_rank, tp_rank)."""
    return cfg.ranks_in_layout_order()[_position(cfg, {"pp": pp_rank, "dp": dp_rank, "tp": tp_rank})]


def coords(cfg: ParallelConfig, rank: int) -> Dict[str, int]:
    """{'pp': pp_rank, 'dp': dp_rank, 'tp': tp_rank} of a global rank."""
    if not 0 <= rank < cfg.world_size:
        raise ValueError(f"rank {rank} outside world_size({cfg.world_size})")
    return _coord_of_position(cfg, cfg.ranks_in_layout_order().index(rank))


def rank_grid(cfg: ParallelConfig):
    """The global ranks as a torch tensor of shape (pp, dp, tp): grid[p, d, t] = global rank.

    This is the `mesh` argument of torch's DeviceMesh, so DeviceMesh's groups are
    exactly rank_layout's.
    """
    import torch

    return torch.tensor(cfg.ranks_in_layout_order(), dtype=torch.int64).reshape(
        tuple(degree for _, degree in cfg.axes))


def _axis_groups(cfg: ParallelConfig) -> Dict[str, List[List[int]]]:
    """Every group of every axis, each group's ranks in axis order (group[i] has axis rank i)."""
    layout = {}
    for axis in AXES:
        groups = {}
        for pos, rank in enumerate(cfg.ranks_in_layout_order()):
            c = _coord_of_position(cfg, pos)
            others = tuple(c[a] for a in AXES if a != axis)  # position off this axis
            groups.setdefault(others, []).append(rank)       # positions ascend along `axis`
        layout[axis] = list(groups.values())
    return layout


def rank_layout(cfg: ParallelConfig) -> Dict[str, List[List[int]]]:
    """Every group of every axis, as lists of global ranks, groups sorted.

    {'pp': [[0, 4], ...], 'dp': [[0, 2], [1, 3], ...], 'tp': [[0, 1], [2, 3], ...]}
    Within a group the ranks are in axis order (group[i] has axis rank i), which is also
    ascending global rank (ParallelConfig checks rank_order keeps it so).
    """
    return {axis: sorted(groups) for axis, groups in _axis_groups(cfg).items()}


def describe_layout(cfg: ParallelConfig) -> str:
    """The layout as text, in the form of the module docstring's example (for logs)."""
    ranks = range(cfg.world_size)
    cs = [coords(cfg, r) for r in ranks]
    lines = [f"{'rank:':<10}" + " ".join(f"{r:>2}" for r in ranks)]
    lines += [f"{axis + '_rank:':<10}" + " ".join(f"{c[axis]:>2}" for c in cs) for axis in AXES]
    layout = rank_layout(cfg)
    lines.append("")
    lines += [f"{axis} groups: " + " ".join(str(g) for g in layout[axis]) for axis in reversed(AXES)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ mesh

@dataclass
class Mesh:
    """This rank's view of the layout: its coordinates, groups and neighbours.

    groups[axis] is the process group of this rank's group on `axis`; ranks[axis] its
    global ranks ordered by the rank along that axis (so ranks['tp'][tp_rank] == rank).
    device_mesh is torch's DeviceMesh over the same grid (dims named 'pp', 'dp', 'tp'),
    or None when the Mesh was built by hand: DTensor, FSDP2 and torch's own tensor
    parallelism take `device_mesh['dp']` etc. and then share hcomm.parallel's groups.
    """

    cfg: ParallelConfig
    rank: int
    world_size: int
    groups: Dict[str, object] = field(repr=False)
    ranks: Dict[str, List[int]]
    device_mesh: object = field(default=None, repr=False)

    def group(self, axis: str):
        return self.groups[_check_axis(axis)]

    def axis_rank(self, axis: str) -> int:
        return self.ranks[_check_axis(axis)].index(self.rank)

    # Named shortcuts for the three axes every caller uses.
    tp_group = property(lambda self: self.groups["tp"])
    dp_group = property(lambda self: self.groups["dp"])
    pp_group = property(lambda self: self.groups["pp"])
    tp_ranks = property(lambda self: self.ranks["tp"])
    dp_ranks = property(lambda self: self.ranks["dp"])
    pp_ranks = property(lambda self: self.ranks["pp"])
    tp_rank = property(lambda self: self.axis_rank("tp"))
    dp_rank = property(lambda self: self.axis_rank("dp"))
    pp_rank = property(lambda self: self.axis_rank("pp"))

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


def _check_axis(axis: str) -> str:
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    return axis


def _my_group(groups: List[List[int]], rank: int) -> List[int]:
    return next(g for g in groups if rank in g)


def build_mesh(cfg: ParallelConfig, rank: Optional[int] = None, world_size: Optional[int] = None,
               backend: Optional[str] = None) -> Mesh:
    """Create the groups of every axis of `cfg` through torch's DeviceMesh.

    Every rank must call this with the same cfg (DeviceMesh creates every group on every
    rank, collectively). `backend` overrides the groups' backend (None = the default
    group's). The DeviceMesh is built on device type "cpu" over rank_grid(cfg).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("build_mesh needs torch.distributed initialised (init_process_group) first")
    rank = dist.get_rank() if rank is None else rank
    world_size = dist.get_world_size() if world_size is None else world_size
    if (rank, world_size) != (dist.get_rank(), dist.get_world_size()):
        raise ValueError(f"rank({rank}) / world_size({world_size}) differ from torch.distributed's "
                         f"({dist.get_rank()} / {dist.get_world_size()})")
    cfg.validate(world_size)
    override = None if backend is None else tuple((backend, None) for _ in AXES)
    device_mesh = DeviceMesh("cpu", rank_grid(cfg), mesh_dim_names=AXES, backend_override=override)
    layout = rank_layout(cfg)
    groups = {axis: device_mesh.get_group(axis) for axis in AXES}
    ranks = {axis: _my_group(layout[axis], rank) for axis in AXES}
    for axis in AXES:   # DeviceMesh and rank_layout must agree, or every caller is wrong
        got = dist.get_process_group_ranks(groups[axis])
        if got != ranks[axis]:
            raise AssertionError(f"DeviceMesh's {axis} group {got} != rank_layout's {ranks[axis]}")
    return Mesh(cfg=cfg, rank=rank, world_size=world_size, groups=groups, ranks=ranks, device_mesh=device_mesh)
