"""ZeroOptimizer: one front end over the stage engines, the inner torch optimizer and clipping.

    dp group of 4 ranks (e.g. mesh.dp_group), AdamW, stage 3, bf16:
        zopt = ZeroOptimizer(model, torch.optim.AdamW, stage=3, group=dp_group,
                             mixed_precision=torch.bfloat16, clip_grad_norm=1.0, lr=1e-3)
        for batch in data:                      # each rank its own batch
            loss = model(batch).float().mean()  # inputs are cast to bf16 by a hook
            loss.backward()
            zopt.step()                         # returns the global grad norm (clipping on)
            zopt.zero_grad()

The inner optimizer (`optimizer_cls(param_groups, **optim_kwargs)`) sees one fp32
master tensor per flat buffer: this rank's shard. That is exact for element-wise
optimizers (SGD, Adam, AdamW, ...), not for ones that take per-tensor norms (LAMB,
Adafactor). `zopt.inner` is that optimizer (hand it to an LR scheduler).

Where optimizer_cls has a fused kernel (torch's Adam, AdamW, SGD, Adagrad) it runs fused
over the flat shards unless optim_kwargs chooses fused or foreach itself.

Param groups (a list of dicts) are supported for stages 1 and 2; stage 3 takes one group.
Parameters with requires_grad=False are left alone (replicated, never updated).
"""
import inspect

import torch
import torch.nn as nn

from ..clip import sum_over, tp_duplicates
from ..tensor.sp_grads import allreduce_bucket, check_sp_group, sequence_parallel_params
from .comm import Collectives
from .memory import MemoryPlan, optimizer_state_bytes, probe_state_bytes_per_element
from .stage12 import Stage12Engine
from .stage3 import Stage3Engine

# fp16 would need loss scaling and overflow skipping, which this wrapper does not do.
_MIXED = (torch.bfloat16,)


def _named_groups(model_or_params):
    """(module or None, [([(name, param)], group options)]) for the trainable parameters."""
    if isinstance(model_or_params, nn.Module):
        named = [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
        return model_or_params, [(named, {})]
    items = list(model_or_params)
    if not items:
        raise ValueError("ZeroOptimizer got an empty parameter list")
    if all(isinstance(g, dict) for g in items):
        groups, k = [], 0
        for g in items:
            if "params" not in g:
                raise ValueError("every param group dict needs a 'params' entry")
            ps = [p for p in g["params"] if p.requires_grad]
            groups.append(([(f"param.{k + i}", p) for i, p in enumerate(ps)],
                           {key: v for key, v in g.items() if key != "params"}))
            k += len(ps)
        return None, groups
    if not all(isinstance(p, torch.Tensor) for p in items):
        raise TypeError("model_or_params must be an nn.Module, an iterable of tensors or of param-group dicts")
    return None, [([(f"param.{i}", p) for i, p in enumerate(items) if p.requires_grad], {})]


def _device_of(groups):
    """The one device every trainable parameter is on (flat buffers are allocated there)."""
    devices = {p.device for named, _ in groups for _, p in named}
    if not devices:
        raise ValueError("ZeroOptimizer got no trainable parameters (all have requires_grad=False)")
    if len(devices) != 1:
        raise ValueError(f"ZeRO needs every trainable parameter on one device, got {sorted(map(str, devices))}")
    return devices.pop()


def _fused_by_default(optimizer_cls, optim_kwargs, device):
    """optim_kwargs with fused=True where optimizer_cls has a fused kernel that takes these
    options on this device (torch's Adam, AdamW, SGD, Adagrad), unless the caller chose
    fused or foreach. The inner optimizer sees a few large flat fp32 shards, the input a
    fused kernel is for: one pass over master, gradient and state per shard instead of
    one pass per arithmetic operation (on CPU torch's default is that per-operation loop)."""
    if "fused" in optim_kwargs or "foreach" in optim_kwargs:
        return optim_kwargs
    try:
        if "fused" not in inspect.signature(optimizer_cls).parameters:
            return optim_kwargs
    except (TypeError, ValueError):   # no introspectable signature
        return optim_kwargs
    fused = {**optim_kwargs, "fused": True}
    try:
        probe_state_bytes_per_element(optimizer_cls, fused, device)
    except (RuntimeError, ValueError, TypeError):   # no fused kernel for these options / device
        return optim_kwargs
    return fused


def _validate(stage, mixed_precision, bucket_mb, clip_grad_norm):
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
    if mixed_precision is not None and mixed_precision not in _MIXED:
        raise ValueError(f"mixed_precision must be None or torch.bfloat16, got {mixed_precision!r}")
    if not bucket_mb > 0:
        raise ValueError(f"bucket_mb must be > 0, got {bucket_mb!r}")
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"clip_grad_norm must be None or > 0, got {clip_grad_norm!r}")


class ZeroOptimizer:
    """Sharded data parallelism over `group` (None: one rank, nothing sharded).

    stage:           1 optimizer state, 2 + gradients, 3 + parameters (see stage12.py, stage3.py)
    group:           the dp group to shard over; None = one rank (nothing sharded, as
                     group=None means no parallelism in hcomm.parallel.tensor too);
                     dist.group.WORLD for every rank
    bucket_mb:       flat bucket size for stages 1/2 (stage 3 buckets by unit)
    overlap:         stage 2: reduce-scatter during backward; stage 3: prefetch the next unit
    mixed_precision: None (fp32 everywhere) or torch.bfloat16: parameters and
                     gradients in that dtype, fp32 master shard and optimizer state; floating
                     forward inputs of the module are cast to it
    clip_grad_norm:  clip by the global L2 norm over all shards (one all-reduce of a scalar)
    tp_group, pp_group: with clip_grad_norm, the tensor- and pipeline-parallel groups the
                     model is split across: the norm is then summed over them too, as
                     Megatron does, so every rank clips by the same, whole-model norm. A
                     parameter that is not tp-sharded (its module's partition_dims says
                     None, or has none) is the same on every tp rank and counts once.
                     tp_group also sums the partial gradients of sequence-parallel
                     replicated parameters over tp in step(), one bucket (sp_grads.py);
                     a sequence-parallel module with tp_group=None raises.
    units:           stage 3 only: tuple of module classes, each instance one gather unit
    check_control_flow: stage 3 only: raise ZeroControlFlowError on divergent modules
    sync_params:     broadcast rank 0's initial parameters (as DDP does)
    print_plan:      print the memory plan on group rank 0 before any step
    """

    def __init__(self, model_or_params, optimizer_cls, stage, group=None, bucket_mb=25.0, overlap=True,
                 mixed_precision=None, clip_grad_norm=None, tp_group=None, pp_group=None, units=None,
                 check_control_flow=True, sync_params=True, print_plan=True, **optim_kwargs):
        _validate(stage, mixed_precision, bucket_mb, clip_grad_norm)
        module, groups = _named_groups(model_or_params)
        if stage == 3 and module is None:
            raise TypeError("ZeRO stage 3 needs the nn.Module (it gathers parameters in module hooks)")
        if tp_group is not None and module is None:
            raise TypeError("tp_group needs the nn.Module: which parameters are tp-sharded is read from its "
                            "modules' partition_dims")
        if stage == 3 and len(groups) != 1:
            raise ValueError("ZeRO stage 3 takes a single param group")
        self.stage, self.module = stage, module
        self.comm = Collectives(group, _device_of(groups))
        self.param_dtype = mixed_precision or torch.float32
        self.clip_grad_norm = clip_grad_norm
        self.norm_groups = (tp_group, pp_group)
        self.tp_group = tp_group
        self.sp_names = frozenset(n for n, _ in sequence_parallel_params(module)) if module is not None else frozenset()
        if module is not None:
            check_sp_group(module, tp_group)
        self.norm_skip = tp_duplicates(module, [n for named, _ in groups for n, _ in named], tp_group)
        self.bucket_bytes = int(bucket_mb * 2 ** 20)
        self.psi = sum(p.numel() for named, _ in groups for _, p in named)
        self.param_names = [n for named, _ in groups for n, _ in named]   # input order
        self.optimizer_cls = optimizer_cls
        optim_kwargs = _fused_by_default(optimizer_cls, optim_kwargs, self.comm.device)
        self.state_bytes_per_element = probe_state_bytes_per_element(optimizer_cls, optim_kwargs, self.comm.device)
        if mixed_precision is not None and module is not None:
            module.register_forward_pre_hook(self._cast_inputs, with_kwargs=True, prepend=True)
        self.engine, group_of = self._build_engine(groups, units, overlap, check_control_flow, sync_params)
        # One fp32 master shard per flat buffer, in the param group its parameters came from.
        self.inner = optimizer_cls(
            [{"params": [s.master for s, g in zip(self.engine.shards, group_of) if g == gi], **opts}
             for gi, (_, opts) in enumerate(groups)], **optim_kwargs)
        if print_plan and self.comm.rank == 0:
            print(self.memory_plan().format(), flush=True)

    def _build_engine(self, groups, units, overlap, check_control_flow, sync_params):
        """(engine, param-group index of each of its shards)."""
        if self.stage == 3:
            engine = Stage3Engine(self.module, groups[0][0], self.comm, self.param_dtype, units, overlap,
                                  check_control_flow, sync_params)
            return engine, [0] * len(engine.shards)
        engine = Stage12Engine([named for named, _ in groups], self.comm, self.stage, self.bucket_bytes,
                               self.param_dtype, overlap, sync_params)
        return engine, [b.group_index for b in engine.buckets]

    @property
    def shards(self):
        return self.engine.shards

    @property
    def param_groups(self):
        return self.inner.param_groups

    def _cast_inputs(self, module, args, kwargs):
        def cast(t):
            return t.to(self.param_dtype) if torch.is_tensor(t) and t.is_floating_point() else t
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    # ---- the step --------------------------------------------------------------------------
    def step(self):
        """Finish the gradient reduction, clip, update the master shards, publish parameters.

        Returns the global gradient norm (before clipping) when clip_grad_norm is set.
        A flat buffer no backward reached is skipped (like a torch parameter whose .grad is
        None); a parameter without gradient inside a reached buffer counts as zero.
        """
        self.engine.finish_gradients()
        shards = self.engine.shards
        for s in shards:
            s.master.grad = s.master_grad()
        if self.sp_names:
            self._reduce_sequence_parallel(shards)
        norm = self._clip(shards) if self.clip_grad_norm is not None else None
        self.inner.step()
        for s in shards:
            s.master.grad = None   # the fp32 copy is transient under mixed precision
        self.engine.publish()
        return norm

    def _reduce_sequence_parallel(self, shards):
        """Sum the sequence-parallel replicated parameters' partial gradients over tp, in one
        bucket. Every tp rank has the same flat layouts (same modules, same shapes) and the
        same dp coordinate, so their pieces line up element for element."""
        views = [s.master.grad[pc.shard_lo:pc.shard_lo + pc.length]
                 for s in shards if s.master.grad is not None
                 for pc in s.layout.pieces(s.rank) if pc.slot.name in self.sp_names]
        allreduce_bucket(views, self.tp_group)

    def _clip(self, shards):
        # Padding elements are zero, so the shard sums add up to the true squared norm.
        sq = torch.zeros(1, dtype=torch.float64, device=self.comm.device)
        for s in shards:
            g = s.master.grad
            if g is None:
                continue
            if not self.norm_skip:
                sq += g.double().pow(2).sum()
                continue
            for piece in s.layout.pieces(s.rank):
                if piece.slot.name not in self.norm_skip:
                    sq += g[piece.shard_lo:piece.shard_lo + piece.length].double().pow(2).sum()
        total = sum_over(self.comm.all_reduce(sq), self.norm_groups).sqrt().item()
        coef = self.clip_grad_norm / (total + 1e-6)
        if coef < 1.0:
            for s in shards:
                if s.master.grad is not None:
                    s.master.grad.mul_(coef)
        return total

    def zero_grad(self, set_to_none=True):
        """Drop the accumulated gradients (the grad shards, and p.grad under stage 1)."""
        self.engine.zero_grad()

    # ---- memory ---------------------------------------------------------------------------
    def memory_plan(self):
        """Formulas beside the bytes of the real tensors on this rank (see memory.py)."""
        measured = self.engine.measured()
        measured["optimizer state"] = optimizer_state_bytes(self.inner, self.engine.shards)
        return MemoryPlan.build(self, measured)

    # ---- checkpoints (see checkpoint.py) ---------------------------------------------------
    def save_sharded(self, path):
        from .checkpoint import save_sharded
        save_sharded(self, path)

    def load_sharded(self, path):
        from .checkpoint import load_sharded
        load_sharded(self, path)

    def full_state_dict(self):
        from .checkpoint import full_state_dict
        return full_state_dict(self)
