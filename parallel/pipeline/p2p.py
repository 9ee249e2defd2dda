"""Messages between pipeline stages, and how one batch of them is exchanged.

A message is what crosses one stage boundary for one micro-batch: the activations going
forward, or their gradients coming back, any number of tensors.  On the wire it is a
fixed-size int64 *control block* followed by the tensors:

    [MAGIC, status, kind, mb, stage, n, dtype_0, ndim_0, *shape_0, dtype_1, ndim_1, ...]

status is OK, FAILED (the sender's step failed; the tensors, if any, are zeros) or
RESHAPED (the spec differs from the guess the receiver posted, see below).

kind is 0 (activations) or 1 (gradients); stage is the sender's stage.  The control
block goes with every message: the receiver checks that it got the message its schedule
promised (a desynchronised schedule fails loudly instead of reading garbage), and
status = FAILED lets a rank whose stage raised keep its neighbours moving.

Shapes and dtypes are learned from the first message.  Per (peer, kind, sender stage), the
receiver of the first message ever waits for its control block before posting the tensor
receives (two hops); once one good message has arrived both sides know the spec, and
later messages post control and tensors together (one hop).  A later message of the same
step whose shapes differ is an error (micro-batches are equal slices, so they only differ
if the model does); a FAILED message on a known spec carries zeros of that spec, so the
receives already posted still match.

A step starts from the previous step's specs as *guesses* (steady state: every message
is one hop, the first ones of a step included).  The receiver posts a guessed message's
tensors with its control block, and only waits for that control block before posting
the next message from the same peer.  A sender whose tensors do not match the guess (the
batch size changed between steps) sends status RESHAPED with the new spec, zeros of the
guessed spec that fill the receives already posted, then the real tensors, which the
receiver posts once it has read RESHAPED; the spec is then known for the rest of the
step.  Sender and receiver hold the same guesses, because both learn a spec from the same
(first good) message of each step.

Exchange of a batch (a run of communication actions, see schedules.py), in rounds:
  round 0  every send and, per peer, its receives in order: control + tensors for each
           known spec, up to and including the first message whose spec is only
           guessed (control + guessed tensors) or unknown (control alone);
  round k  each control block that arrived confirms its guess or lets its (real) tensor
           receives be posted, and that peer's queue continues the same way (one
           unconfirmed message at a time, so messages on a channel match in order);
  finally  wait for every receive, then check the control blocks of the known specs.
A round waits only on control receives, which complete as soon as the peer has posted
its matching send.  So a batch finishes once every peer has reached its matching batch,
with no dependency on a third rank: the rendezvous model the checker proves
deadlock-free.  Two things start earlier or end later than that model, and neither adds
a wait to it, so neither can add a deadlock:
  * the sends of a batch are waited at the end of the *next* batch (or by flush() at the
    end of the step), so a rank computes while its last sends drain;
  * exchange(..., then=next_recvs) posts round 0 of the next batch's receives as soon
    as this batch is done, before the compute between the two: a peer that finishes
    first finds its receive posted and its message lands during our compute.  Channel
    order is kept (this batch's receives are all posted first).  Not on NCCL, where an
    individually posted receive occupies the communicator's stream until it matches
    and would hold back our own sends behind it.
"""
from collections import deque
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

MAGIC = 0x5050_0001
OK, FAILED, RESHAPED = 0, 1, 2
ACTIVATION, GRADIENT = 0, 1
_FIXED = 6  # magic, status, kind, mb, stage, n

# Wire codes of the dtypes a boundary tensor may have; the index is the code.
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)


class ProtocolError(RuntimeError):
    """A control block is not the one the schedule promised."""


Spec = Tuple[Tuple[torch.dtype, Tuple[int, ...]], ...]


@dataclass
class Message:
    kind: int
    mb: int
    stage: int
    tensors: Optional[Tuple[torch.Tensor, ...]]  # None: the sender failed and sends no tensors
    failed: bool = False                          # True with tensors: zeros standing in for a known spec


def spec_of(tensors, stage: int) -> Spec:
    spec = []
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"stage {stage} sends a {type(t).__name__} at position {i}; only tensors can cross stages")
        if t.dtype not in DTYPES:
            raise ValueError(f"stage {stage} output {i} has dtype {t.dtype}, which cannot cross stages")
        spec.append((t.dtype, tuple(t.shape)))
    return tuple(spec)


def allocate(spec: Spec, device) -> Tuple[torch.Tensor, ...]:
    return tuple(torch.zeros(shape, dtype=dtype, device=device) for dtype, shape in spec)


def encode_control(msg: Message, words: int, reshaped: bool = False) -> torch.Tensor:
    """Control block of msg; raises ValueError if its tensors do not fit in `words`."""
    tensors = msg.tensors or ()
    body = [x for dtype, shape in spec_of(tensors, msg.stage) for x in (DTYPES.index(dtype), len(shape), *shape)]
    status = FAILED if msg.failed or msg.tensors is None else RESHAPED if reshaped else OK
    head = [MAGIC, status, msg.kind, msg.mb, msg.stage, len(tensors)]
    if len(head) + len(body) > words:
        raise ValueError(f"stage {msg.stage} sends {len(tensors)} tensors whose shapes need {len(head) + len(body)} "
                         f"control words > header_words={words}; raise header_words")
    return torch.tensor(head + body + [0] * (words - len(head) - len(body)), dtype=torch.int64)


def parse_control(ctrl: torch.Tensor, kind: int, mb: int, stage: int) -> Tuple[int, Spec]:
    """(status, spec) of a control block, after checking it is the expected message."""
    w = ctrl.tolist()
    if w[0] != MAGIC or (w[2], w[3], w[4]) != (kind, mb, stage) or w[1] not in (OK, FAILED, RESHAPED):
        what = "activations" if kind == ACTIVATION else "gradients"
        raise ProtocolError(f"expected {what} of mb {mb} from stage {stage}, got control block {w[:_FIXED]} "
                            f"(magic {MAGIC:#x}): do all ranks run the same schedule?")
    spec, pos = [], _FIXED
    for _ in range(w[5]):
        ndim = w[pos + 1]
        spec.append((DTYPES[w[pos]], tuple(w[pos + 2:pos + 2 + ndim])))
        pos += 2 + ndim
    return w[1], tuple(spec)


@dataclass
class Send:
    peer: int  # global rank
    msg: Message


@dataclass
class Recv:
    peer: int  # global rank
    kind: int
    mb: int
    stage: int  # the sender's stage

    @property
    def key(self):
        return ("recv", self.peer, self.kind, self.stage)


class Exchanger:
    """Runs batches of sends/receives over one process group (see the module docstring)."""

    def __init__(self, group, header_words: int, device):
        self.group = group
        self.words = header_words
        self.device = device
        self.known: Dict[tuple, Spec] = {}    # specs confirmed this step, both directions
        self.guess: Dict[tuple, Spec] = {}    # specs of earlier steps, until confirmed
        self._sends: list = []                # works of the last batch's sends, not yet waited
        self._early: Optional[_Inbox] = None  # the next batch's receives, posted early
        # Every operation is posted on its own, straight on the process group (not through
        # batch_isend_irecv, which NCCL coalesces into one work that would make a round
        # wait for its sends, nor through the isend/irecv wrappers, whose checks and
        # group lookups cost more than the posting itself on small messages).
        self.pg = group if group is not None else dist.group.WORLD
        self._group_rank: Dict[int, int] = {}  # global rank -> rank in self.pg
        self.early_recvs = dist.get_backend(group) != "nccl"

    def reset(self):
        """Start a step: what this step confirmed becomes the next one's guesses.

        Works left over (only after an exception escaped exchange(), when the traffic
        with the peers is out of step anyway) are dropped, not waited."""
        self.guess.update(self.known)
        self.known.clear()
        self._sends, self._early = [], None

    def _post(self, ops: List[Tuple[bool, torch.Tensor, int]]) -> list:
        """Post (is_send, tensor, global peer rank) operations; one work each."""
        works = []
        for is_send, tensor, peer in ops:
            rank = self._group_rank.get(peer)
            if rank is None:
                rank = self._group_rank[peer] = dist.get_group_rank(self.pg, peer)
            if tensor.is_complex():  # as dist.isend does: the backends move real views
                tensor = torch.view_as_real(tensor)
            works.append((self.pg.send if is_send else self.pg.recv)([tensor], rank, 0))
        return works

    def _send_ops(self, sends: Sequence[Send]) -> list:
        """Encode every send first (raising before anything is posted or learned)."""
        ops, learned = [], {}
        for s in sends:
            msg, key = s.msg, ("send", s.peer, s.msg.kind, s.msg.stage)
            known = learned.get(key, self.known.get(key))
            posted = known if known is not None else self.guess.get(key)  # what the receiver posts
            reshaped = False
            if msg.tensors is not None and not msg.failed:
                spec = spec_of(msg.tensors, msg.stage)
                if known is not None and spec != known:
                    raise ValueError(f"stage {msg.stage} changed the shapes it sends within a step: {known} -> {spec}")
                learned.setdefault(key, spec)
                reshaped = posted is not None and spec != posted
            elif posted is not None:
                msg = Message(msg.kind, msg.mb, msg.stage, allocate(posted, self.device), failed=True)
            ops.append((True, encode_control(msg, self.words, reshaped).to(self.device), s.peer))
            if reshaped:  # fill the receives posted for the guess, then the real tensors
                ops += [(True, t, s.peer) for t in allocate(posted, self.device)]
            ops += [(True, t.contiguous(), s.peer) for t in msg.tensors or ()]
        self.known.update(learned)
        return ops

    def exchange(self, sends: Sequence[Send], recvs: Sequence[Recv], then: Sequence[Recv] = ()) -> List[Message]:
        """Send all of sends, receive recvs (returned in the same order); then post
        round 0 of `then`, the next batch's receives (see the module docstring)."""
        ops = self._send_ops(sends)
        inbox, self._early = self._early, None
        if inbox is None:
            inbox = _Inbox(recvs)
        elif inbox.recvs != list(recvs):
            raise RuntimeError(f"receives posted early for {inbox.recvs} but the batch receives {list(recvs)}")
        sent, self._sends = self._sends, self._post(ops)
        self._post_round(inbox, [])
        while inbox.pending:
            pending, inbox.pending = inbox.pending, []
            for work, _ in pending:
                work.wait()
            ops = []
            for _, i in pending:
                ops += self._learn(inbox.recvs[i], inbox.ctrls.pop(i), inbox.results, i)
            self._post_round(inbox, ops)
        for work in sent + inbox.works:
            work.wait()
        for i, ctrl in inbox.ctrls.items():  # messages whose spec was known: check what came
            r = inbox.recvs[i]
            status, spec = parse_control(ctrl, r.kind, r.mb, r.stage)
            if status == RESHAPED or spec != self.known[r.key]:
                raise ProtocolError(f"stage {r.stage} sent shapes {spec}, expected {self.known[r.key]}")
            inbox.results[i].failed = status == FAILED
        if then and self.early_recvs:
            self._early = _Inbox(then)
            self._post_round(self._early, [])
        return inbox.results

    def flush(self):
        """Wait for the sends still in flight (the last batch's); call at the end of a step."""
        sent, self._sends = self._sends, []
        for work in sent:
            work.wait()

    def _learn(self, r: Recv, ctrl: torch.Tensor, results: list, i: int) -> list:
        """The control block of an unconfirmed message arrived: confirm the guess whose
        tensors were posted with it, or allocate and receive the tensors it announces."""
        status, spec = parse_control(ctrl, r.kind, r.mb, r.stage)
        guessed = results[i]
        if status == FAILED:
            results[i] = Message(r.kind, r.mb, r.stage, guessed.tensors if guessed else None, failed=True)
            return []
        if guessed is not None and status == OK:
            if spec != self.guess[r.key]:
                raise ProtocolError(f"stage {r.stage} sent shapes {spec} without RESHAPED; "
                                    f"expected {self.guess[r.key]}")
            self.known[r.key] = spec
            return []
        if (guessed is not None) != (status == RESHAPED):
            raise ProtocolError(f"stage {r.stage} sent RESHAPED for a spec this rank did not guess"
                                if guessed is None else f"stage {r.stage} sent status {status} for a guessed spec")
        self.known[r.key] = spec
        results[i] = Message(r.kind, r.mb, r.stage, allocate(spec, self.device))
        return [(False, t, r.peer) for t in results[i].tensors]

    def _post_round(self, inbox: "_Inbox", ops: list):
        """Post ops and each peer's next receives (see the module docstring), adding the
        control blocks to wait for to inbox.pending and everything else to inbox.works.
        Each work is waited exactly once: a second wait on a finished gloo receive
        blocks forever."""
        waits = []
        for peer, queue in inbox.queues.items():
            while queue:
                i = queue.popleft()
                r = inbox.recvs[i]
                inbox.ctrls[i] = torch.empty(self.words, dtype=torch.int64, device=self.device)
                ops.append((False, inbox.ctrls[i], peer))
                spec = self.known.get(r.key)
                if spec is None:
                    waits.append((len(ops) - 1, i))
                    spec = self.guess.get(r.key)
                    if spec is not None:  # post the guessed tensors now; RESHAPED replaces them
                        inbox.results[i] = Message(r.kind, r.mb, r.stage, allocate(spec, self.device))
                        ops += [(False, t, peer) for t in inbox.results[i].tensors]
                    break
                inbox.results[i] = Message(r.kind, r.mb, r.stage, allocate(spec, self.device))
                ops += [(False, t, peer) for t in inbox.results[i].tensors]
        works = self._post(ops)
        first = {k for k, _ in waits}
        inbox.pending += [(works[k], i) for k, i in waits]
        inbox.works += [w for k, w in enumerate(works) if k not in first]


class _Inbox:
    """The receiving half of one batch while it is being exchanged."""

    def __init__(self, recvs: Sequence[Recv]):
        self.recvs = list(recvs)
        self.queues: Dict[int, deque] = {}   # per peer: indices into recvs not yet posted
        for i, r in enumerate(self.recvs):
            self.queues.setdefault(r.peer, deque()).append(i)
        self.results: List[Optional[Message]] = [None] * len(self.recvs)
        self.ctrls: Dict[int, torch.Tensor] = {}  # control blocks posted, not yet read
        self.pending: list = []               # (work, index) of control blocks to wait for
        self.works: list = []                 # every other receive posted
