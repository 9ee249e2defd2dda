"""Pipeline schedules as data: one list of actions per pipeline rank.

Vocabulary (used throughout hcomm.parallel.pipeline):

    p    pipeline ranks (the pp degree); a rank's index in its pipeline is its pp rank.
    v    virtual stages (model chunks) per pp rank; the model is cut into S = p * v stages.
    m    micro-batches per step.
    Stage s lives on pp rank ``s % p``.  With p = 2, v = 2 (S = 4):
        pp rank 0 holds stages 0 and 2, pp rank 1 holds stages 1 and 3,
        so activations go 0 -> 1 -> 0 -> 1 and gradients come back the same way.

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
from typing import Optional, Tuple

COMPUTE_OPS = ("F", "B", "W")
COMM_OPS = ("SEND_F", "RECV_F", "SEND_B", "RECV_B")
SCHEDULE_NAMES = ("gpipe", "1f1b", "interleaved", "zb-h1")


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
    """Per-pp-rank action lists plus the shape (p, S, m) they were built for."""
    name: str
    num_ranks: int
    num_stages: int
    num_microbatches: int
    actions: Tuple[Tuple[Action, ...], ...]

    @property
    def virtual_stages(self) -> int:
        return self.num_stages // self.num_ranks

    @property
    def split_backward(self) -> bool:
        """True when B computes only input gradients and W actions the weight gradients."""
        return any(a.op == "W" for acts in self.actions for a in acts)

    def stage_rank(self, stage: int) -> int:
        return stage % self.num_ranks

    def stages_of(self, rank: int) -> Tuple[int, ...]:
        return tuple(range(rank, self.num_stages, self.num_ranks))

    def format(self, compute_only: bool = False) -> str:
        lines = [f"{self.name}: p={self.num_ranks} v={self.virtual_stages} m={self.num_microbatches}"]
        for rank, acts in enumerate(self.actions):
            toks = [a.short() for a in acts if a.is_compute or not compute_only]
            lines.append(f"  rank {rank}: " + " ".join(toks))
        return "\n".join(lines)


def _check_positive(**values):
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _comm_after(act: Action, p: int, num_stages: int) -> Optional[Action]:
    """The send a compute action's result needs, or None if its consumer is local."""
    if act.op == "F" and act.stage < num_stages - 1:
        peer = (act.stage + 1) % p
        return Action("SEND_F", act.mb, act.stage, peer) if peer != act.stage % p else None
    if act.op == "B" and act.stage > 0:
        peer = (act.stage - 1) % p
        return Action("SEND_B", act.mb, act.stage, peer) if peer != act.stage % p else None
    return None


def _comm_before(act: Action, p: int, num_stages: int) -> Optional[Action]:
    """The receive a compute action needs first, or None if its producer is local."""
    if act.op == "F" and act.stage > 0:
        peer = (act.stage - 1) % p
        return Action("RECV_F", act.mb, act.stage, peer) if peer != act.stage % p else None
    if act.op == "B" and act.stage < num_stages - 1:
        peer = (act.stage + 1) % p
        return Action("RECV_B", act.mb, act.stage, peer) if peer != act.stage % p else None
    return None


def with_comms(name: str, compute: list, p: int, num_stages: int, m: int, syncs: list = None) -> Schedule:
    """Insert sends/receives around per-rank compute orders.

    syncs[rank] is the set of positions k (0 <= k <= len(order)) where a batch may sit:
    before order[k] (k = len(order): after the last action).  Each send goes to the first
    batch after its compute, each receive to the last batch before it.  By default every
    position is a sync point: send right after, receive right before.
    """
    ranks = []
    for rank, order in enumerate(compute):
        points = set(range(len(order) + 1)) if syncs is None else set(syncs[rank]) | {0, len(order)}
        batches = {k: [] for k in points}
        for k, act in enumerate(order):
            recv, send = _comm_before(act, p, num_stages), _comm_after(act, p, num_stages)
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
    return Schedule(name, p, num_stages, m, tuple(ranks))


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


def zb_h1(p: int, m: int, v: int = 1, held: Optional[int] = None) -> Schedule:
    """ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism", 2023): the backward split into
    B (input gradient: on the critical path, the previous stage waits for it) and W (weight
    gradient: nobody waits for it), W placed to fill the gaps where 1F1B idles.

    The order is found as the paper's heuristic does: list-scheduling every rank in time
    with unit costs F = B = W (the earliest action first; ties go to B, then F, then W),
    recording the order each rank ran its actions in. That order is the data; the checker
    then proves it deadlock-free and predicts its bubble. With F = B = W each rank idles
    (p-1)(F+B-W) per step against 1F1B's (p-1)(F+B+W): a third.

    Memory: rank r starts a forward only while fewer than p - r micro-batches wait for
    their B (1F1B's bound) and fewer than `held` micro-batches are between their F and
    their W. By default held is the least value from p up that gives the makespan of the
    paper's bound (2p - 1 - r on rank r, used where no uniform value does): p, what
    1F1B's busiest rank (rank 0) holds, where that suffices (p = 2 with even m: then no
    rank holds more micro-batches than 1F1B's peak), else p + 1 (p = 2 with odd m, p = 4
    with m = 8: held = p gives 0.56 of 1F1B's idle time there). W (wgrad.py) keeps only
    each Linear's input and output gradient, B having freed the rest of the graph.
    """
    _check_positive(p=p, m=m, v=v)
    if v != 1:
        raise ValueError(f"zb-h1 runs one stage per rank (v=1), got v={v}")
    if held is not None and (not isinstance(held, int) or held < p):
        raise ValueError(f"zb-h1 needs held >= p={p} micro-batches between F and W (1F1B's own peak), got {held!r}")

    paper = _list_schedule(p, m, [(p - r, 2 * p - 1 - r) for r in range(p)])
    caps = [held] if held is not None else range(p, 2 * p - 1)
    for cap in caps:
        orders, makespan = _list_schedule(p, m, [(p - r, cap) for r in range(p)])
        if held is not None or makespan <= paper[1]:
            return with_comms("zb-h1", orders, p, p, m)
    return with_comms("zb-h1", paper[0], p, p, m)


def _list_schedule(p: int, m: int, limits: list) -> list:
    """(per-rank orders of F, B, W, makespan) from a unit-cost simulation with buffered
    messages (see zb_h1). limits[r] = (most micro-batches awaiting B, most between F and W)
    on rank r."""
    inf = float("inf")
    f_ready = [[0.0] * m] + [[inf] * m for _ in range(p - 1)]   # when F(mb) may start on rank r
    b_ready = [[inf] * m for _ in range(p)]                      # when B(mb) may start
    nf, nb, free = [0] * p, [0] * p, [0.0] * p
    waiting_w = [[] for _ in range(p)]
    orders = [[] for _ in range(p)]
    while any(len(o) < 3 * m for o in orders):
        best = None   # (start time, priority, rank, op)
        for r in range(p):
            cands = []
            if nb[r] < nf[r]:
                cands.append((max(free[r], b_ready[r][nb[r]]), 0, r, "B"))
            held = nf[r] - nb[r] + len(waiting_w[r])   # micro-batches between F and W
            if nf[r] < m and nf[r] - nb[r] < limits[r][0] and held < limits[r][1]:
                cands.append((max(free[r], f_ready[r][nf[r]]), 1, r, "F"))
            if waiting_w[r]:
                cands.append((free[r], 2, r, "W"))
            for c in cands:
                if c[0] < inf and (best is None or c[:2] < best[:2]):
                    best = c
        start, _, r, op = best
        # a rank runs the earliest action it can; among equal starts B beats F beats W
        end = start + 1.0
        if op == "F":
            mb = nf[r]
            nf[r] += 1
            if r + 1 < p:
                f_ready[r + 1][mb] = end
            else:
                b_ready[r][mb] = end
        elif op == "B":
            mb = nb[r]
            nb[r] += 1
            waiting_w[r].append(mb)
            if r > 0:
                b_ready[r - 1][mb] = end
        else:
            mb = waiting_w[r].pop(0)
        free[r] = end
        orders[r].append(Action(op, mb, r))
    return orders, max(free)


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


def schedule_for_config(cfg, name: Optional[str] = None) -> Schedule:
    """The schedule of a ParallelConfig (parallel/mesh.py): p = pp, v = vpp, and
    m = grad_accum_steps (micro-batches of micro_batch_size per dp rank and step).

    name defaults to 'interleaved' when vpp > 1, else '1f1b'.
    """
    name = name or ("interleaved" if cfg.vpp > 1 else "1f1b")
    return build_schedule(name, cfg.pp, cfg.grad_accum_steps, cfg.vpp)


def build_schedule(name: str, p: int, m: int, v: int = 1) -> Schedule:
    """Schedule by name: 'gpipe', '1f1b', 'interleaved' (needs v >= 2) or 'zb-h1'."""
    builders = {"gpipe": gpipe, "1f1b": one_f_one_b, "interleaved": interleaved_1f1b, "zb-h1": zb_h1}
    if name not in builders:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}")
    return builders[name](p, m, v)
