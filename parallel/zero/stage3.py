"""ZeRO stage 3: parameters are sharded too, gathered per module just before use and freed after.

The model is cut into *units*: by default every module that directly owns trainable
parameters (a Linear, a LayerNorm, an Embedding ...); `units=(Block,)` makes each Block
one unit instead (its parameters not inside a nested unit; the root takes the rest).
Each unit owns one flat buffer (flat.py); rank r keeps shard r of it.

Lifetime of a unit's full parameters (the flat buffer `full`, whose storage is resized
to 0 bytes while sharded; the module's parameters stay views into it, so tensors that
autograd saved in forward see the re-gathered values in backward):

    forward pre-hook   check -> all-gather (unless prefetched) -> wait; prefetch next unit
    forward post-hook  hook the outputs' gradients (pre-backward); free, except the unit
                       the previous backward started with (it is the first one needed)
    pre-backward       check -> all-gather (unless prefetched) -> wait; prefetch next unit
    all grads arrived  copy each p.grad into a flat gradient, free p.grad; reduce-scatter
                       (async) into the grad shard; free the parameters
    end of backward    reduce-scatter the units left incomplete (unused parameters), free all

"Next unit" is taken from the order recorded in the previous forward / backward, which
the checks below proved identical on every rank, so prefetches match across ranks.
Communication per step: all-gather Ψ (forward) + all-gather Ψ (backward) + reduce-scatter
Ψ = 3Ψ. Gradient accumulation: every backward reduce-scatters and adds into the shard.

Divergent control flow. If one rank skips a module the others run, their gathers would
pair up wrongly and hang or corrupt. So before each use (forward and backward) every
rank all-gathers three integers (unit index, phase, position in this pass) and raises
ZeroControlFlowError naming the module and the ranks on any mismatch. Cost: one tiny,
latency-bound collective per unit per forward and per backward (2 x units per step,
24 x N bytes each), so it grows with the number of units: coarser units (units=(Block,))
cut it, `check_control_flow=False` removes it (benchmarks/zero_step.py: zero3-nocheck).

Not supported: a parameter used outside its unit's forward (e.g. a weight tied across
two units), and reading module parameters between steps (they are sharded: use
ZeroOptimizer.full_state_dict()).
"""
from collections import defaultdict

import torch
import torch.utils._pytree as pytree
from torch.autograd.graph import register_multi_grad_hook

from .comm import InFlight, queue_end_of_backward
from .flat import FlatLayout
from .shards import ShardState, flatten_params

_INFLIGHT = 2
_FORWARD, _BACKWARD = 0, 1
_PHASE = {_FORWARD: "forward", _BACKWARD: "backward"}


class ZeroControlFlowError(RuntimeError):
    """Ranks of one dp group ran different modules under ZeRO stage 3."""


class _Unit:
    def __init__(self, index, name, named, comm, param_dtype, sync_params):
        self.index, self.name = index, name
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.layout = FlatLayout.build([(n, p.shape) for n, p in named], comm.size)
        full32 = flatten_params(self.params, self.layout, torch.float32)
        if sync_params:
            comm.broadcast(full32)
        lo, hi = self.layout.shard_range(comm.rank)
        master = full32[lo:hi].clone()
        # local: this rank's shard in the parameter dtype, the input of every all-gather
        self.local = master if param_dtype == torch.float32 else master.to(param_dtype)
        self.shard = ShardState(self.layout, comm.rank, master)
        self.full = torch.empty(self.layout.padded_numel, dtype=param_dtype, device=comm.device)
        self.nbytes = self.full.numel() * self.full.element_size()
        for p, s in zip(self.params, self.layout.slots):
            p.data = self.full[s.offset:s.offset + s.numel].view(s.shape)
            p.grad = None
        self.full.untyped_storage().resize_(0)
        self.work = None          # pending all-gather
        self.gathered = False     # storage holds the full parameters (or is being filled)
        self.flat_grad = None     # gradients of this backward, until reduce-scattered
        self.missing = set()      # slots of flat_grad no gradient has written yet
        self.ready = 0


def assign_units(module, managed, units):
    """[(unit name, [(param name, param)])] in module pre-order; see the module docstring."""
    if units is not None and not (isinstance(units, tuple) and all(isinstance(u, type) for u in units)):
        raise TypeError(f"units must be None or a tuple of module classes, got {units!r}")
    managed_ids = {id(p) for p in managed}
    owner, order = {}, []
    for name, m in module.named_modules():
        direct = any(id(p) in managed_ids for p in m.parameters(recurse=False))
        if m is module or (units is None and direct) or (units is not None and isinstance(m, units)):
            order.append(name)
            for p in m.parameters():
                if id(p) in managed_ids:
                    owner[id(p)] = name   # pre-order: a nested unit overwrites its ancestor
    members = defaultdict(list)
    for pname, p in module.named_parameters():
        if id(p) in owner:
            members[owner[id(p)]].append((pname, p))
    return [(name, members[name]) for name in order if members[name]]


class Stage3Engine:
    def __init__(self, module, named, comm, param_dtype, units, overlap, check_control_flow, sync_params):
        self.comm, self.param_dtype = comm, param_dtype
        self.overlap, self.check_enabled = overlap, check_control_flow
        assigned = assign_units(module, [p for _, p in named], units)
        self.units = [_Unit(i, name, members, comm, param_dtype, sync_params)
                      for i, (name, members) in enumerate(assigned)]
        self.inflight = InFlight(_INFLIGHT)
        self._fwd, self._bwd = [], []              # unit order of the current passes
        self._last_fwd, self._last_bwd = [], []    # ... of the previous ones (for prefetch)
        self._in_backward = False
        self.live_gathered = self.peak_gathered = 0
        self.live_comm = self.peak_comm = 0
        self._handles = [module.register_forward_pre_hook(self._root_pre_forward),
                         module.register_forward_hook(self._root_post_forward)]
        by_name = dict(module.named_modules())
        for u in self.units:
            m = by_name[u.name]
            self._handles.append(m.register_forward_pre_hook(self._pre_forward_hook(u)))
            self._handles.append(m.register_forward_hook(self._post_forward_hook(u)))
            for i, p in enumerate(u.params):
                self._handles.append(p.register_post_accumulate_grad_hook(self._grad_hook(u, i)))

    @property
    def shards(self):
        return [u.shard for u in self.units]

    # ---- gather / free -------------------------------------------------------------------
    def _gather(self, u):
        if u.gathered:
            return
        u.full.untyped_storage().resize_(u.nbytes)
        u.work = self.comm.all_gather(u.full, u.local, async_op=True)
        u.gathered = True
        self.live_gathered += u.nbytes
        self.peak_gathered = max(self.peak_gathered, self.live_gathered)

    def _wait(self, u):
        if u.work is not None:
            u.work.wait()
            u.work = None

    def _free(self, u):
        if not u.gathered:
            return
        self._wait(u)
        u.full.untyped_storage().resize_(0)
        u.gathered = False
        self.live_gathered -= u.nbytes

    def _use(self, u, phase, order, last):
        """Check, gather and prefetch for the unit about to run."""
        pos = len(order)
        order.append(u.index)
        if self.check_enabled:
            self._check(u, phase, pos)
        self._gather(u)
        if self.overlap and pos + 1 < len(last) and last[pos] == u.index:
            self._gather(self.units[last[pos + 1]])
        self._wait(u)

    def _check(self, u, phase, pos):
        rows = self.comm.all_gather_ints([u.index, phase, pos])
        if all(r == rows[0] for r in rows):
            return
        seen = defaultdict(list)
        for group_rank, (idx, ph, at) in enumerate(rows):
            seen[(idx, ph, at)].append(self.comm.global_rank(group_rank))
        what = "; ".join(f"ranks {ranks} are at {_PHASE[ph]} of module '{self._label(idx)}' (#{at} in this pass)"
                         for (idx, ph, at), ranks in sorted(seen.items(), key=lambda kv: kv[1]))
        raise ZeroControlFlowError(
            f"ZeRO stage 3: divergent control flow in the dp group: module '{self._label(u.index)}' "
            f"({_PHASE[phase]}) is not run by every rank at the same point: {what}. Every rank must "
            f"run the same modules in the same order (or use stage 1/2 for data-dependent control flow).")

    def _label(self, idx):
        return self.units[idx].name or "<root>"

    # ---- hooks -------------------------------------------------------------------------
    def _root_pre_forward(self, module, args):
        if not self._in_backward:
            self._fwd = []

    def _root_post_forward(self, module, args, output):
        if not self._in_backward:
            self._last_fwd = list(self._fwd)

    def _pre_forward_hook(self, u):
        def hook(module, args):
            if self._in_backward:          # activation recomputation inside backward
                self._gather(u)
                self._wait(u)
                return
            self._use(u, _FORWARD, self._fwd, self._last_fwd)
        return hook

    def _post_forward_hook(self, u):
        def hook(module, args, output):
            if self._in_backward:
                return
            tensors = [t for t in pytree.tree_leaves(output) if torch.is_tensor(t) and t.requires_grad]
            if tensors and torch.is_grad_enabled():
                register_multi_grad_hook(tensors, lambda grads: self._pre_backward(u), mode="any")
                if self.overlap and self._last_bwd[:1] == [u.index]:
                    return   # the previous backward started here: keep it for this one's first use
            self._free(u)
        return hook

    def _start_backward(self):
        if not self._in_backward:
            self._in_backward = True
            self._bwd = []
            queue_end_of_backward(self._end_backward)

    def _pre_backward(self, u):
        self._start_backward()
        self._use(u, _BACKWARD, self._bwd, self._last_bwd)

    def _grad_hook(self, u, i):
        slot = u.layout.slots[i]

        def hook(p):
            if p.grad is None:
                return
            self._start_backward()
            if u.flat_grad is None:
                u.flat_grad = self._new_flat_grad(u)
            u.flat_grad[slot.offset:slot.offset + slot.numel].copy_(p.grad.reshape(-1))
            p.grad = None
            u.missing.discard(i)
            u.ready += 1
            if u.ready == len(u.params):
                self._reduce(u)
                self._free(u)
        return hook

    def _new_flat_grad(self, u):
        """A unit's flat gradient. Every slot is overwritten by its parameter's gradient
        (a parameter that gets none is zeroed at the end of backward), so only the
        padding tail needs zeros: filling the whole buffer cost a write of Ψ_unit per step."""
        flat = torch.empty(u.layout.padded_numel, dtype=self.param_dtype, device=self.comm.device)
        flat[u.layout.numel:].zero_()
        u.missing = set(range(len(u.params)))
        self._track_comm(u.nbytes)
        return flat

    def _track_comm(self, nbytes):
        self.live_comm += nbytes
        self.peak_comm = max(self.peak_comm, self.live_comm)

    def _reduce(self, u):
        for i in u.missing:                # parameters this backward did not reach count as 0
            s = u.layout.slots[i]
            u.flat_grad[s.offset:s.offset + s.numel].zero_()
        flat, u.flat_grad, u.ready = u.flat_grad, None, 0
        out = torch.empty(u.layout.shard_numel, dtype=flat.dtype, device=flat.device)
        work = self.comm.reduce_scatter(out, flat, async_op=True)

        def done(flat=flat):               # holds flat until the collective is over
            u.shard.add_reduced(out, self.comm.size)
            self.live_comm -= u.nbytes
        self.inflight.push(work, done)

    def _end_backward(self):
        for u in self.units:               # index order: the same sequence on every rank
            if u.flat_grad is not None:
                self._reduce(u)
            self._free(u)
        self._last_bwd = list(self._bwd)
        self._in_backward = False

    # ---- step --------------------------------------------------------------------------
    def finish_gradients(self):
        self.inflight.drain()

    def publish(self):
        """The next forward gathers from `local`: refresh it from the updated master (and
        drop a unit a forward without backward left gathered: its values are stale now)."""
        for u in self.units:
            self._free(u)
            if u.local.data_ptr() != u.shard.master.data_ptr():
                u.local.copy_(u.shard.master)

    def zero_grad(self):
        self.inflight.drain()
        for u in self.units:
            u.shard.grad = None

    def measured(self):
        elem = torch.empty((), dtype=self.param_dtype).element_size()
        params = sum(u.local.numel() * elem for u in self.units) + self.live_gathered
        grads = sum(u.shard.grad.numel() * u.shard.grad.element_size()
                    for u in self.units if u.shard.grad is not None)
        master = 0 if self.param_dtype == torch.float32 else sum(u.shard.master.numel() * 4 for u in self.units)
        return {"parameters": params, "gradients": grads, "master weights": master,
                "gathered buffers": self.peak_gathered, "comm buckets": self.peak_comm}
