"""Weight gradients of a stage's linear layers, computed apart from autograd's backward.

Why. With micro-batches of a few rows, a Linear's weight gradient is a thin GEMM whose
output is as large as the weight: autograd computes dW = g^T x into a fresh tensor and
AccumulateGrad then adds it into .grad, so every micro-batch writes, reads and writes
the weight-sized gradient again (3 passes over 4 MiB for a 1024 x 1024 fp32 layer, the
arithmetic itself being 16 MFLOP).  Here the backward of an F runs autograd for the
input gradients and every other parameter only, and hands back each Linear's (input x,
output gradient g); the weight gradient is then one `weight.grad.addmm_(g^T, x)`: a
single read-modify-write of .grad, no temporary (measured on this machine, 4 x
Linear(1024) with 8-row micro-batches: the stage's backward 37 -> 21 ms of CPU time per
8 micro-batches, bit-identical gradients). The win shrinks as micro-batches widen: on a
GPT block (hidden 256, one thread, 8 micro-batches) B + W took 0.88-0.91x of autograd's
backward at 8 tokens a micro-batch, but 1.03-1.16x at 256, where the GEMMs dominate: the
runtime splits the tensor-parallel layers only for schedules with W actions (tp_layers).

The same split is what a zero-bubble schedule needs: B = autograd (input gradients, on
the critical path), W = the addmm_ (nobody waits for it).  B frees the stage's autograd
graph; what W keeps until it runs is x and g of each Linear call, nothing else.

Which layers: modules whose type is exactly nn.Linear, ColumnParallelLinear or
RowParallelLinear (parallel/tensor/layers.py), whose weight requires grad and whose
parameters are registered in no other module of the stage (a weight tied elsewhere also
gets gradient along a path this split would cut).  What is recorded is the F.linear call
y = x W^T (+ b) itself, so dW = g^T x with x and g local to this rank in all three:
nn.Linear's call is the module (a forward hook sees it); the tp layers report their
call through layers._recorded_linear to the recorder installed here.  For a column-
parallel layer x is the input after the tp copy or the sequence-parallel gather; for a
row-parallel layer g is the gradient of the partial product before the tp allreduce /
reduce-scatter (under sequence parallelism autograd's all-gather of the gradient has
already run when B hands it over).  W computes the parameters of the call: weight and
bias for nn.Linear and the column-parallel layer (db = sum g), the weight only for the
row-parallel one, whose bias is added after the reduce and stays with autograd.
A layer that an F does not call (its weight perhaps used functionally) is left to
autograd for that F.  A weight used both by its layer's call and functionally elsewhere
in the same forward cannot be seen in the module tree; B sees it in the graph (more uses
of the weight than recorded calls, see _check_uses) and raises rather than drop the
gradient of the other use: pass fast_linear_grads=False to PipelineRuntime for such a
model.  Everything else (LayerNorm, embeddings, a weight shared with another module)
goes through autograd in B, as before.  Under autocast W multiplies in the gradient's
dtype, as autograd does (bit-identical in the tests).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.autograd.graph import get_gradient_edge

from ..tensor.layers import ColumnParallelLinear, RowParallelLinear

# the layers split here; the tp ones report their F.linear call to `linear_recorder`
_TP_LINEARS = (ColumnParallelLinear, RowParallelLinear)


@dataclass
class LinearCall:
    """One F.linear call of a fast layer during an F: its input, and where its output's gradient arrives."""
    module: nn.Module
    x: torch.Tensor
    edge: object            # GradientEdge of the output
    version: int            # x._version when recorded: W refuses an input changed in place


def fast_linears(stage: nn.Module, tp_layers: bool = True) -> List[nn.Module]:
    """The linear layers of stage whose weight gradients this module computes (see above);
    tp_layers=False: the plain nn.Linear layers only."""
    owners: Dict[int, int] = {}
    for m in stage.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return [m for m in stage.modules()
            if type(m) in ((nn.Linear,) + _TP_LINEARS if tp_layers else (nn.Linear,)) and m.weight.requires_grad
            and all(owners[id(p)] == 1 for p in m.parameters(recurse=False))]


def split_params(module: nn.Module) -> List[nn.Parameter]:
    """The parameters of a fast layer that W computes: those its F.linear call takes."""
    bias = None if type(module) is RowParallelLinear else module.bias   # Row adds it after the reduce
    return [p for p in (module.weight, bias) if p is not None and p.requires_grad]


class LinearGrads:
    """Records the fast Linear calls of the F actions of one runtime, and runs B and W."""

    def __init__(self, stages: Dict[int, nn.Module], tp_layers: bool = True):
        self.linears = {s: fast_linears(m, tp_layers) for s, m in stages.items()}
        fast = {id(p) for lins in self.linears.values() for lin in lins for p in split_params(lin)}
        # parameters autograd still handles in B, per stage
        self.others = {s: [p for p in m.parameters() if p.requires_grad and id(p) not in fast]
                       for s, m in stages.items()}
        self._calls: Optional[List[LinearCall]] = None   # set only while an F runs
        tp_lins = [lin for lins in self.linears.values() for lin in lins if type(lin) in _TP_LINEARS]
        # A layer reports to one recorder: the newest LinearGrads over it (runtimes are not
        # closed; the planner's profile opens one briefly). An older one then records no call
        # of that layer, and its B leaves the layer to autograd, as for any layer an F did
        # not call: slower, still exact. close() gives the layer back to the one it replaced.
        self._replaced = [(lin, lin.linear_recorder) for lin in tp_lins]
        for lin in tp_lins:
            lin.linear_recorder = self._record
        self._handles = [lin.register_forward_hook(self._record_hook, with_kwargs=True)
                         for lins in self.linears.values() for lin in lins if type(lin) is nn.Linear]

    def close(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        for lin, previous in self._replaced:
            if lin.linear_recorder == self._record:
                lin.linear_recorder = previous
        self._replaced = []

    def _record_hook(self, module, args, kwargs, out):
        self._record(module, args[0] if args else kwargs["input"], out)

    def _record(self, module: nn.Module, x: torch.Tensor, y):
        # Only inside this runtime's F (not a user's own call, not a recomputation in B).
        if self._calls is None or not torch.is_grad_enabled() or not isinstance(y, torch.Tensor):
            return
        if y.grad_fn is None:
            return
        self._calls.append(LinearCall(module, x, get_gradient_edge(y), x._version))

    def usable(self, stage: int) -> bool:
        """Whether B/W may bypass autograd for this stage's Linears now: not when a hook
        waits on their gradients (ZeRO's or DDP's post-accumulate hooks, tensor hooks),
        which only autograd's own accumulation runs."""
        return bool(self.linears[stage]) and not any(
            p._post_accumulate_grad_hooks or p._backward_hooks
            for lin in self.linears[stage] for p in split_params(lin))

    def forward(self, stage: int, stage_module: nn.Module, args: tuple):
        """Run the stage; returns (output, the fast Linear calls it made), the calls None
        where the stage runs its backward through autograd alone (see usable())."""
        if not self.usable(stage):
            return stage_module(*args), None
        self._calls = []
        try:
            out = stage_module(*args)
            return out, self._calls
        finally:
            self._calls = None

    def backward(self, stage: int, outs: Sequence[torch.Tensor], grads, args: tuple,
                 calls: List[LinearCall]) -> List[tuple]:
        """B: input gradients into args[i].grad, other parameters' gradients into .grad,
        and (module, x, g) for each recorded Linear call, to hand to weight(). Frees the graph."""
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        # a fast Linear this F never called may still have its weight used (functionally):
        # autograd handles those this time
        called = {id(c.module) for c in calls}
        others = self.others[stage] + [p for lin in self.linears[stage] if id(lin) not in called
                                       for p in split_params(lin)]
        targets = inputs + others + [c.edge for c in calls]
        _check_uses(outs, calls)
        if not outs or not targets:
            return []
        res = torch.autograd.grad(list(outs), targets, grads, allow_unused=True)
        for t, g in zip(inputs + others, res):
            if g is not None:
                _accumulate(t, g)
        tail = res[len(inputs) + len(others):]
        return [(c.module, c.x, g, c.version) for c, g in zip(calls, tail) if g is not None]

    @staticmethod
    @torch.no_grad()
    def weight(pending: List[tuple]):
        """W: accumulate each recorded call's weight (and bias) gradient in place.

        Without grad mode: x usually requires grad (an activation), and the GEMM would
        otherwise record a graph into .grad, keeping x and g alive with it."""
        for module, x, g, version in pending:
            if x._version != version:
                raise RuntimeError(f"the input of {module} was modified in place between its forward and its "
                                   f"weight gradient; pass fast_linear_grads=False to PipelineRuntime")
            weight, *bias = split_params(module)
            g2 = g.reshape(-1, weight.shape[0])     # this rank's shard: [out / tp, in] or [out, in / tp]
            # under autocast the layer ran on x cast to the gradient's dtype, as autograd saved it
            x2 = x.reshape(-1, weight.shape[1]).to(g2.dtype)
            _accumulate_mm(weight, g2, x2)
            for b in bias:
                _accumulate(b, g2.sum(0).to(b.dtype))


def _check_uses(outs: Sequence[torch.Tensor], calls: List[LinearCall]):
    """Refuse when a recorded Linear's parameter is used in the graph more often than the
    Linear was called: W computes only the calls' share, so the other use's gradient
    would be lost. A use is an edge into the parameter's AccumulateGrad node, or into a
    cast of it (autocast caches one cast per parameter, shared by every use)."""
    calls_of: Dict[int, int] = {}
    for c in calls:
        calls_of[id(c.module)] = calls_of.get(id(c.module), 0) + 1
    uses: Dict[object, int] = {}
    casts: Dict[object, list] = {}    # AccumulateGrad node -> the cast nodes feeding on it
    seen, todo = set(), [t.grad_fn for t in outs if t.grad_fn is not None]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        is_cast = type(node).__name__.startswith("ToCopyBackward")
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            uses[nxt] = uses.get(nxt, 0) + 1
            if is_cast:
                casts.setdefault(nxt, []).append(node)
            todo.append(nxt)
    for c in {id(c.module): c for c in calls}.values():
        for p in split_params(c.module):
            acc = get_gradient_edge(p).node
            via_cast = casts.get(acc, [])
            n_uses = uses.get(acc, 0) - len(via_cast) + sum(uses.get(n, 0) for n in via_cast)
            if n_uses > calls_of[id(c.module)]:
                raise RuntimeError(f"{c.module}'s parameter is used {n_uses} times in this stage's forward but the "
                                   f"module was called {calls_of[id(c.module)]} times (a functional use of its "
                                   f"weight?): its gradient would be incomplete; pass fast_linear_grads=False "
                                   f"to PipelineRuntime")


def _accumulate(t: torch.Tensor, g: torch.Tensor):
    if t.grad is None:
        t.grad = g
    else:
        t.grad += g


def _accumulate_mm(weight: nn.Parameter, g2: torch.Tensor, x2: torch.Tensor):
    """weight.grad += g2^T x2 in one GEMM (beta = 1) when the dtypes allow it."""
    if weight.grad is None:
        weight.grad = g2.t().mm(x2).to(weight.dtype)
    elif weight.grad.dtype == g2.dtype == x2.dtype and weight.grad.is_contiguous():
        weight.grad.addmm_(g2.t(), x2)
    else:   # e.g. a bf16 forward under autocast into fp32 gradients: as autograd would
        weight.grad += g2.t().mm(x2).to(weight.grad.dtype)
