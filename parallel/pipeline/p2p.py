"""Messages between pipeline stages, and how one batch of them is exchanged.

A message is what crosses one stage boundary for one micro-batch: the activations going
forward, or their gradients coming back, any number of tensors.  On the wire it is a
fixed-size int64 *control block* followed by the tensors it announces:

    [MAGIC, status, kind, mb, stage, n, dtype_0, ndim_0, *shape_0, dtype_1, ndim_1, ...]

kind is 0 (activations) or 1 (gradients); stage is the sender's stage.  Sending shapes
and dtypes with every message (not only the first) costs one small extra transfer per
boundary crossing and buys three things: shapes may change between micro-batches, the
receiver checks that the message is the one its schedule promised (a desynchronised
schedule fails loudly instead of reading garbage), and status = FAILED lets a rank that
has no tensors to send (its stage raised) still keep its neighbours moving.

Exchange of a batch (a run of communication actions, see schedules.py), in rounds:
  round 0  every send (control + tensors) and, per peer, the first control receive;
  round k  each control that arrived lets its tensor receives be posted, together with
           the next control receive from the same peer (one per peer at a time, so
           messages on a channel are matched in order);
  finally  wait for everything.
A round waits only on control receives, which complete as soon as the peer has posted
its matching send; sends are waited at the end.  So a batch finishes once every peer
has reached its matching batch, with no dependency on a third rank: the rendezvous
model the checker proves deadlock-free.
"""
from collections import deque
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

MAGIC = 0x5050_0001
OK, FAILED = 0, 1
ACTIVATION, GRADIENT = 0, 1
_FIXED = 6  # magic, status, kind, mb, stage, n

# Wire codes of the dtypes a boundary tensor may have; the index is the code.
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)


class ProtocolError(RuntimeError):
    """A control block is not the one the schedule promised."""


@dataclass
class Message:
    kind: int
    mb: int
    stage: int
    tensors: Optional[Tuple[torch.Tensor, ...]]  # None: the sender failed


def encode_control(msg: Message, words: int) -> torch.Tensor:
    """Control block of msg; raises ValueError if its tensors do not fit in `words`."""
    body = []
    for i, t in enumerate(msg.tensors or ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"stage {msg.stage} sends a {type(t).__name__} at position {i}; only tensors can cross stages")
        if t.dtype not in DTYPES:
            raise ValueError(f"stage {msg.stage} output {i} has dtype {t.dtype}, which cannot cross stages")
        body += [DTYPES.index(t.dtype), t.dim(), *t.shape]
    status = OK if msg.tensors is not None else FAILED
    n = len(msg.tensors) if msg.tensors is not None else 0
    head = [MAGIC, status, msg.kind, msg.mb, msg.stage, n]
    if len(head) + len(body) > words:
        raise ValueError(f"stage {msg.stage} sends {n} tensors whose shapes need {len(head) + len(body)} "
                         f"control words > header_words={words}; raise header_words")
    return torch.tensor(head + body + [0] * (words - len(head) - len(body)), dtype=torch.int64)


def decode_control(ctrl: torch.Tensor, kind: int, mb: int, stage: int, device) -> Message:
    """Check ctrl is the expected message and allocate its tensors (None if the sender failed)."""
    w = ctrl.tolist()
    if w[0] != MAGIC or (w[2], w[3], w[4]) != (kind, mb, stage):
        what = "activations" if kind == ACTIVATION else "gradients"
        raise ProtocolError(f"expected {what} of mb {mb} from stage {stage}, got control block {w[:_FIXED]} "
                            f"(magic {MAGIC:#x}): do all ranks run the same schedule?")
    if w[1] == FAILED:
        return Message(kind, mb, stage, None)
    tensors, pos = [], _FIXED
    for _ in range(w[5]):
        dtype, ndim = DTYPES[w[pos]], w[pos + 1]
        tensors.append(torch.empty(w[pos + 2:pos + 2 + ndim], dtype=dtype, device=device))
        pos += 2 + ndim
    return Message(kind, mb, stage, tuple(tensors))


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


class Exchanger:
    """Runs batches of sends/receives over one process group (see the module docstring)."""

    def __init__(self, group, header_words: int, device):
        self.group = group
        self.words = header_words
        self.device = device
        # NCCL coalesces a batch into one work, which would make a round wait for its
        # sends; there each operation is posted on its own (still asynchronous).
        self.coalesces = dist.get_backend(group) == "nccl"

    def _post(self, ops: List[dist.P2POp]) -> list:
        if not ops:
            return []
        if self.coalesces:
            return [op.op(op.tensor, op.peer, op.group) for op in ops]
        return dist.batch_isend_irecv(ops)

    def _op(self, fn, tensor, peer):
        return dist.P2POp(fn, tensor, peer, self.group)

    def exchange(self, sends: Sequence[Send], recvs: Sequence[Recv]) -> List[Message]:
        """Send all of sends, receive recvs (returned in the same order)."""
        ops = []
        for s in sends:
            ops.append(self._op(dist.isend, encode_control(s.msg, self.words).to(self.device), s.peer))
            ops += [self._op(dist.isend, t.contiguous(), s.peer) for t in s.msg.tensors or ()]
        queues: Dict[int, deque] = {}
        for i, r in enumerate(recvs):
            queues.setdefault(r.peer, deque()).append(i)
        results: List[Optional[Message]] = [None] * len(recvs)
        pending, works = self._post_controls(queues, ops)
        while pending:
            for work, _, _ in pending:
                work.wait()
            ops = []
            for _, i, ctrl in pending:
                r = recvs[i]
                results[i] = decode_control(ctrl, r.kind, r.mb, r.stage, self.device)
                ops += [self._op(dist.irecv, t, r.peer) for t in results[i].tensors or ()]
            pending, more = self._post_controls(queues, ops)
            works += more
        for work in works:
            work.wait()
        return results

    def _post_controls(self, queues: Dict[int, deque], ops: list):
        """Post ops plus the next control receive of each peer.

        Returns (control receives as (work, recv index, buffer), works of the other ops).
        The two lists are disjoint: a gloo work must be waited exactly once (a second
        wait on a finished receive blocks forever).
        """
        controls = []
        for peer, queue in queues.items():
            if queue:
                i = queue.popleft()
                ctrl = torch.empty(self.words, dtype=torch.int64, device=self.device)
                controls.append((len(ops), i, ctrl))
                ops.append(self._op(dist.irecv, ctrl, peer))
        works = self._post(ops)
        if len(works) != len(ops):
            raise RuntimeError(f"backend {dist.get_backend(self.group)} coalesced {len(ops)} p2p operations into "
                               f"{len(works)} works; the pipeline needs one work per operation")
        is_control = {k for k, _, _ in controls}
        others = [w for k, w in enumerate(works) if k not in is_control]
        return [(works[k], i, ctrl) for k, i, ctrl in controls], others
