"""Execute one pp rank's share of a checked schedule.

Layout, e.g. 8 ranks with tp=2, dp=2, pp=2 (parallel/mesh.py): pp groups [0, 4] [1, 5]
[2, 6] [3, 7].  Global rank 1 is pp rank 0 of pipeline [1, 5]; it sends activations to
global rank 5 and receives gradients from it, over that pipeline's own process group.
Tensor-parallel layers inside a stage use their own tp group; each tp rank runs the same
schedule and talks to its tp twin in the next stage.

One step (``PipelineRuntime.step``):
  1. split the batch into m equal micro-batches along dim 0 (inputs on the rank that
     holds stage 0, targets on the rank that holds the last stage);
  2. walk this rank's actions: F runs a stage (the last stage adds loss / m, so the
     accumulated gradients equal those of the unpipelined model on the whole batch),
     B back-propagates the gradient received for the stage's outputs, and each run of
     communication actions is exchanged as one batch (p2p.py), whose end posts the
     next batch's receives before the compute in between;
  3. all ranks of the status group (default: the whole world) all_gather
     [failed, loss]; this returns the loss of this pipeline to all its ranks and is how
     a failure anywhere becomes an error everywhere (below);
  4. with a dp group, average the gradients over it (leave dp_group None to let ZeRO
     reduce them instead).

Failures: a stage that raises (forward, backward or loss), or a message that cannot be
sent, does not stop its rank.  The rank records the exception and *poisons* the step: it
runs the rest of its schedule without computing, sending FAILED control blocks where
tensors were due and draining what it receives; a rank that receives a FAILED block
poisons itself the same way.  Every rank therefore walks its whole deadlock-free
schedule and reaches step 3, where all of them raise PipelineError naming the global
ranks that failed (the failing rank chains its own exception).  Gradients of a failed
step are partial: zero them before the next step.  What this cannot catch: a rank that
dies, or a stage stuck inside a tensor-parallel collective its failed tp peer never
joined; those are left to the backend's timeout (init_process_group(timeout=...)).
"""
import itertools
import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

# torch's own split of a backward into input and weight gradients (what its zero-bubble
# schedules run); private to torch.distributed.pipelining, so imported in one place.
from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight

from .check import check_schedule
from .p2p import ACTIVATION, GRADIENT, Exchanger, Message, Recv, Send
from .schedules import Action, Schedule
from .wgrad import LinearGrads

log = logging.getLogger("hcomm.parallel.pipeline")


class PipelineError(RuntimeError):
    """A pipeline step failed on some rank; raised on every rank of the status group."""


@dataclass
class StepStats:
    """Measured on this rank during the last step."""
    peak_stashed: int = 0        # most (mb, stage) activations held for backward at once
    compute_s: float = 0.0       # time in F and B actions
    step_s: float = 0.0          # whole step, including the final agreement
    messages_sent: int = 0


@dataclass
class _Step:
    """Everything one step keeps between actions (dropped when the step ends)."""
    inputs: Optional[List[tuple]]
    targets: Optional[list]
    fwd_in: Dict[tuple, tuple] = field(default_factory=dict)    # (mb, stage) -> input tensors
    grad_in: Dict[tuple, tuple] = field(default_factory=dict)   # (mb, stage) -> output gradients
    outbox: Dict[tuple, tuple] = field(default_factory=dict)    # (op, mb, stage) -> tensors to send
    stash: Dict[tuple, tuple] = field(default_factory=dict)     # (mb, stage) -> (inputs, outputs)
    weight_grads: Dict[tuple, list] = field(default_factory=dict)   # (mb, stage) -> saved for W
    linear_calls: Dict[tuple, list] = field(default_factory=dict)   # (mb, stage) -> wgrad.LinearCall
    loss: float = 0.0
    error: Optional[BaseException] = None
    poisoned: bool = False
    stats: StepStats = field(default_factory=StepStats)


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _differentiable(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _leaves(tensors: tuple) -> tuple:
    """Inputs of a stage as autograd leaves, so each stage back-propagates on its own
    (B of stage s must not run into stage s-1's graph, which has its own B action)."""
    return tuple(t.detach().requires_grad_(_differentiable(t)) for t in tensors)


def split_microbatches(batch, m: int, what: str) -> list:
    """Cut a tensor (or tuple of tensors) into m equal pieces along dim 0."""
    parts = _as_tuple(batch)
    for i, t in enumerate(parts):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            raise ValueError(f"{what}[{i}] must be a tensor with a batch dimension, got {type(t).__name__}")
        if t.shape[0] % m:
            raise ValueError(f"{what}[{i}] has batch size {t.shape[0]}, not divisible into m={m} micro-batches "
                             f"({t.shape[0]} % {m} = {t.shape[0] % m})")
    chunks = [t.chunk(m) for t in parts]
    per_mb = [tuple(c[k] for c in chunks) for k in range(m)]
    return per_mb if isinstance(batch, (tuple, list)) else [mb[0] for mb in per_mb]


class PipelineRuntime:
    """Runs `schedule` on this pp rank.

    stages: {stage index: module} for exactly the stages the schedule puts on pp_rank.
    loss_fn(output, target) -> scalar, on the last stage; loss_reduction "mean" (loss_fn
        averages over its micro-batch; gradients are scaled by 1/m) or "sum".
    pp_ranks: global ranks of this pipeline, indexed by pp rank; pp_group: its process
        group (None: the default group, when the pipeline is the whole world).
    dp_group: if given, gradients are averaged over it after each step.
    status_group: ranks that agree on success after each step (None: the whole world);
        all of them call step() together.
    check: prove the schedule deadlock-free first (check.py); verbose: pp rank 0 prints
        the checker's report (predicted bubble, peak stashed activations per rank).
    device: where received tensors are allocated (default cpu).
    fast_linear_grads: compute the weight gradients of the stages' nn.Linear layers with
        one in-place GEMM each instead of autograd's GEMM + add (wgrad.py; B then frees
        the graph and W keeps only each Linear's input and output gradient). Turn off for
        a model that uses a Linear's weight outside that Linear (not detectable).
    """

    def __init__(self, stages: Dict[int, nn.Module], schedule: Schedule, loss_fn: Callable, *, pp_rank: int,
                 pp_ranks: List[int], pp_group=None, dp_group=None, status_group=None,
                 loss_reduction: str = "mean", header_words: int = 64, device=None, check: bool = True,
                 verbose: bool = True, fast_linear_grads: bool = True):
        self._validate(stages, schedule, pp_rank, pp_ranks, loss_reduction, header_words)
        self.stages, self.schedule, self.loss_fn = dict(stages), schedule, loss_fn
        self.pp_rank, self.pp_ranks, self.pp_group = pp_rank, list(pp_ranks), pp_group
        self.dp_group, self.status_group = dp_group, status_group
        self.loss_reduction, self.header_words = loss_reduction, header_words
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._check_status_group()
        self.report = check_schedule(schedule) if check else None
        if self.report is not None:
            log.info("%s", self.report.format())
            if verbose and pp_rank == 0:
                print(self.report.format(), flush=True)
        self.stats = StepStats()
        # The tensor-parallel layers' split only where the schedule places W apart (zb-h1,
        # zb-v): under 1F1B it measured 3-16 % more backward CPU at wide micro-batches
        # (wgrad.py's header), with nothing to gain from moving W.
        self._wgrad = (LinearGrads(self.stages, tp_layers=schedule.split_backward)
                       if fast_linear_grads else None)
        self._exchanger = None
        self._plan = None

    @staticmethod
    def _validate(stages, schedule, pp_rank, pp_ranks, loss_reduction, header_words):
        p = schedule.num_ranks
        if len(pp_ranks) != p:
            raise ValueError(f"pp_ranks {list(pp_ranks)} has {len(pp_ranks)} ranks for a schedule of p={p}")
        if not 0 <= pp_rank < p:
            raise ValueError(f"pp_rank {pp_rank} outside [0, {p})")
        want = set(schedule.stages_of(pp_rank))
        if set(stages) != want:
            raise ValueError(f"pp rank {pp_rank} must hold stages {sorted(want)} of {schedule.num_stages} "
                             f"(placement {schedule.placement!r}, schedules.py), got {sorted(stages)}")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if header_words < 16:
            raise ValueError(f"header_words must be >= 16, got {header_words}")

    def _status_ranks(self) -> List[int]:
        group = self.status_group
        return dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))

    def _check_status_group(self):
        last = self.pp_ranks[self.schedule.stage_rank(self.schedule.num_stages - 1)]
        if self.status_group is not None and last not in self._status_ranks():
            raise ValueError(f"status_group must contain this pipeline's last-stage global rank {last}")

    @classmethod
    def from_mesh(cls, mesh, stages, schedule: Schedule, loss_fn: Callable, *, reduce_dp_grads: bool = True, **kw):
        """Runtime on mesh's pipeline group; gradients averaged over its dp group unless
        reduce_dp_grads=False (ZeRO-2 reduce-scatters them itself)."""
        cfg = mesh.cfg
        if schedule.num_ranks != cfg.pp or schedule.virtual_stages != cfg.vpp:
            raise ValueError(f"schedule has p={schedule.num_ranks}, v={schedule.virtual_stages} but the mesh "
                             f"has pp({cfg.pp}), vpp({cfg.vpp})")
        dp_group = mesh.dp_group if reduce_dp_grads and cfg.dp > 1 else None
        return cls(stages, schedule, loss_fn, pp_rank=mesh.pp_rank, pp_ranks=mesh.pp_ranks,
                   pp_group=mesh.pp_group, dp_group=dp_group, **kw)

    @property
    def holds_last_stage(self) -> bool:
        """True on the pp rank whose stage computes the loss (and so needs targets)."""
        return self.schedule.num_stages - 1 in self.stages

    # ------------------------------------------------------------------ the step

    def parameters(self):
        for s in sorted(self.stages):
            yield from self.stages[s].parameters()

    def step(self, inputs=None, targets=None) -> float:
        """One pipelined forward + backward over the batch; returns this pipeline's loss.

        inputs are read on the rank holding stage 0, targets on the rank holding the
        last stage (pp rank p - 1, or pp rank 0 under ZB-V's placement: see
        holds_last_stage); elsewhere they may be None.  Gradients accumulate into .grad.
        """
        start = time.perf_counter()
        if self._exchanger is None:
            self._first_step()
        self._exchanger.reset()
        st = self._begin(inputs, targets)
        for item in self._plan:
            if isinstance(item, Action):
                self._compute(st, item)
            else:
                self._exchange(st, *item)
        self._exchanger.flush()
        loss = self._agree(st)
        if self.dp_group is not None:
            _average_grads(list(self.parameters()), self.dp_group)
        st.stats.step_s = time.perf_counter() - start
        self.stats = st.stats
        return loss

    def _first_step(self):
        """Check every rank of the pipeline runs the same schedule and protocol.

        This is also the pp group's first collective, which NCCL wants before any
        batched p2p that involves only part of the group.
        """
        sched = self.schedule
        digest = zlib.crc32(sched.format().encode())
        mine = torch.tensor([sched.num_ranks, sched.num_stages, sched.num_microbatches, self.header_words, digest],
                            dtype=torch.int64, device=self.device)
        everyone = [torch.empty_like(mine) for _ in self.pp_ranks]
        dist.all_gather(everyone, mine, group=self.pp_group)
        for rank, theirs in zip(self.pp_ranks, everyone):
            if not torch.equal(theirs, mine):
                raise PipelineError(f"pipeline ranks disagree on the schedule: global rank {rank} has "
                                    f"(p, S, m, header_words, crc) = {theirs.tolist()}, this rank {mine.tolist()}")
        self._plan = self._make_plan()
        self._exchanger = Exchanger(self.pp_group, self.header_words, self.device)

    def _make_plan(self) -> list:
        """This rank's actions, each run of communication actions as one batch:
        (actions, their receives, the next batch's receives, posted when this one ends)."""
        plan = []
        for is_compute, run in itertools.groupby(self.schedule.actions[self.pp_rank], key=lambda a: a.is_compute):
            plan += list(run) if is_compute else [list(run)]
        batches = [k for k, item in enumerate(plan) if isinstance(item, list)]
        recvs = [[self._recv_of(a) for a in plan[k] if a.op.startswith("RECV")] for k in batches]
        for n, k in enumerate(batches):
            plan[k] = (plan[k], recvs[n], recvs[n + 1] if n + 1 < len(recvs) else [])
        return plan

    def _recv_of(self, act: Action) -> Recv:
        peer = self.pp_ranks[act.peer]
        if act.op == "RECV_F":
            return Recv(peer, ACTIVATION, act.mb, act.stage - 1)
        return Recv(peer, GRADIENT, act.mb, act.stage + 1)

    def _begin(self, inputs, targets) -> _Step:
        st = _Step(inputs=None, targets=None)
        sched, m = self.schedule, self.schedule.num_microbatches
        try:
            if 0 in self.stages:
                if inputs is None:
                    raise ValueError("the rank holding stage 0 needs inputs")
                st.inputs = [_as_tuple(x) for x in split_microbatches(inputs, m, "inputs")]
            if sched.num_stages - 1 in self.stages:
                st.targets = [None] * m if targets is None else split_microbatches(targets, m, "targets")
        except Exception as exc:  # noqa: BLE001 - becomes a PipelineError on every rank
            self._fail(st, exc)
        return st

    def _fail(self, st: _Step, exc: BaseException):
        if st.error is None:
            st.error = exc
        st.poisoned = True

    # ----------------------------------------------------------------- compute

    def _compute(self, st: _Step, act: Action):
        if st.poisoned:
            return
        t0 = time.perf_counter()
        try:
            if act.op == "F":
                self._forward(st, act.mb, act.stage)
            elif act.op == "B":
                self._backward(st, act.mb, act.stage)
            else:
                self._weight(st, act.mb, act.stage)
        except Exception as exc:  # noqa: BLE001 - becomes a PipelineError on every rank
            self._fail(st, exc)
        st.stats.compute_s += time.perf_counter() - t0
        st.stats.peak_stashed = max(st.stats.peak_stashed, len(st.stash) + len(st.weight_grads))

    def _forward(self, st: _Step, mb: int, stage: int):
        last = self.schedule.num_stages - 1
        args = st.inputs[mb] if stage == 0 else st.fwd_in.pop((mb, stage))
        if self._wgrad is None:
            out = self.stages[stage](*args)
        else:
            out, calls = self._wgrad.forward(stage, self.stages[stage], args)
            if calls is not None:
                st.linear_calls[(mb, stage)] = calls
        if stage == last:
            loss = self.loss_fn(out, st.targets[mb])
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
            scaled = loss / self.schedule.num_microbatches if self.loss_reduction == "mean" else loss
            st.loss += float(scaled.detach())
            st.stash[(mb, stage)] = (args, (scaled,))
            return
        outs = _as_tuple(out)
        st.stash[(mb, stage)] = (args, outs)
        sent = tuple(o.detach() for o in outs)
        if self.schedule.stage_rank(stage + 1) == self.pp_rank:
            st.fwd_in[(mb, stage + 1)] = _leaves(sent)
        else:
            st.outbox[("F", mb, stage)] = sent

    def _backward(self, st: _Step, mb: int, stage: int):
        args, outs = st.stash.pop((mb, stage))
        last = stage == self.schedule.num_stages - 1
        calls = st.linear_calls.pop((mb, stage), None)
        if calls is not None:   # autograd for all but the Linears' weights (wgrad.py)
            outs, grads = (outs, None) if last else self._with_grads(outs, st.grad_in.pop((mb, stage)), stage)
            pending = self._wgrad.backward(stage, outs, grads, args, calls)
            if self.schedule.split_backward:
                st.weight_grads[(mb, stage)] = ("linear", pending)
            else:
                self._wgrad.weight(pending)
        elif self.schedule.split_backward:   # B: input gradients only; W comes later
            outs, grads = (outs, None) if last else self._with_grads(outs, st.grad_in.pop((mb, stage)), stage)
            if not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
                # no input gradient to compute (the first stage): W runs the whole backward
                st.weight_grads[(mb, stage)] = ("whole", outs, grads)
            else:
                params = [p for p in self.stages[stage].parameters() if p.requires_grad]
                # copies: torch's split detaches the outputs in place (views cannot be), and an
                # output may be a tensor its own graph saved (tanh keeps its result) that W needs
                copies = [o.clone() for o in outs]
                _, saved = stage_backward_input(copies, grads, list(args), iter(params))
                st.weight_grads[(mb, stage)] = ("split", saved)
        elif last:
            torch.autograd.backward(outs[0])
        else:
            self._backward_outputs(outs, st.grad_in.pop((mb, stage)), stage)
        if stage == 0:
            return
        grads = tuple(a.grad if a.grad is not None else torch.zeros_like(a) for a in args if _differentiable(a))
        if self.schedule.stage_rank(stage - 1) == self.pp_rank:
            st.grad_in[(mb, stage - 1)] = grads
        else:
            st.outbox[("B", mb, stage)] = grads

    def _weight(self, st: _Step, mb: int, stage: int):
        """W: the weight gradients of a B that ran earlier, from the gradients it saved at
        the graph's weight-side nodes (torch's own zero-bubble split), accumulated into .grad."""
        kind, *saved = st.weight_grads.pop((mb, stage))
        if kind == "linear":
            self._wgrad.weight(saved[0])
            return
        if kind == "whole":
            outs, grads = saved
            if outs:
                torch.autograd.backward(list(outs), grads)
            return
        params = [p for p in self.stages[stage].parameters() if p.requires_grad]
        stage_backward_weight(iter(params), saved[0])

    @staticmethod
    def _with_grads(outs: tuple, grads: tuple, stage: int):
        """(outputs, gradients) of the differentiable outputs that need one (others carry none)."""
        diff = [o for o in outs if isinstance(o, torch.Tensor) and _differentiable(o)]
        if len(diff) != len(grads):
            raise ValueError(f"stage {stage} has {len(diff)} differentiable outputs but received "
                             f"{len(grads)} gradients")
        pairs = [(o, g) for o, g in zip(diff, grads) if o.requires_grad]
        return tuple(o for o, _ in pairs), [g for _, g in pairs]

    @classmethod
    def _backward_outputs(cls, outs: tuple, grads: tuple, stage: int):
        """Back-propagate one gradient per differentiable output (others carry none)."""
        outs, grads = cls._with_grads(outs, grads, stage)
        if outs:
            torch.autograd.backward(list(outs), grads)

    # ------------------------------------------------------------ communication

    def _exchange(self, st: _Step, batch, recvs, then):
        sends = []
        for act in batch:
            if act.op in ("SEND_F", "SEND_B"):
                kind = ACTIVATION if act.op == "SEND_F" else GRADIENT
                tensors = None if st.poisoned else st.outbox.pop((act.op[-1], act.mb, act.stage))
                sends.append(Send(self.pp_ranks[act.peer], Message(kind, act.mb, act.stage, tensors)))
        try:
            msgs = self._exchanger.exchange(sends, recvs, then)
        except (ValueError, TypeError) as exc:  # a message that cannot be encoded: nothing was posted
            self._fail(st, exc)
            sends = [Send(s.peer, Message(s.msg.kind, s.msg.mb, s.msg.stage, None)) for s in sends]
            msgs = self._exchanger.exchange(sends, recvs, then)
        st.stats.messages_sent += len(sends)
        self._deliver(st, batch, msgs)

    def _deliver(self, st: _Step, batch, msgs):
        recv_acts = [a for a in batch if a.op in ("RECV_F", "RECV_B")]
        for act, msg in zip(recv_acts, msgs):
            if msg.failed or msg.tensors is None:
                st.poisoned = True  # the sender failed: stop computing, keep the schedule moving
            elif not st.poisoned:
                if act.op == "RECV_F":
                    st.fwd_in[(act.mb, act.stage)] = _leaves(msg.tensors)
                else:
                    st.grad_in[(act.mb, act.stage)] = msg.tensors

    # ---------------------------------------------------------------- agreement

    def _agree(self, st: _Step) -> float:
        """All ranks of the status group learn who failed and this pipeline's loss."""
        ranks = self._status_ranks()
        mine = torch.tensor([1.0 if st.error is not None else 0.0, st.loss], dtype=torch.float64, device=self.device)
        everyone = [torch.empty_like(mine) for _ in ranks]
        dist.all_gather(everyone, mine, group=self.status_group)
        failed = [r for r, t in zip(ranks, everyone) if t[0] > 0]
        if failed:
            msg = f"pipeline step failed on global rank(s) {failed}"
            if st.error is not None:
                raise PipelineError(f"{msg}; here: {type(st.error).__name__}: {st.error}") from st.error
            raise PipelineError(msg + "; see that rank's error for the cause")
        if st.poisoned:  # a FAILED message without a failed rank would be a protocol bug
            raise PipelineError("pipeline step was poisoned but no rank reported a failure")
        last = self.pp_ranks[self.schedule.stage_rank(self.schedule.num_stages - 1)]
        return float(everyone[ranks.index(last)][1])


def _average_grads(params: List[nn.Parameter], group):
    """Average .grad over group, one flat all_reduce per dtype (unused params count as 0)."""
    size = dist.get_world_size(group)
    if size == 1:
        return
    by_dtype: Dict[torch.dtype, List[nn.Parameter]] = {}
    for p in params:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group_params in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group_params])
        dist.all_reduce(flat, group=group)
        flat /= size
        offset = 0
        for p in group_params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n
