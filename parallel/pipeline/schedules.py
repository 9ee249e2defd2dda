"""Pipeline schedules as data: one list of actions per pipeline rank.

Vocabulary (used throughout hcomm.parallel.pipeline):

    p    pipeline ranks (the pp degree); a rank's index in its pipeline is its pp rank.
    v    virtual stages (model chunks) per pp rank; the model is cut into S = p * v stages.
    m    micro-batches per step.
    Where stage s lives is the schedule's *placement* (``Schedule.stage_rank``):
      loop  stage s on pp rank ``s % p`` (GPipe, 1F1B, interleaved, ZB-H1).  With p = 2,
            v = 2 (S = 4): pp rank 0 holds stages 0 and 2, pp rank 1 holds 1 and 3, so
            activations go 0 -> 1 -> 0 -> 1 and gradients come back the same way.
      v     v = 2 only (ZB-V): stage s on pp rank s for s < p, else 2p - 1 - s.  With
            p = 4 (S = 8): rank 0 holds stages 0 and 7, rank 1 1 and 6, rank 2 2 and 5,
            rank 3 3 and 4; activations go 0 -> 1 -> 2 -> 3, stay on rank 3 (stage 3 ->
            4 is a local hand-off), come back 3 -> 2 -> 1 -> 0, and rank 0, which holds
            the first stage, also holds the last (the loss).  Every link carries traffic
            both ways and no message takes the wrap-around link (p-1 -> 0).

Actions (``Action(op, mb, stage, peer)``; ``peer`` is a pp rank, only for communication):

    F(mb, s)            forward of stage s on micro-batch mb (the last stage also runs the loss)
    B(mb, s)            backward of stage s on micro-batch mb (only the gradient of the stage's
                        inputs when the schedule also has W actions, as zero-bubble schedules do)
    W(mb, s)            weight gradient of stage s on micro-batch mb (zero-bubble schedules only)
    SEND_F(mb, s, q)    send stage s's output to stage s+1, which lives on pp rank q
    RECV_F(mb, s, q)    receive stage s's input from stage s-1, which lives on pp rank q
    SEND_B(mb, s, q)    send the gradient of stage s's input to stage s-1 on pp rank q
    RECV_B(mb, s, q)    receive the gradient of stage s's output from stage s+1 on pp rank q

A run of consecutive communication actions is one *batch*: the runtime posts it at once
and waits for all of it before the next compute action.  The checker (check.py) models
exactly that, with the strictest semantics any backend has (a send completes only once
its receive is posted, messages on one channel match in order), so a schedule it accepts
runs on NCCL as well as on buffered CPU transports.  (The runtime may post receives
earlier and wait for sends later than that, which only removes waits: p2p.py.)

The generators below only choose the order of F and B on each rank; ``with_comms`` then
places communication the same way for every schedule: the batch between two compute
actions sends what the first produced and receives what the second needs (the pairing
that lets 1F1B's "send activation, receive gradient" meet its neighbour's "send
gradient, receive activation" in one step).
"""
from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Tuple

COMPUTE_OPS = ("F", "B", "W")
COMM_OPS = ("SEND_F", "RECV_F", "SEND_B", "RECV_B")
SCHEDULE_NAMES = ("gpipe", "1f1b", "interleaved", "zb-h1", "zb-v")
PLACEMENTS = ("loop", "v")


def stage_ranks(placement: str, p: int, num_stages: int) -> Tuple[int, ...]:
    """The pp rank of every stage under a placement (see the vocabulary above)."""
    if placement == "loop":
        return tuple(s % p for s in range(num_stages))
    if placement == "v":
        if num_stages != 2 * p:
            raise ValueError(f"placement 'v' needs num_stages = 2 * p = {2 * p} (two chunks per rank), "
                             f"got num_stages={num_stages}")
        return tuple(s if s < p else 2 * p - 1 - s for s in range(num_stages))
    raise ValueError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")


@dataclass(frozen=True)
class Action:
    op: str
    mb: int
    stage: int
    peer: Optional[int] = None

    @property
    def is_compute(self) -> bool:
        return self.op in COMPUTE_OPS

    def __str__(self) -> str:
        peer = "" if self.peer is None else f", peer={self.peer}"
        return f"{self.op}(mb={self.mb}, stage={self.stage}{peer})"

    def short(self) -> str:
        """Compact token for tables: F3.1 = forward of mb 3 on stage 1; >F3.1@2 = send to 2."""
        prefix = {"SEND_F": ">F", "RECV_F": "<F", "SEND_B": ">B", "RECV_B": "<B"}.get(self.op, self.op)
        peer = "" if self.peer is None else f"@{self.peer}"
        return f"{prefix}{self.mb}.{self.stage}{peer}"


@dataclass(frozen=True)
class Schedule:
    """Per-pp-rank action lists plus the shape (p, S, m) and stage placement they were built for."""
    name: str
    num_ranks: int
    num_stages: int
    num_microbatches: int
    actions: Tuple[Tuple[Action, ...], ...]
    placement: str = "loop"

    def __post_init__(self):
        self._ranks   # an unknown placement, or 'v' with num_stages != 2p, raises here

    @cached_property
    def _ranks(self) -> Tuple[int, ...]:
        # computed once: the checker asks for every action (cached_property writes the
        # instance dict directly, so it works on a frozen dataclass)
        return stage_ranks(self.placement, self.num_ranks, self.num_stages)

    @property
    def virtual_stages(self) -> int:
        return self.num_stages // self.num_ranks

    @property
    def split_backward(self) -> bool:
        """True when B computes only input gradients and W actions the weight gradients."""
        return any(a.op == "W" for acts in self.actions for a in acts)

    def stage_rank(self, stage: int) -> int:
        return self._ranks[stage]

    def stages_of(self, rank: int) -> Tuple[int, ...]:
        return tuple(s for s, r in enumerate(self._ranks) if r == rank)

    def format(self, compute_only: bool = False) -> str:
        where = "" if self.placement == "loop" else f" placement={self.placement}"
        lines = [f"{self.name}: p={self.num_ranks} v={self.virtual_stages} m={self.num_microbatches}{where}"]
        for rank, acts in enumerate(self.actions):
            toks = [a.short() for a in acts if a.is_compute or not compute_only]
            lines.append(f"  rank {rank}: " + " ".join(toks))
        return "\n".join(lines)


def _check_positive(**values):
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _comm_after(act: Action, ranks: Tuple[int, ...]) -> Optional[Action]:
    """The send a compute action's result needs, or None if its consumer is local.
    ranks[s] is the pp rank of stage s (the schedule's placement)."""
    if act.op == "F" and act.stage < len(ranks) - 1:
        peer = ranks[act.stage + 1]
        return Action("SEND_F", act.mb, act.stage, peer) if peer != ranks[act.stage] else None
    if act.op == "B" and act.stage > 0:
        peer = ranks[act.stage - 1]
        return Action("SEND_B", act.mb, act.stage, peer) if peer != ranks[act.stage] else None
    return None


def _comm_before(act: Action, ranks: Tuple[int, ...]) -> Optional[Action]:
    """The receive a compute action needs first, or None if its producer is local."""
    if act.op == "F" and act.stage > 0:
        peer = ranks[act.stage - 1]
        return Action("RECV_F", act.mb, act.stage, peer) if peer != ranks[act.stage] else None
    if act.op == "B" and act.stage < len(ranks) - 1:
        peer = ranks[act.stage + 1]
        return Action("RECV_B", act.mb, act.stage, peer) if peer != ranks[act.stage] else None
    return None


def with_comms(name: str, compute: list, p: int, num_stages: int, m: int, syncs: list = None,
               placement: str = "loop") -> Schedule:
    """Insert sends/receives around per-rank compute orders.

    syncs[rank] is the set of positions k (0 <= k <= len(order)) where a batch may sit:
    before order[k] (k = len(order): after the last action).  Each send goes to the first
    batch after its compute, each receive to the last batch before it.  By default every
    position is a sync point: send right after, receive right before.
    """
    where = stage_ranks(placement, p, num_stages)
    ranks = []
    for rank, order in enumerate(compute):
        points = set(range(len(order) + 1)) if syncs is None else set(syncs[rank]) | {0, len(order)}
        batches = {k: [] for k in points}
        for k, act in enumerate(order):
            recv, send = _comm_before(act, where), _comm_after(act, where)
            if recv is not None:
                batches[max(q for q in points if q <= k)].append(recv)
            if send is not None:
                batches[min(q for q in points if q > k)].append(send)
        acts = []
        for k in range(len(order) + 1):
            # sends first: their order on a channel is the order the peer must receive in
            acts.extend(sorted(batches.get(k, []), key=lambda a: not a.op.startswith("SEND")))
            if k < len(order):
                acts.append(order[k])
        ranks.append(tuple(acts))
    return Schedule(name, p, num_stages, m, tuple(ranks), placement)


def gpipe(p: int, m: int, v: int = 1) -> Schedule:
    """All forwards, then all backwards.  Bubble (p-1)/(m+p-1); m micro-batches stashed per rank."""
    _check_positive(p=p, m=m, v=v)
    if v != 1:
        # breadth-first GPipe over looped stages needs unbounded buffering: with
        # rendezvous sends the checker finds it deadlocks once m > p
        raise ValueError(f"gpipe runs one stage per rank (v=1), got v={v}; use 'interleaved' for virtual stages")
    compute = []
    for rank in range(p):
        order = [Action("F", mb, rank) for mb in range(m)] + [Action("B", mb, rank) for mb in range(m)]
        compute.append(order)
    return with_comms("gpipe", compute, p, p, m)


def one_f_one_b(p: int, m: int, v: int = 1) -> Schedule:
    """1F1B: rank r runs min(p-1-r, m) warm-up forwards, then alternates F and B.

    Bubble (p-1)/(m+p-1) like GPipe, but at most p - r micro-batches are stashed on rank r.
    """
    _check_positive(p=p, m=m, v=v)
    if v != 1:
        raise ValueError(f"1f1b runs one stage per rank (v=1), got v={v}; use 'interleaved' for virtual stages")
    compute = []
    for rank in range(p):
        warmup = min(p - 1 - rank, m)
        order = [Action("F", mb, rank) for mb in range(warmup)]
        for i in range(m - warmup):
            order += [Action("F", warmup + i, rank), Action("B", i, rank)]
        order += [Action("B", mb, rank) for mb in range(m - warmup, m)]
        compute.append(order)
    return with_comms("1f1b", compute, p, p, m)


def _interleaved_unit(k: int, p: int, v: int, backward: bool) -> Tuple[int, int]:
    """(micro-batch, chunk) of a rank's k-th forward (or backward) unit.

    Units go in rounds of p micro-batches per chunk: mbs 0..p-1 on chunk 0, the same
    mbs on chunk 1, ..., then mbs p..2p-1 on chunk 0, ...; backwards walk chunks in reverse.
    """
    group, within = divmod(k, p * v)
    chunk = within // p
    mb = group * p + within % p
    return mb, (v - 1 - chunk) if backward else chunk


def check_interleaved(p: int, m: int, v: int):
    """Raise ValueError when interleaved 1F1B cannot be built for (p, m, v)."""
    _check_positive(p=p, m=m, v=v)
    if v < 2:
        raise ValueError(f"interleaved 1F1B needs v >= 2 virtual stages per rank, got v={v}; use '1f1b'")
    if m < p:
        raise ValueError(f"interleaved 1F1B needs at least p micro-batches: m={m} < p={p}")
    if m % p:
        raise ValueError(f"interleaved 1F1B needs m divisible by p: m={m} % p={p} = {m % p}")


def interleaved_1f1b(p: int, m: int, v: int = 2) -> Schedule:
    """Interleaved 1F1B: v chunks per rank cut the bubble to about (p-1)/v / (m + (p-1)/v).

    Rank r warms up with 2 * (p-1-r) + (v-1) * p forward units (capped at m * v), then
    alternates one forward unit and one backward unit, then drains the backwards.
    """
    check_interleaved(p, m, v)
    total = m * v
    compute, syncs = [], []
    for rank in range(p):
        def unit(op, k, backward):
            mb, chunk = _interleaved_unit(k, p, v, backward)
            return Action(op, mb, chunk * p + rank)

        warmup = min(2 * (p - 1 - rank) + (v - 1) * p, total)
        order = [unit("F", k, False) for k in range(warmup)]
        for i in range(total - warmup):
            order += [unit("F", warmup + i, False), unit("B", i, True)]
        order += [unit("B", k, True) for k in range(total - warmup, total)]
        compute.append(order)
        # no batch between the F and the B of a steady-state pair: the batch after the B
        # sends both results and receives both inputs of the next pair at once, which is
        # what keeps the looped (rank p-1 -> rank 0) traffic deadlock-free
        between = {warmup + 2 * i + 1 for i in range(total - warmup)}
        syncs.append([k for k in range(len(order) + 1) if k not in between])
    return with_comms("interleaved", compute, p, p * v, m, syncs)


VIRTUAL_SCHEDULES = ("interleaved", "zb-v")   # the schedules that hold v >= 2 chunks per rank


def schedule_for_config(cfg, name: Optional[str] = None) -> Schedule:
    """The schedule of a ParallelConfig (parallel/mesh.py): p = pp, v = vpp, and
    m = grad_accum_steps (micro-batches of micro_batch_size per dp rank and step).

    name defaults to 'interleaved' when vpp > 1, else '1f1b'; 'zb-v' needs vpp = 2.
    """
    name = name or ("interleaved" if cfg.vpp > 1 else "1f1b")
    return build_schedule(name, cfg.pp, cfg.grad_accum_steps, cfg.vpp)


def build_schedule(name: str, p: int, m: int, v: int = 1) -> Schedule:
    """Schedule by name: 'gpipe', '1f1b', 'interleaved' (needs v >= 2), 'zb-h1' or 'zb-v'
    (needs v = 2)."""
    # zero_bubble.py builds on this module's with_comms, so it is imported here, not above
    from .zero_bubble import zb_h1, zb_v

    builders = {"gpipe": gpipe, "1f1b": one_f_one_b, "interleaved": interleaved_1f1b, "zb-h1": zb_h1,
                "zb-v": zb_v}
    if name not in builders:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}")
    return builders[name](p, m, v)
