"""Prove a schedule deadlock-free before it runs, and predict its bubble and memory.

``check_schedule`` first checks every action on its own (stage on this rank, peer is the
rank that holds the neighbouring stage, every (mb, stage) has exactly one F and one B),
then simulates all ranks together under the strictest semantics a backend may have:

  * a batch (a run of consecutive communication actions) is posted at once and the rank
    waits until every operation in it is matched: a send is matched only when the
    receiver has posted the corresponding receive (rendezvous, as NCCL behaves);
  * messages on one directed channel (src -> dst) match in posting order, whatever the
    tag (NCCL ignores tags), so a receive must meet the send it expects, not another;
  * a compute action may only use data already computed or received on its rank.

If the simulation stops with ranks still waiting, the schedule would hang: the error
names each stuck rank, its action index and the operation that found no partner.  While
simulating, each action is given a time (forward cost per stage fwd_cost / v, backward
bwd_cost / v, each a number or one per rank when stages differ; each message comm_cost,
free by default, a number or one per link between neighbouring ranks when links differ),
from which the predicted bubble
fraction follows, and the number of stashed activations (F done, B not yet; W not yet in
a split-backward schedule) is tracked per rank.

The proof uses rendezvous sends. The runtime itself is more eager (it posts a batch's
receives before the compute that precedes it and waits for its sends one batch later,
p2p.py), which only removes waits; a second simulation with buffered sends (a send
completes when posted, a receive when its send was posted) gives the bubble the runtime
should see, `bubble_as_run`. The two agree for gpipe and 1F1B; a zero-bubble schedule,
whose W actions would otherwise wait on a neighbour's receive, needs the second.
"""
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .schedules import COMM_OPS, COMPUTE_OPS, Action, Schedule


class ScheduleError(ValueError):
    """The schedule is malformed or would deadlock; the message names rank and action."""


@dataclass
class ScheduleReport:
    name: str
    num_ranks: int
    virtual_stages: int
    num_microbatches: int
    makespan: float
    busy: List[float]
    peak_in_flight: List[int]
    as_run: Optional["ScheduleReport"] = None   # the same schedule with buffered sends

    @property
    def bubble_per_rank(self) -> List[float]:
        return [1.0 - b / self.makespan if self.makespan else 0.0 for b in self.busy]

    @property
    def bubble_fraction(self) -> float:
        per_rank = self.bubble_per_rank
        return sum(per_rank) / len(per_rank)

    @property
    def bubble_as_run(self) -> float:
        """The bubble with buffered sends, as the runtime runs the schedule."""
        return (self.as_run or self).bubble_fraction

    def format(self) -> str:
        p, m, v = self.num_ranks, self.num_microbatches, self.virtual_stages
        ideal = (p - 1) / (m + p - 1)
        peaks = " ".join(str(x) for x in self.peak_in_flight)
        as_run = "" if abs(self.bubble_as_run - self.bubble_fraction) < 1e-9 else \
            f" ({self.bubble_as_run:.3f} with buffered sends, as the runtime runs it)"
        return (f"pipeline schedule {self.name} (p={p}, v={v}, m={m}) checked: deadlock-free; "
                f"predicted bubble {self.bubble_fraction:.3f}{as_run} [(p-1)/(m+p-1) = {ideal:.3f}]; "
                f"peak stashed stage activations per rank: {peaks}")


@dataclass
class _Posted:
    rank: int
    index: int
    action: Action
    time: float
    matched_at: float = -1.0


@dataclass
class _RankState:
    index: int = 0
    clock: float = 0.0
    batch: List[_Posted] = field(default_factory=list)
    have: set = field(default_factory=set)      # ("F"|"B"|"in"|"grad", mb, stage) available here
    stashed: int = 0
    peak: int = 0
    busy: float = 0.0


def _where(rank: int, index: int, act: Action) -> str:
    return f"rank {rank} action {index} {act}"


def _check_action(sched: Schedule, rank: int, index: int, act: Action):
    """Static checks of one action: ranges, placement and peer."""
    p, num_stages, m = sched.num_ranks, sched.num_stages, sched.num_microbatches
    if act.op not in COMPUTE_OPS + COMM_OPS:
        raise ScheduleError(f"{_where(rank, index, act)}: unknown op {act.op!r}")
    if not (0 <= act.mb < m and 0 <= act.stage < num_stages):
        raise ScheduleError(f"{_where(rank, index, act)}: mb must be in [0, {m}) and stage in [0, {num_stages})")
    if sched.stage_rank(act.stage) != rank:
        raise ScheduleError(f"{_where(rank, index, act)}: stage {act.stage} lives on rank "
                            f"{sched.stage_rank(act.stage)}")
    if act.is_compute:
        return
    other = act.stage + (1 if act.op in ("SEND_F", "RECV_B") else -1)
    if not 0 <= other < num_stages:
        raise ScheduleError(f"{_where(rank, index, act)}: stage {act.stage} has no neighbour stage {other}")
    if act.peer != sched.stage_rank(other):
        raise ScheduleError(f"{_where(rank, index, act)}: neighbour stage {other} lives on rank "
                            f"{sched.stage_rank(other)}, not peer {act.peer}")


def _check_static(sched: Schedule):
    if len(sched.actions) != sched.num_ranks:
        raise ScheduleError(f"schedule has {len(sched.actions)} action lists for {sched.num_ranks} ranks")
    if sched.num_stages % sched.num_ranks:
        raise ScheduleError(f"{sched.num_stages} stages do not spread evenly over {sched.num_ranks} ranks")
    seen: Dict[Tuple[str, int, int], Tuple[int, int]] = {}
    for rank, acts in enumerate(sched.actions):
        for index, act in enumerate(acts):
            _check_action(sched, rank, index, act)
            key = (act.op, act.mb, act.stage)
            if key in seen:
                first = seen[key]
                raise ScheduleError(f"{_where(rank, index, act)} repeats rank {first[0]} action {first[1]}")
            seen[key] = (rank, index)
    for op in COMPUTE_OPS if sched.split_backward else ("F", "B"):
        for mb in range(sched.num_microbatches):
            for stage in range(sched.num_stages):
                if (op, mb, stage) not in seen:
                    raise ScheduleError(f"rank {sched.stage_rank(stage)} never runs {Action(op, mb, stage)}")


def _needs(act: Action, num_stages: int, local_prev: bool, local_next: bool):
    """What must be available on the rank before act runs (keys of _RankState.have)."""
    if act.op == "F":
        if act.stage == 0:
            return []
        return [("F", act.mb, act.stage - 1)] if local_prev else [("in", act.mb, act.stage)]
    if act.op == "B":
        need = [("F", act.mb, act.stage)]
        if act.stage < num_stages - 1:
            need.append(("B", act.mb, act.stage + 1) if local_next else ("grad", act.mb, act.stage))
        return need
    if act.op == "W":
        return [("B", act.mb, act.stage)]
    if act.op == "SEND_F":
        return [("F", act.mb, act.stage)]
    if act.op == "SEND_B":
        return [("B", act.mb, act.stage)]
    return []


def _per_rank(cost, num_ranks: int, what: str) -> List[float]:
    """One cost for every rank, or a list with one per rank (stages of unequal weight)."""
    if isinstance(cost, (int, float)):
        return [float(cost)] * num_ranks
    costs = [float(c) for c in cost]
    if len(costs) != num_ranks:
        raise ValueError(f"{what} has {len(costs)} entries for {num_ranks} ranks")
    return costs


def _link(src: int, dst: int, num_ranks: int) -> int:
    """The link a message between neighbouring ranks src and dst takes: link r joins rank r
    and rank r + 1, link num_ranks - 1 the last rank and the first (interleaved schedules'
    wrap-around), in both directions."""
    return min(src, dst) if abs(src - dst) == 1 else num_ranks - 1


class _Simulator:
    def __init__(self, sched: Schedule, fwd_cost, bwd_cost, comm_cost, buffered: bool = False, w_cost=None):
        self.sched, self.buffered = sched, buffered
        self.links = _per_rank(comm_cost, sched.num_ranks, "comm_cost")
        v, split = sched.virtual_stages, sched.split_backward
        fwd, bwd = _per_rank(fwd_cost, sched.num_ranks, "fwd_cost"), _per_rank(bwd_cost, sched.num_ranks, "bwd_cost")
        if w_cost is None:
            # a split backward: input and weight gradients cost half of the whole backward each
            self.cost = [{"F": f / v, "B": b / v / (2 if split else 1), "W": b / v / 2} for f, b in zip(fwd, bwd)]
        else:
            # given W: bwd_cost is B alone (a split schedule) or B + W run together (one that is not)
            wgt = _per_rank(w_cost, sched.num_ranks, "w_cost")
            self.cost = [{"F": f / v, "B": (b if split else b + w) / v, "W": w / v} for f, b, w in zip(fwd, bwd, wgt)]
        self.release = "W" if split else "B"   # the action after which a stage's activations go
        self.ranks = [_RankState() for _ in range(sched.num_ranks)]
        self.sends: Dict[Tuple[int, int], deque] = {}
        self.recvs: Dict[Tuple[int, int], deque] = {}

    def _require(self, rank: int, act: Action):
        sched, state = self.sched, self.ranks[rank]
        local_prev = act.stage > 0 and sched.stage_rank(act.stage - 1) == rank
        local_next = act.stage < sched.num_stages - 1 and sched.stage_rank(act.stage + 1) == rank
        for key in _needs(act, sched.num_stages, local_prev, local_next):
            if key not in state.have:
                what = {"in": "its input was received", "grad": "its output gradient was received",
                        "F": f"F(mb={key[1]}, stage={key[2]}) ran", "B": f"B(mb={key[1]}, stage={key[2]}) ran"}
                raise ScheduleError(f"{_where(rank, state.index, act)} runs before {what[key[0]]} on this rank")

    def _compute(self, rank: int, act: Action):
        state = self.ranks[rank]
        self._require(rank, act)
        state.clock += self.cost[rank][act.op]
        state.busy += self.cost[rank][act.op]
        state.have.add((act.op, act.mb, act.stage))
        state.stashed += 1 if act.op == "F" else -1 if act.op == self.release else 0
        state.peak = max(state.peak, state.stashed)
        state.index += 1

    def _post_batch(self, rank: int):
        state, acts = self.ranks[rank], self.sched.actions[rank]
        index = state.index
        while index < len(acts) and not acts[index].is_compute:
            act = acts[index]
            if act.op.startswith("SEND"):
                state.index = index  # so an error names this action
                self._require(rank, act)
            posted = _Posted(rank, index, act, state.clock)
            if self.buffered and act.op.startswith("SEND"):
                posted.matched_at = state.clock   # buffered: the sender goes on at once
            state.batch.append(posted)
            if act.op.startswith("SEND"):
                self.sends.setdefault((rank, act.peer), deque()).append(posted)
            else:
                self.recvs.setdefault((act.peer, rank), deque()).append(posted)
            index += 1
        state.index = index
        self._match()

    def _match(self):
        for chan, sends in self.sends.items():
            recvs = self.recvs.get(chan)
            while sends and recvs:
                send, recv = sends.popleft(), recvs.popleft()
                sent = send.action
                expect = ("RECV_F", sent.stage + 1) if sent.op == "SEND_F" else ("RECV_B", sent.stage - 1)
                if (recv.action.op, recv.action.stage, recv.action.mb) != expect + (sent.mb,):
                    raise ScheduleError(
                        f"order mismatch on channel {chan[0]} -> {chan[1]}: "
                        f"{_where(send.rank, send.index, send.action)} meets "
                        f"{_where(recv.rank, recv.index, recv.action)}")
                recv.matched_at = max(send.time, recv.time) + self.links[_link(*chan, self.sched.num_ranks)]
                if not self.buffered:
                    send.matched_at = recv.matched_at

    def _finish_batch(self, rank: int) -> bool:
        state = self.ranks[rank]
        if any(op.matched_at < 0 for op in state.batch):
            return False
        state.clock = max([state.clock] + [op.matched_at for op in state.batch])
        for op in state.batch:
            if op.action.op == "RECV_F":
                state.have.add(("in", op.action.mb, op.action.stage))
            elif op.action.op == "RECV_B":
                state.have.add(("grad", op.action.mb, op.action.stage))
        state.batch = []
        return True

    def _advance(self, rank: int) -> bool:
        """Run rank as far as it can go; True if it moved."""
        state, acts, moved = self.ranks[rank], self.sched.actions[rank], False
        while True:
            if state.batch:
                if not self._finish_batch(rank):
                    return moved
                moved = True
            if state.index >= len(acts):
                return moved
            if acts[state.index].is_compute:
                self._compute(rank, acts[state.index])
            else:
                self._post_batch(rank)
            moved = True

    def _doing(self, rank: int) -> str:
        state, acts = self.ranks[rank], self.sched.actions[rank]
        waiting = [f"action {op.index} {op.action}" for op in state.batch if op.matched_at < 0]
        if waiting:
            return "waiting on " + ", ".join(waiting)
        return f"at action {state.index} {acts[state.index]}" if state.index < len(acts) else "finished"

    def _deadlock(self) -> ScheduleError:
        lines = []
        for rank, state in enumerate(self.ranks):
            for op in state.batch:
                if op.matched_at < 0:
                    lines.append(f"  {_where(rank, op.index, op.action)} is unmatched "
                                 f"(peer rank {op.action.peer} is {self._doing(op.action.peer)})")
        return ScheduleError("schedule deadlocks: no rank can make progress\n" + "\n".join(lines))

    def run(self) -> ScheduleReport:
        while True:
            moved = [self._advance(r) for r in range(len(self.ranks))]
            if all(s.index >= len(a) and not s.batch for s, a in zip(self.ranks, self.sched.actions)):
                break
            if not any(moved):
                raise self._deadlock()
        sched = self.sched
        return ScheduleReport(sched.name, sched.num_ranks, sched.virtual_stages, sched.num_microbatches,
                              max(s.clock for s in self.ranks), [s.busy for s in self.ranks],
                              [s.peak for s in self.ranks])


def check_schedule(sched: Schedule, fwd_cost=1.0, bwd_cost=2.0, comm_cost=0.0, w_cost=None) -> ScheduleReport:
    """Raise ScheduleError if sched is malformed or can deadlock; else predict its behaviour.

    fwd_cost / bwd_cost: time of one micro-batch through all of a rank's layers (one number
    for every rank, or a list with one per rank when stages differ); each of its v stages
    costs 1/v of that.  comm_cost: time from both sides posting a message
    to its arrival (0: the schedule alone; a measured latency: what to expect on a
    given machine); one number, or a list with one per link, entry r for the messages
    between rank r and rank (r + 1) % num_ranks either way (a pipeline whose stages
    straddle a host boundary at one link only).
    w_cost: the weight-gradient part of a rank's backward, when known (a number or one per
    rank); bwd_cost is then B alone for a split-backward schedule (B + W for one that is
    not). None: a split schedule's B and W are half of bwd_cost each.
    """
    _check_static(sched)
    report = _Simulator(sched, fwd_cost, bwd_cost, comm_cost, w_cost=w_cost).run()
    report.as_run = _Simulator(sched, fwd_cost, bwd_cost, comm_cost, buffered=True, w_cost=w_cost).run()
    return report
