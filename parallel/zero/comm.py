"""The few collectives ZeRO issues, over one explicit torch.distributed group, with byte counters.

Only reduce_scatter_tensor, all_gather_into_tensor, all_reduce and broadcast are used,
so any backend (hcomm, gloo, nccl) that has them works. Reductions use SUM and the
caller divides afterwards: AVG is not on every backend, and dividing the fp32/bf16 sum
once loses less than pre-scaling every bf16 input.

Counters record the logical bytes of each collective (the full buffer: the input of a
reduce-scatter, the output of an all-gather), i.e. the "Ψ" of the ZeRO paper; the bytes
one rank actually puts on the wire with a ring are (N - 1) / N of that.
"""
from collections import Counter, deque

import torch
import torch.distributed as dist


# torch 2.13 renamed the tensor forms (the old names warn); older torch has only the old ones.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class _Done:
    """Work handle for a collective that finished synchronously (world size 1)."""

    def wait(self):
        return True


class Collectives:
    def __init__(self, group=None, device="cpu"):
        # group=None: one rank, nothing sharded and no collective, as group=None means no
        # parallelism along an axis everywhere in hcomm.parallel (pass dist.group.WORLD for
        # the whole world).
        self.group = group
        self.device = torch.device(device)   # where small tensors of our own live (nccl: cuda)
        self.rank, self.size = 0, 1
        if group is not None:
            if not dist.is_available() or not dist.is_initialized():
                raise RuntimeError("hcomm.parallel.zero needs torch.distributed.init_process_group() first")
            self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
            if self.rank < 0:
                raise ValueError("this process is not a member of the group given to ZeRO")
        self.bytes = Counter()   # kind -> logical bytes since the last reset
        self.calls = Counter()

    def global_rank(self, group_rank: int) -> int:
        if self.group is None:   # the one member is this process
            return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return dist.get_global_rank(self.group, group_rank) if self.group is not dist.group.WORLD else group_rank

    def _count(self, kind, t):
        if self.size > 1:
            self.bytes[kind] += t.numel() * t.element_size()
            self.calls[kind] += 1

    def reduce_scatter(self, out, inp, async_op=True):
        """out[shard] = SUM over ranks of inp[rank's shard]; inp.numel() == N * out.numel()."""
        if self.size == 1:
            out.copy_(inp)
            return _Done()
        self._count("reduce_scatter", inp)
        work = _reduce_scatter(out, inp, op=dist.ReduceOp.SUM, group=self.group, async_op=async_op)
        return work if async_op else _Done()

    def all_gather(self, out, inp, async_op=True):
        """out = concat over ranks of inp (inp may be out's own shard: in-place)."""
        if self.size == 1:
            if out.data_ptr() != inp.data_ptr():
                out.copy_(inp)
            return _Done()
        self._count("all_gather", out)
        work = _all_gather(out, inp, group=self.group, async_op=async_op)
        return work if async_op else _Done()

    def all_reduce(self, t):
        if self.size > 1:
            self._count("all_reduce", t)
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def broadcast(self, t, src_group_rank=0):
        if self.size > 1:
            self._count("broadcast", t)
            dist.broadcast(t, src=self.global_rank(src_group_rank), group=self.group)
        return t

    def all_gather_ints(self, values):
        """Every rank's small int list, as a list per group rank (for consistency checks)."""
        mine = torch.tensor(values, dtype=torch.int64, device=self.device)
        if self.size == 1:
            return [mine.tolist()]
        out = torch.empty(self.size * mine.numel(), dtype=torch.int64, device=self.device)
        self._count("check", out)
        _all_gather(out, mine, group=self.group)
        return out.view(self.size, -1).cpu().tolist()

    def reset_counters(self):
        self.bytes.clear()
        self.calls.clear()


class InFlight:
    """Async collectives in issue order, at most `limit` outstanding.

    Bounding the queue bounds the transient buffers the collectives hold (one bucket
    each): pushing past the limit waits for the oldest and runs its completion first.
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"in-flight limit must be >= 1, got {limit}")
        self.limit = limit
        self._q = deque()

    def push(self, work, on_done=None):
        self._q.append((work, on_done))
        while len(self._q) > self.limit:
            self._finish_oldest()

    def _finish_oldest(self):
        work, on_done = self._q.popleft()
        work.wait()
        if on_done is not None:
            on_done()

    def drain(self):
        while self._q:
            self._finish_oldest()

    def __len__(self):
        return len(self._q)


def queue_end_of_backward(callback):
    """Run callback once the current backward pass has finished (call from inside a hook).

    Uses the autograd engine's final-callback queue, as DDP and FSDP do: it is the one
    point where every gradient of this backward has been produced on this rank.
    """
    torch.autograd.Variable._execution_engine.queue_callback(callback)
