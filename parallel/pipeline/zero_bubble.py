"""Zero-bubble schedules (Qi et al., "Zero Bubble Pipeline Parallelism", 2023): ZB-H1 and ZB-V.

Both split the backward into B (the gradient of the stage's input: on the critical path,
the previous stage waits for it) and W (the weight gradient: nobody waits for it), and
place W where 1F1B would idle.  Both orders come from one list scheduler (below); the
orders are the data, the messages are added around them (ZB-H1: with_comms, next to
their consumers; ZB-V: with_timed_comms, by the simulated clock), and the checker
(check.py) proves the result deadlock-free and predicts its bubble.

Costs, with F = B = W per stage chunk and p ranks, per rank and step (idle time):
    1F1B   (p-1)(F+B+W) of full stages            3(p-1) units of a full stage
    ZB-H1  (p-1)(F+B-W), one stage per rank       (p-1) units: a third of 1F1B
    ZB-V   two half-size chunks per rank, V-placed (rank r holds stages r and 2p-1-r):
           (p-1) half-stage units, a sixth of 1F1B, when p divides m; for other m the
           greedy order idles up to 0.29 of 1F1B (p <= 8, m <= 4p; the tests pin the
           sixth and < 1/3).
Memory, in model fractions held between F and W: 1F1B's rank 0 holds p micro-batches of
1/p of the model (1); ZB-H1 holds up to p (or p + 1) of 1/p; ZB-V at most 2p chunk
activations of 1/(2p) (1): the same as 1F1B.

The list scheduler.  Every rank is simulated in time with unit costs (F = B = W = 1 per
stage chunk, messages free and buffered).  Repeatedly, over all ranks, the action that
can start earliest runs: a B when its output gradient has arrived, an F when its input
has and the rank's memory caps allow it, a W whenever a B left one (oldest first).
Among equal starts B beats F beats W (B is on the critical path, W never is; a variant
lets W beat F once w_over_f chunks are held), and with two chunks a rank prefers the
later stage (closer to the loss, so its B and the activations it frees come sooner) or,
in another variant, the earlier one.  With two chunks a first-chunk F also keeps one
chunk of room for the second-chunk F of a micro-batch already inside (_candidates).  The
order each rank ran its actions in is the schedule.  A greedy list schedule is not
optimal in general; each generator tries a few caps / preferences and keeps the
shortest makespan.
"""
from typing import List, Optional, Sequence, Tuple

from .schedules import Action, Schedule, _check_positive, _comm_after, _comm_before, stage_ranks, with_comms

_INF = float("inf")


class _ListScheduler:
    """One unit-cost simulation (see the module docstring).  limits[r] = (most
    micro-batch chunks awaiting B, most between F and W) on rank r."""

    def __init__(self, p: int, m: int, ranks: Sequence[int], limits: Sequence[Tuple[float, float]],
                 later_first: bool, w_over_f: float = _INF):
        num_stages = len(ranks)
        self.p, self.m, self.limits, self.later_first, self.w_over_f = p, m, limits, later_first, w_over_f
        self.stages = [[s for s in range(num_stages) if ranks[s] == r] for r in range(p)]
        self.f_ready = [[0.0] * m] + [[_INF] * m for _ in range(num_stages - 1)]  # F(mb) of stage s may start
        self.b_ready = [[_INF] * m for _ in range(num_stages)]                      # B(mb) of stage s may start
        self.nf, self.nb = [0] * num_stages, [0] * num_stages
        self.free = [0.0] * p
        self.waiting_w: List[List[Tuple[int, int]]] = [[] for _ in range(p)]   # (mb, stage) B'd, W not yet
        self.orders: List[List[Action]] = [[] for _ in range(p)]
        self.starts: List[List[float]] = [[] for _ in range(p)]   # when each action of orders ran
        self.makespan = 0.0

    def _candidates(self, r: int):
        """(start, priority, rank, stage preference, op, stage) of what rank r could run next."""
        nf, nb, free, mine = self.nf, self.nb, self.free[r], self.stages[r]
        awaiting = sum(nf[s] - nb[s] for s in mine)
        held = awaiting + len(self.waiting_w[r])
        # While a micro-batch that entered this rank's first stage still needs its forward
        # on a later stage here, first-stage forwards leave one chunk free per later stage.
        # Later-stage forwards run in micro-batch order, so that chunk goes to the oldest
        # micro-batch in flight, which therefore always finds room on every rank: no rank
        # fills up with first-stage forwards while the forward that would let a B (and
        # then W) free memory waits.  (One stage per rank, ZB-H1: nothing reserved.)
        reserved = min(sum(nf[mine[0]] - nf[s] for s in mine), len(mine) - 1)
        for s in mine:
            pref = -s if self.later_first else s
            if nb[s] < nf[s]:
                yield max(free, self.b_ready[s][nb[s]]), 0, r, pref, "B", s
            room = held + 1 + (reserved if s == mine[0] else 0) <= self.limits[r][1]
            if nf[s] < self.m and awaiting < self.limits[r][0] and room:
                yield max(free, self.f_ready[s][nf[s]]), 1, r, pref, "F", s
        if self.waiting_w[r]:
            yield free, 0.5 if held >= self.w_over_f else 2, r, 0, "W", self.waiting_w[r][0][1]

    def _run(self, r: int, op: str, stage: int, start: float):
        end, last = start + 1.0, len(self.nf) - 1
        if op == "F":
            mb = self.nf[stage]
            self.nf[stage] += 1
            if stage < last:
                self.f_ready[stage + 1][mb] = end
            else:
                self.b_ready[stage][mb] = end
        elif op == "B":
            mb = self.nb[stage]
            self.nb[stage] += 1
            self.waiting_w[r].append((mb, stage))
            if stage > 0:
                self.b_ready[stage - 1][mb] = end
        else:
            mb, _ = self.waiting_w[r].pop(0)
        self.free[r] = end
        self.orders[r].append(Action(op, mb, stage))
        self.starts[r].append(start)

    def run(self) -> "_ListScheduler":
        """Simulate to the end: orders, starts and makespan (in units) filled in."""
        for _ in range(3 * self.m * len(self.nf)):
            best = min((c for r in range(self.p) for c in self._candidates(r) if c[0] < _INF), default=None)
            if best is None:   # only caps below one chunk per stage can do this; the generators never ask
                raise ValueError(f"memory caps {list(self.limits)} leave no rank an action to run")
            start, _, r, _, op, stage = best
            self._run(r, op, stage, start)
        self.makespan = max(self.free)
        return self


def list_schedule(p: int, m: int, placement: str, num_stages: int, limits, later_first: bool = True,
                  w_over_f: float = _INF) -> _ListScheduler:
    """The list scheduler run for one placement, set of caps and preference (orders,
    starts, makespan).  w_over_f: from this many chunks held on, W beats F at equal starts."""
    return _ListScheduler(p, m, stage_ranks(placement, p, num_stages), limits, later_first, w_over_f).run()


def with_timed_comms(name: str, sim: _ListScheduler, placement: str) -> Schedule:
    """Messages placed by the simulated clock, not next to their consumer (with_comms).

    A message is stamped with the time its producer ended; on both ranks it goes into the
    batch at that time (the batch before the first action that started at or after it).
    Why: ZB-V's links carry activations and gradients both ways, and with receives placed
    right before their consumers two neighbours can each wait, in a rendezvous send, for
    a receive the other posts only later (the checker finds such cycles at p = 8).  With
    time stamps every rank's batches are in time order and each batch's partners carry the
    same stamps, so by induction on the stamp every rank reaches every batch: no deadlock
    under rendezvous sends, for any costs.  A rank ends at most one action at a time, so
    a channel carries at most one message per stamp and channel order is time order."""
    p, m, num_stages = sim.p, sim.m, len(sim.nf)
    ranks = stage_ranks(placement, p, num_stages)
    batches = [{} for _ in range(p)]   # rank -> {position: [(stamp, is receive, action)]}

    def place(rank, stamp, act):
        position = sum(1 for t in sim.starts[rank] if t < stamp)
        batches[rank].setdefault(position, []).append((stamp, act.op.startswith("RECV"), act))

    for rank, order in enumerate(sim.orders):
        for act, start in zip(order, sim.starts[rank]):
            send = _comm_after(act, ranks)
            if send is not None:
                place(rank, start + 1.0, send)
                recv = _comm_before(Action(act.op, act.mb, act.stage + (1 if act.op == "F" else -1)), ranks)
                place(send.peer, start + 1.0, recv)
    actions = []
    for rank, order in enumerate(sim.orders):
        acts = []
        for k in range(len(order) + 1):
            acts += [a for _, _, a in sorted(batches[rank].get(k, []), key=lambda x: x[:2])]
            if k < len(order):
                acts.append(order[k])
        actions.append(tuple(acts))
    return Schedule(name, p, num_stages, m, tuple(actions), placement)


def zb_h1(p: int, m: int, v: int = 1, held: Optional[int] = None) -> Schedule:
    """ZB-H1: one stage per rank (loop placement), W filling 1F1B's bubble.  With F = B = W
    each rank idles (p-1)(F+B-W) per step against 1F1B's (p-1)(F+B+W): a third.

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
        raise ValueError(f"zb-h1 runs one stage per rank (v=1), got v={v}; use 'zb-v' for two chunks per rank")
    if held is not None and (not isinstance(held, int) or held < p):
        raise ValueError(f"zb-h1 needs held >= p={p} micro-batches between F and W (1F1B's own peak), got {held!r}")

    paper = list_schedule(p, m, "loop", p, [(p - r, 2 * p - 1 - r) for r in range(p)])
    caps = [held] if held is not None else range(p, 2 * p - 1)
    for cap in caps:
        sim = list_schedule(p, m, "loop", p, [(p - r, cap) for r in range(p)])
        if held is not None or sim.makespan <= paper.makespan:
            return with_comms("zb-h1", sim.orders, p, p, m)
    return with_comms("zb-h1", paper.orders, p, p, m)


def check_zb_v(p: int, m: int, v: int = 2):
    """Raise ValueError, naming the parameter, when ZB-V cannot be built for (p, m, v)."""
    _check_positive(p=p, m=m, v=v)
    if v != 2:
        raise ValueError(f"zb-v runs exactly two chunks per rank (v=2), got v={v}")
    if p < 2:
        raise ValueError(f"zb-v needs p >= 2 pipeline ranks, got p={p}; with one rank there is no bubble to fill")
    if m < p:
        raise ValueError(f"zb-v needs at least p micro-batches: m={m} < p={p}")


def zb_v(p: int, m: int, v: int = 2) -> Schedule:
    """ZB-V: 2p half-size chunks in a V (rank r holds stages r and 2p-1-r), B/W split,
    at most 2p chunk activations held between F and W on every rank: 1F1B's peak memory.

    The V makes each rank's two chunks meet the turn in the middle (stages p-1 and p on
    rank p-1, a local hand-off) and the loss on rank 0 next to the input, so the start-up
    costs one half-size F per rank and the cool-down mirrors it; the list scheduler fills
    the rest with W.  Any m >= p (not only multiples of p).
    """
    check_zb_v(p, m, v)
    # four preferences, the shortest kept: (later chunk first, W beats F from 1 chunk
    # held), (later first, W last), (earlier first, W last), (later first, W beats F at
    # the cap); each alone is worse somewhere in p = 2..8, m = p..4p
    variants = [(True, 1), (True, _INF), (False, _INF), (True, 2 * p)]
    sims = [list_schedule(p, m, "v", 2 * p, [(_INF, 2 * p)] * p, first, w) for first, w in variants]
    return with_timed_comms("zb-v", min(sims, key=lambda sim: sim.makespan), "v")
