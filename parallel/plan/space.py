"""The search space: every valid (dp, tp, pp, vpp, schedule, zero_stage, micro_batch_size,
sequence_parallel) and every distinct rank placement, enumerated without any process.

Placement. hcomm.parallel.mesh lays the job out as positions (pp, dp, tp), tp fastest:
position i = pp_rank * (dp * tp) + dp_rank * tp + tp_rank, and the config key
"rank_order" says which global rank holds each position (rank_order[i]). A placement is
a *nesting* of the three axes over the cluster's physical order (ranks rack by rack, host
by host, see cluster.py): "tp<dp<pp" puts tp innermost (a tp group is adjacent ranks, so
inside a host whenever tp divides the host), "dp<tp<pp" puts dp innermost, and so on;
the six nestings give the distinct ways of cutting hosts into groups, and nestings that
give the same rank_order are kept once. Nothing here prefers one nesting: which axis
lands inside a host is decided by the costs (cost.py).

Example, 2 hosts x 4 ranks, dp=2 tp=2 pp=2:
    tp<dp<pp  rank_order [0..7]            tp groups [0,1] [2,3] [4,5] [6,7]   (inside hosts)
    pp<dp<tp  rank_order [0,4,2,6,1,5,3,7]  tp groups [0,4] [2,6] [1,5] [3,7]   (across hosts)
"""
import itertools
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

SCHEDULES = ("1f1b", "gpipe", "interleaved", "zb-h1", "zb-v")
# Zero-bubble schedules split the backward: W writes .grad directly, so ZeRO-2/3's
# gradient hooks would never fire (examples/train_gpt.py refuses the pair)
SPLIT_BACKWARD = ("zb-h1", "zb-v")
AXES = ("tp", "dp", "pp")   # position order of the mesh: tp fastest


@dataclass(frozen=True)
class Candidate:
    dp: int
    tp: int
    pp: int
    vpp: int
    schedule: str
    zero_stage: int
    micro_batch_size: int
    sequence_parallel: bool
    nesting: str                       # e.g. "tp<dp<pp": innermost axis first
    rank_order: Tuple[int, ...] = field(repr=False)

    @property
    def name(self) -> str:
        sched = self.schedule if self.pp > 1 else "-"
        sp = "+sp" if self.sequence_parallel else ""
        v = f" v{self.vpp}" if self.vpp > 1 else ""
        return (f"dp{self.dp} tp{self.tp}{sp} pp{self.pp}{v} z{self.zero_stage} mb{self.micro_batch_size} "
                f"{sched} [{self.nesting}]")

    def microbatches(self, global_batch_size: int) -> int:
        return global_batch_size // (self.micro_batch_size * self.dp)

    def config(self, global_batch_size: int) -> dict:
        """The training-config keys examples/train_gpt.py reads (ParallelConfig.from_config)."""
        cfg = {"tensor_parallel_size": self.tp, "pipeline_stages": self.pp, "zero_stage": self.zero_stage,
               "micro_batch_size": self.micro_batch_size, "global_batch_size": global_batch_size,
               "parallel_strategy": strategy(self.dp, self.tp, self.pp),
               "sequence_parallel": self.sequence_parallel}
        if self.vpp > 1:
            cfg["virtual_pipeline_stages"] = self.vpp
        if list(self.rank_order) != list(range(len(self.rank_order))):
            cfg["rank_order"] = list(self.rank_order)
        return cfg


def strategy(dp, tp, pp) -> str:
    """The parallel_strategy name ParallelConfig accepts for these degrees (the narrowest)."""
    if tp == 1 and pp == 1:
        return "DATA_PARALLEL"
    if dp > 1:
        return "HYBRID"
    if pp == 1:
        return "TENSOR_PARALLEL"
    if tp == 1:
        return "PIPELINE_PARALLEL"
    return "MODEL_PARALLEL"


def divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ----------------------------------------------------------------------- placement

def rank_order(physical: List[int], sizes: dict, nesting: Tuple[str, ...]) -> Tuple[int, ...]:
    """rank_order for the mesh positions when the axes are nested over `physical` as
    `nesting` says (innermost first): physical index = digits of the coordinates with the
    innermost axis varying fastest."""
    world = len(physical)
    out = [0] * world
    for pos in range(world):
        c = {"tp": pos % sizes["tp"], "dp": (pos // sizes["tp"]) % sizes["dp"],
             "pp": pos // (sizes["tp"] * sizes["dp"])}
        index, stride = 0, 1
        for axis in nesting:
            index += c[axis] * stride
            stride *= sizes[axis]
        out[pos] = physical[index]
    return tuple(out)


def placements(physical: List[int], dp: int, tp: int, pp: int) -> List[Tuple[str, Tuple[int, ...]]]:
    """Every distinct (nesting name, rank_order) for these degrees that the mesh accepts:
    it needs every group's ranks ascending along its axis (torch numbers a group's
    members by global rank), which holds for any nesting when hosts hold contiguous rank
    numbers; with interleaved numbering some nestings are left out."""
    sizes = {"dp": dp, "tp": tp, "pp": pp}
    seen, out = set(), []
    for nesting in itertools.permutations(AXES):
        order = rank_order(physical, sizes, nesting)
        if order not in seen and _ascending(groups(order, dp, tp, pp)):
            seen.add(order)
            out.append(("<".join(nesting), order))
    return out


def _ascending(axis_groups: dict) -> bool:
    return all(g == sorted(g) for gs in axis_groups.values() for g in gs)


def groups(order: Tuple[int, ...], dp: int, tp: int, pp: int) -> dict:
    """{'tp': [...], 'dp': [...], 'pp': [...]}: each axis's groups as global ranks (in
    axis order), for a rank_order; what mesh.rank_layout gives for that config."""
    out = {"tp": [], "dp": [], "pp": []}
    at = lambda p, d, t: order[p * dp * tp + d * tp + t]  # noqa: E731
    for p in range(pp):
        for d in range(dp):
            out["tp"].append([at(p, d, t) for t in range(tp)])
    for p in range(pp):
        for t in range(tp):
            out["dp"].append([at(p, d, t) for d in range(dp)])
    for d in range(dp):
        for t in range(tp):
            out["pp"].append([at(p, d, t) for p in range(pp)])
    return out


# --------------------------------------------------------------------- enumeration

@dataclass(frozen=True)
class ModelShape:
    """What validity depends on: layers in model.layers and the dims tp must divide."""
    layers: int                       # entries of model.layers (GPT: n_layers + 2)
    tp_divides: Tuple[Tuple[str, int], ...] = ()   # (name, size) every tp must divide
    seq_len: Optional[int] = None     # sequence parallel needs seq_len % tp == 0
    max_tp: Optional[int] = None      # a model without tp layers: 1

    @classmethod
    def gpt(cls, m: dict) -> "ModelShape":
        hidden, heads = m.get("hidden", 48), m.get("heads", 4)
        ffn = m.get("ffn_hidden") or 4 * hidden
        return cls(m.get("n_layers", 2) + 2, (("heads", heads), ("vocab_size", m.get("vocab_size", 96)),
                                              ("ffn_hidden", ffn)), m.get("seq_len", 16))

    def tp_ok(self, tp: int) -> bool:
        if self.max_tp is not None and tp > self.max_tp:
            return False
        return all(size % tp == 0 for _, size in self.tp_divides)

    def why_not_tp(self, tp: int) -> str:
        bad = [f"{name}({size})" for name, size in self.tp_divides if size % tp]
        return f"tp={tp} does not divide {', '.join(bad)}" if bad else f"the model has no tp layers (tp={tp})"


def degrees(world: int, shape: ModelShape):
    """(dp, tp, pp) with dp*tp*pp = world, tp valid for the model, pp <= layers."""
    for tp in divisors(world):
        if not shape.tp_ok(tp):
            continue
        for pp in divisors(world // tp):
            if pp <= shape.layers:
                yield world // (tp * pp), tp, pp


def schedules(pp: int, m: int, layers: int, max_vpp: int = 4):
    """(schedule, vpp) choices for pp ranks and m micro-batches. zb-h1 and zb-v need
    m >= pp (zero_bubble.py); zb-v cuts the model into 2 * pp chunks, one V per rank."""
    if pp == 1:
        yield "1f1b", 1
        return
    yield "1f1b", 1
    yield "gpipe", 1
    for v in range(2, max_vpp + 1):
        if pp * v <= layers and m >= pp and m % pp == 0:
            yield "interleaved", v
    if m >= pp:
        yield "zb-h1", 1
        if max_vpp >= 2 and 2 * pp <= layers:
            yield "zb-v", 2


def zero_stages_for(schedule: str, zero_stages) -> list:
    """The ZeRO stages a schedule runs with: a split backward only with 0 or 1."""
    return [z for z in zero_stages if z < 2 or schedule not in SPLIT_BACKWARD]


def enumerate_candidates(world: int, global_batch_size: int, shape: ModelShape, physical: List[int],
                         zero_stages=(0, 1, 2, 3), micro_batch_sizes=None, max_vpp: int = 4):
    """Every valid candidate (see the module docstring); raises when none exists."""
    check_inputs(world, global_batch_size, physical)
    out = []
    for dp, tp, pp in degrees(world, shape):
        if global_batch_size % dp:
            continue
        per_dp = global_batch_size // dp
        mbs = [b for b in divisors(per_dp) if micro_batch_sizes is None or b in micro_batch_sizes]
        zs = [z for z in zero_stages if z == 0 or dp > 1]
        sps = [False] + ([True] if tp > 1 and shape.seq_len and shape.seq_len % tp == 0 else [])
        places = placements(physical, dp, tp, pp)
        for mb in mbs:
            m = per_dp // mb
            for sched, v in schedules(pp, m, shape.layers, max_vpp):
                for z, sp, (nest, order) in itertools.product(zero_stages_for(sched, zs), sps, places):
                    out.append(Candidate(dp, tp, pp, v, sched, z, mb, sp, nest, order))
    if not out:
        raise ValueError(no_plan_reason(world, global_batch_size, shape))
    return out


def check_inputs(world, global_batch_size, physical):
    for name, v in (("world_size", world), ("global_batch_size", global_batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if sorted(physical) != list(range(world)):
        raise ValueError(f"the cluster has {len(physical)} ranks but world_size is {world}")


def no_plan_reason(world, global_batch_size, shape) -> str:
    tps = [t for t in divisors(world) if shape.tp_ok(t)]
    reasons = [shape.why_not_tp(t) for t in divisors(world) if not shape.tp_ok(t)]
    dps = [world // (t * p) for t in tps for p in divisors(world // t) if p <= shape.layers]
    if not any(global_batch_size % d == 0 for d in dps):
        reasons.append(f"global_batch_size({global_batch_size}) is divisible by none of the possible dp sizes "
                       f"{sorted(set(dps))}")
    return (f"no valid plan for world_size {world}: " + "; ".join(reasons or ["no (dp, tp, pp) fits"])
            + f" (model: {shape.layers} layers)")
