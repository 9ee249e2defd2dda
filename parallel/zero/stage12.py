"""ZeRO stages 1 and 2: every rank keeps the full parameters, the optimizer works on shards.

Per flat bucket and rank r of N (see flat.py for the layout):

    stage 1   backward: autograd fills p.grad as usual (full size, kept until zero_grad)
              step:     reduce-scatter the bucket's gradients -> grad shard r
                        optimizer updates master shard r -> all-gather the parameters
    stage 2   backward: a post-accumulate-grad hook copies p.grad into the bucket's flat
                        gradient and frees p.grad; once the bucket is complete its
                        reduce-scatter is issued asynchronously, overlapping the rest of
                        the backward; the shard result is added into grad shard r
              step:     wait for the outstanding reduce-scatters, then as stage 1

Communication per step: reduce-scatter Ψ + all-gather Ψ = 2Ψ elements of the
parameter dtype (logical buffer bytes, see comm.py).

Gradient accumulation: stage 1 sends nothing until step (p.grad accumulates as in plain
torch); stage 2 reduce-scatters on every backward and adds into the shard, so no
full-size gradient outlives a bucket (the price is one reduce-scatter per micro-step).

Buckets are issued strictly in index order (bucket 0 holds the last parameters, whose
gradients come first): ranks then issue the same collectives in the same order even if
their hooks fire in a different order, and buckets missing a gradient are issued with
zeros at the end of the backward.
"""
import torch

from .comm import InFlight, queue_end_of_backward
from .flat import FlatLayout, split_into_buckets
from .shards import ShardState, flatten_params

# Reduce-scatters outstanding at once: bounds the transient flat-gradient buckets to
# (limit + 1) buckets while still overlapping communication with the backward.
_INFLIGHT = 2


class _Bucket:
    def __init__(self, index, group_index, named, comm, param_dtype, sync_params):
        self.index = index
        self.group_index = group_index
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.layout = FlatLayout.build([(n, p.shape) for n, p in named], comm.size)
        full32 = flatten_params(self.params, self.layout, torch.float32)
        if sync_params:
            comm.broadcast(full32)   # every rank starts from rank 0's values, as DDP does
        self.lo, self.hi = self.layout.shard_range(comm.rank)
        if param_dtype == torch.float32:
            self.flat = full32
            master = self.flat[self.lo:self.hi]       # fp32: the master is the parameters' own shard
        else:
            self.flat = full32.to(param_dtype)
            master = full32[self.lo:self.hi].clone()  # kept from the fp32 values, not the rounded ones
        self.shard = ShardState(self.layout, comm.rank, master)
        for p, s in zip(self.params, self.layout.slots):
            p.data = self.flat[s.offset:s.offset + s.numel].view(s.shape)
            p.grad = None
        self.flat_grad = None   # stage 2: gradient bucket being filled during backward
        self.ready = 0



class Stage12Engine:
    def __init__(self, groups, comm, stage, bucket_bytes, param_dtype, overlap, sync_params):
        if stage not in (1, 2):
            raise ValueError(f"Stage12Engine handles stages 1 and 2, got {stage}")
        self.comm, self.stage, self.overlap = comm, stage, overlap
        self.param_dtype = param_dtype
        self.buckets = []
        for gi, named in enumerate(groups):
            rev = list(reversed(named))   # backward produces the last parameters' gradients first
            sizes = [p.numel() * torch.empty((), dtype=param_dtype).element_size() for _, p in rev]
            for idx in split_into_buckets(sizes, bucket_bytes):
                self.buckets.append(_Bucket(len(self.buckets), gi, [rev[i] for i in idx], comm,
                                            param_dtype, sync_params))
        self.inflight = InFlight(_INFLIGHT)
        self._next = 0               # stage 2: next bucket to issue in this backward
        self._in_backward = False
        self.live_comm_bytes = 0     # flat-gradient buckets alive right now, and the peak
        self.peak_comm_bytes = 0
        if stage == 2:
            self._hooks = [p.register_post_accumulate_grad_hook(self._grad_hook(b, i))
                           for b in self.buckets for i, p in enumerate(b.params)]

    @property
    def shards(self):
        return [b.shard for b in self.buckets]

    # ---- gradients -------------------------------------------------------------------
    def _track(self, nbytes):
        self.live_comm_bytes += nbytes
        self.peak_comm_bytes = max(self.peak_comm_bytes, self.live_comm_bytes)

    def _new_flat_grad(self, bucket):
        flat = torch.zeros(bucket.layout.padded_numel, dtype=self.param_dtype, device=self.comm.device)
        self._track(flat.numel() * flat.element_size())
        return flat

    def _issue(self, bucket, flat_grad):
        """Async reduce-scatter of one flat gradient; its shard is added in when it completes."""
        out = torch.empty(bucket.layout.shard_numel, dtype=flat_grad.dtype, device=flat_grad.device)
        nbytes = flat_grad.numel() * flat_grad.element_size()
        work = self.comm.reduce_scatter(out, flat_grad, async_op=True)

        def done(flat_grad=flat_grad):   # holds flat_grad until the collective is over
            bucket.shard.add_reduced(out, self.comm.size)
            self.live_comm_bytes -= nbytes
        self.inflight.push(work, done)

    def _grad_hook(self, bucket, i):
        slot = bucket.layout.slots[i]

        def hook(p):
            if p.grad is None:
                return
            if not self._in_backward:
                self._in_backward = True
                queue_end_of_backward(self._end_backward)
            if bucket.flat_grad is None:
                bucket.flat_grad = self._new_flat_grad(bucket)
            bucket.flat_grad[slot.offset:slot.offset + slot.numel].copy_(p.grad.reshape(-1))
            p.grad = None
            bucket.ready += 1
            if self.overlap:
                self._issue_ready()
        return hook

    def _issue_ready(self):
        while self._next < len(self.buckets) and \
                self.buckets[self._next].ready == len(self.buckets[self._next].params):
            self._issue_next()

    def _issue_next(self):
        b = self.buckets[self._next]
        flat = b.flat_grad if b.flat_grad is not None else self._new_flat_grad(b)
        b.flat_grad, b.ready = None, 0
        self._issue(b, flat)
        self._next += 1

    def _end_backward(self):
        # Issue what is left in index order, zeros for buckets this rank got no gradient for.
        while self._next < len(self.buckets):
            self._issue_next()
        self._next, self._in_backward = 0, False

    def _reduce_stage1(self):
        for b in self.buckets:
            flat = self._new_flat_grad(b)
            for p, s in zip(b.params, b.layout.slots):
                if p.grad is not None:
                    flat[s.offset:s.offset + s.numel].copy_(p.grad.reshape(-1))
            b.shard.grad = None   # p.grad already holds the accumulated micro-steps
            self._issue(b, flat)

    def finish_gradients(self):
        """Make every grad shard final: the averaged gradient of all ranks' backward passes."""
        if self.stage == 1:
            self._reduce_stage1()
        self.inflight.drain()

    # ---- parameters --------------------------------------------------------------------
    def publish(self):
        """Copy the updated master shards into the parameters of every rank (all-gather)."""
        works = []
        for b in self.buckets:
            if self.stage == 1:
                b.shard.grad = None   # rebuilt from p.grad at every step: free it in between
            mine = b.flat[b.lo:b.hi]
            if mine.data_ptr() != b.shard.master.data_ptr():
                mine.copy_(b.shard.master)
            works.append(self.comm.all_gather(b.flat, mine, async_op=True))
        for w in works:
            w.wait()

    def zero_grad(self):
        self.inflight.drain()
        for b in self.buckets:
            b.shard.grad = None
            for p in b.params:
                p.grad = None

    # ---- accounting --------------------------------------------------------------------
    def measured(self):
        """Bytes of the real tensors this rank holds now, per memory-plan row."""
        params = sum(b.flat.numel() * b.flat.element_size() for b in self.buckets)
        if self.stage == 1:
            grads = sum(p.grad.numel() * p.grad.element_size()
                        for b in self.buckets for p in b.params if p.grad is not None)
        else:
            grads = sum(b.shard.grad.numel() * b.shard.grad.element_size()
                        for b in self.buckets if b.shard.grad is not None)
        master = 0 if self.param_dtype == torch.float32 else \
            sum(b.shard.master.numel() * 4 for b in self.buckets)
        return {"parameters": params, "gradients": grads, "master weights": master,
                "gathered buffers": 0, "comm buckets": self.peak_comm_bytes}
