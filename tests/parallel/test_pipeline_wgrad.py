"""wgrad.LinearGrads (the pipeline's B/W split for nn.Linear and the tensor-parallel linears)
against plain autograd, in-process.

The multi-rank equivalence with the unpipelined model (every schedule, zb-h1 included)
is tests/parallel/test_pipeline.py; here the odd cases of the split itself: a Linear
called twice, a weight tied to another module, no bias, 3-D inputs, parameters that are
not Linear weights, several micro-batches accumulating, a hook that needs autograd's own
accumulation, and an input changed in place before W; the column/row-parallel layers at
tp = 1 (with and without sequence parallelism), their weight used functionally, and two
recorders over one layer.
"""
import pytest
import torch
import torch.nn as nn

from hcomm.parallel.pipeline.wgrad import LinearGrads, fast_linears


class Stage(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(7, 5, dtype=torch.float64)
        self.b = nn.Linear(5, 5, bias=False, dtype=torch.float64)
        self.norm = nn.LayerNorm(5, dtype=torch.float64)
        self.emb = nn.Embedding(11, 5, dtype=torch.float64)
        self.tied = nn.Linear(5, 11, bias=False, dtype=torch.float64)
        self.tied.weight = self.emb.weight          # registered twice: autograd keeps it

    def forward(self, x, ids):
        h = torch.tanh(self.a(x)) + self.emb(ids)
        h = self.b(torch.relu(self.b(self.norm(h))))  # b called twice
        return self.tied(h)


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 7, dtype=torch.float64, generator=g, requires_grad=True)   # 3-D input
    ids = torch.randint(0, 11, (3, 4), generator=g)
    grad = torch.randn(3, 4, 11, dtype=torch.float64, generator=g)
    return x, ids, grad


def _reference(mbs):
    torch.manual_seed(0)
    ref = Stage()
    xgrads = []
    for x, ids, grad in mbs:
        x = x.detach().requires_grad_()
        ref(x, ids).backward(grad)
        xgrads.append(x.grad)
    return ref, xgrads


def test_fast_linears_skip_tied_weights():
    torch.manual_seed(0)
    stage = Stage()
    assert fast_linears(stage) == [stage.a, stage.b]


def test_split_matches_autograd_over_micro_batches():
    mbs = [_data(s) for s in range(3)]
    ref, ref_xgrads = _reference(mbs)
    torch.manual_seed(0)
    stage = Stage()
    lg = LinearGrads({0: stage})
    pending = []
    for x, ids, grad in mbs:
        x = x.detach().requires_grad_()
        out, calls = lg.forward(0, stage, (x, ids))
        assert [c.module for c in calls] == [stage.a, stage.b, stage.b]
        pending.append(lg.backward(0, (out,), [grad], (x, ids), calls))
        torch.testing.assert_close(x.grad, ref_xgrads[len(pending) - 1], rtol=0, atol=1e-12)
    assert stage.a.weight.grad is None     # B left the Linear weights to W ...
    assert stage.norm.weight.grad is not None   # ... and did everything else
    for p in pending:                      # W out of order (as zero-bubble schedules run it)
        lg.weight(p)
    for (name, got), want in zip(stage.named_parameters(), ref.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-12, atol=1e-12, msg=name)
        assert not got.grad.requires_grad, name   # W recorded no graph into .grad


def test_hooked_parameters_go_through_autograd():
    torch.manual_seed(0)
    stage = Stage()
    lg = LinearGrads({0: stage})
    seen = []
    stage.a.weight.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))
    assert not lg.usable(0)
    x, ids, grad = _data(0)
    out, calls = lg.forward(0, stage, (x, ids))
    assert calls is None                   # the runtime then runs autograd's own backward
    out.backward(grad)
    assert len(seen) == 1


def test_input_changed_before_w_is_refused():
    torch.manual_seed(0)
    stage = Stage()
    lg = LinearGrads({0: stage})
    x, ids, grad = _data(0)
    x = x.detach()
    out, calls = lg.forward(0, stage, (x, ids))
    pending = lg.backward(0, (out,), [grad], (x, ids), calls)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place between its forward and its weight gradient"):
        lg.weight(pending)


def test_calls_outside_the_runtime_are_not_recorded():
    torch.manual_seed(0)
    stage = Stage()
    lg = LinearGrads({0: stage})
    x, ids, _ = _data(0)
    stage(x, ids)                          # a user's own call: no capture, plain autograd
    assert lg._calls is None
    lg.close()
    out, calls = lg.forward(0, stage, (x, ids))
    assert calls == []                     # hooks removed: nothing recorded


class Functional(nn.Module):
    """A Linear called by keyword, and one whose weight is only used functionally."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6, dtype=torch.float64)
        self.side = nn.Linear(6, 6, dtype=torch.float64)

    def forward(self, x):
        h = self.a(input=x)
        return torch.nn.functional.linear(h, self.side.weight, self.side.bias)


def test_keyword_calls_and_uncalled_linears_keep_their_gradients():
    torch.manual_seed(0)
    ref, stage = Functional(), Functional()
    stage.load_state_dict(ref.state_dict())
    x = torch.randn(5, 6, dtype=torch.float64)
    grad = torch.randn(5, 6, dtype=torch.float64)
    ref(x).backward(grad)
    lg = LinearGrads({0: stage})
    out, calls = lg.forward(0, stage, (x,))
    assert [c.module for c in calls] == [stage.a]
    lg.weight(lg.backward(0, (out,), [grad], (x,), calls))
    for (name, got), want in zip(stage.named_parameters(), ref.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-12, atol=1e-12, msg=name)


def test_autocast_bf16_matches_autograd():
    torch.manual_seed(0)
    ref, stage = nn.Linear(8, 4), nn.Linear(8, 4)
    stage.load_state_dict(ref.state_dict())
    x, grad = torch.randn(6, 8), torch.randn(6, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref(x).backward(grad)
    lg = LinearGrads({0: stage})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, calls = lg.forward(0, stage, (x,))
    lg.weight(lg.backward(0, (out,), [grad], (x,), calls))
    assert stage.weight.grad.dtype == torch.float32
    torch.testing.assert_close(stage.weight.grad, ref.weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(stage.bias.grad, ref.bias.grad, rtol=0, atol=0)


class AlsoFunctional(nn.Module):
    """Linear `a` is called, and its weight is also used functionally in the same forward."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)

    def forward(self, x):
        return self.a(x) + nn.functional.linear(x, self.a.weight)


@pytest.mark.parametrize("autocast", [False, True])
def test_a_weight_also_used_functionally_is_refused(autocast):
    stage = AlsoFunctional()
    x, grad = torch.randn(4, 6), torch.randn(4, 6)
    lg = LinearGrads({0: stage})
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, calls = lg.forward(0, stage, (x,))
    with pytest.raises(RuntimeError, match="used 2 times .* called 1 times"):
        lg.backward(0, (out,), [grad.to(out.dtype)], (x,), calls)


def test_a_call_the_runtime_did_not_record_is_refused():
    # the Stage tests above call a Linear twice inside F (both recorded: accepted); here the
    # second call happens after F, so W would know of one call and miss the other's gradient
    stage = nn.Sequential(nn.Linear(6, 6))
    x, grad = torch.randn(4, 6), torch.randn(4, 6)
    lg = LinearGrads({0: stage})
    out, calls = lg.forward(0, stage, (x,))
    out2 = stage[0](out)
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match="used 2 times"):
        lg.backward(0, (out2,), [grad], (x,), calls)


class TPStage(nn.Module):
    """The GPT's MLP shape from tensor-parallel layers at tp = 1 (group None: one rank, the
    tp copy / gather / reduce are identities); the multi-rank cases are test_pipeline.py's."""

    def __init__(self, sequence_parallel):
        super().__init__()
        from hcomm.parallel.tensor.layers import ColumnParallelLinear, RowParallelLinear
        kw = dict(sequence_parallel=sequence_parallel, dtype=torch.float64)
        self.fc1 = ColumnParallelLinear(7, 9, seed=1, **kw)
        self.fc2 = RowParallelLinear(9, 7, input_is_parallel=True, seed=2, **kw)
        self.head = ColumnParallelLinear(7, 5, bias=False, seed=3, **kw)

    def forward(self, x):
        h = x + self.fc2(torch.tanh(self.fc1(x)))
        return self.head(self.fc2(torch.tanh(self.fc1(h))))   # fc1, fc2 called twice


@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_tensor_parallel_layers_are_split(sequence_parallel):
    ref, stage = TPStage(sequence_parallel), TPStage(sequence_parallel)
    g = torch.Generator().manual_seed(5)
    mbs = [(torch.randn(2, 3, 7, dtype=torch.float64, generator=g),
            torch.randn(2, 3, 5, dtype=torch.float64, generator=g)) for _ in range(3)]
    for x, grad in mbs:
        ref(x).backward(grad)
    lg = LinearGrads({0: stage})
    assert fast_linears(stage) == [stage.fc1, stage.fc2, stage.head]
    pending = []
    for x, grad in mbs:
        x = x.clone().requires_grad_()
        out, calls = lg.forward(0, stage, (x,))
        assert [c.module for c in calls] == [stage.fc1, stage.fc2, stage.fc1, stage.fc2, stage.head]
        pending.append(lg.backward(0, (out,), [grad], (x,), calls))
    # B left the weights (and the column layer's bias, inside its F.linear) to W; the row
    # layer's bias is added after the tp reduce, so autograd computed it in B
    assert stage.fc1.weight.grad is None and stage.fc1.bias.grad is None and stage.fc2.weight.grad is None
    torch.testing.assert_close(stage.fc2.bias.grad, ref.fc2.bias.grad, rtol=1e-12, atol=1e-12)
    for p in reversed(pending):
        lg.weight(p)
    for (name, got), want in zip(stage.named_parameters(), ref.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-12, atol=1e-12, msg=name)
        assert not got.grad.requires_grad, name   # W recorded no graph into .grad
    lg.close()
    assert stage.fc1.linear_recorder is None


def test_one_f_one_b_leaves_the_tensor_parallel_layers_to_autograd():
    """Only a schedule that places W apart splits the tp layers (runtime.py): under 1F1B
    the split measured up to 16 % more backward CPU and moves nothing."""
    from hcomm.parallel.pipeline import PipelineRuntime, build_schedule

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.tp, self.lin = TPStage(False), nn.Linear(5, 5, dtype=torch.float64)

        def forward(self, x):
            return self.lin(self.tp(x))

    assert fast_linears(TPStage(False), tp_layers=False) == []
    for name, split in (("1f1b", False), ("zb-h1", True)):
        stage = Plain()
        rt = PipelineRuntime({0: stage}, build_schedule(name, 1, 2), lambda y, t: y.sum(), pp_rank=0,
                             pp_ranks=[0], verbose=False)
        want = [stage.tp.fc1, stage.tp.fc2, stage.tp.head, stage.lin] if split else [stage.lin]
        assert rt._wgrad.linears[0] == want, name
        rt._wgrad.close()


def test_tensor_parallel_weight_also_used_functionally_is_refused():
    stage = TPStage(False)
    x = torch.randn(4, 7, dtype=torch.float64)
    lg = LinearGrads({0: stage})
    out, calls = lg.forward(0, stage, (x,))
    out = out.sum() + stage.fc1.weight.sum()
    with pytest.raises(RuntimeError, match="used 3 times .* called 2 times"):
        lg.backward(0, (out,), None, (x,), calls)


def test_a_newer_recorder_takes_the_layers_until_closed_and_the_older_falls_back_to_autograd():
    ref, stage = TPStage(False), TPStage(False)
    x, grad = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    ref(x).backward(grad)
    old, new = LinearGrads({0: stage}), LinearGrads({0: stage})
    out, calls = old.forward(0, stage, (x,))
    assert calls == []                     # the layers report to `new` now
    old.weight(old.backward(0, (out,), [grad], (x,), calls))
    for (name, got), want in zip(stage.named_parameters(), ref.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-12, atol=1e-12, msg=name)
    new.close()                            # gives the layers back to `old`
    assert stage.fc1.linear_recorder == old._record
    stage.zero_grad(set_to_none=True)
    out, calls = old.forward(0, stage, (x,))
    assert [c.module for c in calls] == [stage.fc1, stage.fc2, stage.fc1, stage.fc2, stage.head]
    old.weight(old.backward(0, (out,), [grad], (x,), calls))
    for (name, got), want in zip(stage.named_parameters(), ref.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-12, atol=1e-12, msg=name)
    old.close()
    assert stage.fc1.linear_recorder is None
