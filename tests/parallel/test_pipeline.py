"""Pipelined training step against the unpipelined model, on 2, 3 and 4 hcomm ranks.

Each spawned group runs many (schedule, m) configurations, the failure cases and (on 4
ranks) the dp x pp and tp x pp compositions, so process start-up is paid three times; the
GPT under zb-h1 (tp 2 x pp 2) and zb-v (pp 2 x vpp 2), with W for its tensor-parallel layers.
Models are float64 and every boundary carries three tensors (hidden, skip, int64 ids),
so loss and gradients must match the reference to round-off.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import run_torch

D, K, V = 5, 3, 7        # hidden width, outputs, id vocabulary (odd on purpose)
L = 24                   # layers; splits evenly into 2, 3, 4, 6 and 8 stages
TOL = dict(rtol=1e-9, atol=1e-12)

# (schedule, m, v) per pipeline size: every schedule, m = 1 and 8, odd m.  zb-v cuts the
# model into 2p chunks placed in a V (its last stage, the loss, on pp rank 0).
CONFIGS = {
    2: [("gpipe", 1, 1), ("gpipe", 5, 1), ("1f1b", 1, 1), ("1f1b", 3, 1), ("1f1b", 8, 1),
        ("interleaved", 2, 2), ("interleaved", 6, 2), ("interleaved", 4, 3), ("zb-h1", 1, 1), ("zb-h1", 5, 1),
        ("zb-v", 2, 2), ("zb-v", 5, 2)],
    3: [("gpipe", 7, 1), ("1f1b", 1, 1), ("1f1b", 2, 1), ("1f1b", 5, 1), ("1f1b", 8, 1),
        ("interleaved", 3, 2), ("interleaved", 6, 2), ("zb-h1", 2, 1), ("zb-h1", 7, 1), ("zb-v", 4, 2)],
    4: [("gpipe", 3, 1), ("1f1b", 1, 1), ("1f1b", 7, 1), ("1f1b", 8, 1),
        ("interleaved", 4, 2), ("interleaved", 8, 2), ("zb-h1", 8, 1), ("zb-v", 5, 2), ("zb-v", 8, 2)],
}


class In(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D, dtype=torch.float64)

    def forward(self, x, ids):
        return torch.tanh(self.lin(x)), x, ids


class Block(nn.Module):
    """(h, skip, ids) -> (h', h, ids): three tensors, one of them int64, cross every cut."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D, dtype=torch.float64)
        self.emb = nn.Embedding(V, D, dtype=torch.float64)

    def forward(self, h, skip, ids):
        return torch.tanh(self.lin(h) + self.emb(ids)) + 0.5 * skip, h, ids


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, K, dtype=torch.float64)

    def forward(self, h, skip, ids):
        return self.lin(h + skip)


class Bomb(nn.Module):
    """Wraps a stage; raises in forward or backward of one micro-batch while armed."""

    def __init__(self, inner, where, mb):
        super().__init__()
        self.inner, self.where, self.mb, self.calls, self.armed = inner, where, mb, 0, True

    def forward(self, *args):
        hit = self.armed and self.calls == self.mb
        self.calls += 1
        if hit and self.where == "forward":
            raise RuntimeError(f"bomb in forward of mb {self.mb}")
        out = self.inner(*args)
        return (_RaiseInBackward.apply(out[0]),) + out[1:] if hit else out


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("bomb in backward")


def _layers(seed=0):
    torch.manual_seed(seed)
    return [In()] + [Block() for _ in range(L - 2)] + [Head()]


def _data(b, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, D, dtype=torch.float64, generator=g)
    ids = torch.randint(0, V, (b,), generator=g)
    return x, ids, torch.randn(b, K, dtype=torch.float64, generator=g)


def _reference(x, ids, y):
    from hcomm.parallel.pipeline.stage import StageChain

    ref = _layers()
    loss = F.mse_loss(StageChain(ref)(x, ids), y)
    loss.backward()
    return ref, loss.item()


def _check_grads(mine, ref, sched, pp_rank, scale=1.0):
    """Every parameter of this rank's stages equals the reference gradient; others untouched."""
    per = L // sched.num_stages
    local = {i for s in sched.stages_of(pp_rank) for i in range(s * per, (s + 1) * per)}
    for i, (a, b) in enumerate(zip(mine, ref)):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            if i in local:
                assert pa.grad is not None, f"layer {i} {name}: no gradient"
                torch.testing.assert_close(pa.grad, scale * pb.grad, **TOL, msg=lambda s: f"layer {i} {name}: {s}")
            else:
                assert pa.grad is None, f"layer {i} {name} is not on pp rank {pp_rank} but has a gradient"


def _runtime(mine, sched, pp_rank, pp_ranks, **kw):
    from hcomm.parallel.pipeline.runtime import PipelineRuntime
    from hcomm.parallel.pipeline.stage import split_layers, stages_for_rank

    stages = stages_for_rank(split_layers(mine, sched.num_stages), pp_rank, sched)
    return PipelineRuntime(stages, sched, F.mse_loss, pp_rank=pp_rank, pp_ranks=pp_ranks, **kw)


def _equivalence(pp_rank, p, name, m, v, steps):
    from hcomm.parallel.pipeline import build_schedule

    sched = build_schedule(name, p, m, v)
    x, ids, y = _data(3 * m, seed=m)
    ref, ref_loss = _reference(x, ids, y)
    mine = _layers()
    rt = _runtime(mine, sched, pp_rank, list(range(p)))
    for _ in range(steps):   # a second step reuses the runtime; gradients accumulate
        last = sched.stage_rank(sched.num_stages - 1)   # p - 1, or 0 under zb-v's V
        loss = rt.step((x, ids) if pp_rank == 0 else None, y if pp_rank == last else None)
        assert loss == pytest.approx(ref_loss, rel=1e-12), (name, m, v, loss, ref_loss)
    _check_grads(mine, ref, sched, pp_rank, scale=steps)
    return rt.stats.peak_stashed


def _failure(pp_rank, p, where):
    """A stage that raises makes every rank raise; the next step runs normally."""
    from hcomm.parallel.pipeline import build_schedule
    from hcomm.parallel.pipeline.runtime import PipelineError

    sched = build_schedule("1f1b", p, 4)
    culprit = {"forward": p // 2, "backward": 0, "loss": p - 1}[where]
    x, ids, y = _data(12)
    mine = _layers()
    rt = _runtime(mine, sched, pp_rank, list(range(p)))
    bomb = None
    if pp_rank == culprit and where != "loss":
        # mb 0: the failure travels before any shape is known; mb 2: after (zero fillers)
        bomb = rt.stages[pp_rank] = Bomb(rt.stages[pp_rank], where, mb=0 if where == "forward" else 2)
    calls = []
    if where == "loss" and pp_rank == culprit:
        def bad_loss(out, target):
            calls.append(1)
            if len(calls) == 3:
                raise ValueError("bomb in loss")
            return F.mse_loss(out, target)
        rt.loss_fn = bad_loss
    with pytest.raises(PipelineError, match=rf"failed on global rank\(s\) \[{culprit}\]") as err:
        rt.step((x, ids), y)
    if pp_rank == culprit:
        assert "bomb in" in str(err.value) and "bomb in" in str(err.value.__cause__)
    if bomb is not None:
        bomb.armed = False
    rt.loss_fn = F.mse_loss
    for prm in rt.parameters():
        prm.grad = None
    ref, ref_loss = _reference(x, ids, y)
    assert rt.step((x, ids), y) == pytest.approx(ref_loss, rel=1e-12)
    _check_grads(mine, ref, sched, pp_rank)
    return str(err.value)


def _changing_batch(pp_rank, p):
    """Steps reuse the previous step's boundary shapes as guesses: a batch size that changes
    between steps (RESHAPED), also in a step that fails, still gives the reference result."""
    from hcomm.parallel.pipeline import build_schedule
    from hcomm.parallel.pipeline.runtime import PipelineError

    m = p
    sched = build_schedule("interleaved", p, m, 2)
    mine = _layers()
    rt = _runtime(mine, sched, pp_rank, list(range(p)), verbose=False)
    culprit = p // 2
    bomb = None
    if pp_rank == culprit:
        bomb = rt.stages[culprit] = Bomb(rt.stages[culprit], "forward", mb=0)
        bomb.armed = False
    # (batch size, stage `culprit` raises in forward of mb 0): guesses confirmed, then
    # reshaped, failed on old guesses with new shapes upstream, reshaped after the failure
    for b, fail in ((3 * m, False), (3 * m, False), (2 * m, False), (3 * m, True), (3 * m, False), (m, False)):
        x, ids, y = _data(b, seed=b)
        for prm in rt.parameters():
            prm.grad = None
        if bomb is not None:
            bomb.armed, bomb.calls = fail, 0
        if fail:
            with pytest.raises(PipelineError, match=rf"failed on global rank\(s\) \[{culprit}\]"):
                rt.step((x, ids), y)
            continue
        ref, ref_loss = _reference(x, ids, y)
        assert rt.step((x, ids), y) == pytest.approx(ref_loss, rel=1e-12), b
        _check_grads(mine, ref, sched, pp_rank)
    return "batch size changes ok"


def _mismatch(pp_rank, p):
    """Ranks that built different schedules are stopped at the first step, all of them."""
    from hcomm.parallel.pipeline import build_schedule
    from hcomm.parallel.pipeline.runtime import PipelineError

    sched = build_schedule("1f1b", p, 3 if pp_rank == 0 else 4)
    rt = _runtime(_layers(), sched, pp_rank, list(range(p)), verbose=False)
    x, ids, y = _data(12)
    with pytest.raises(PipelineError, match=r"pipeline ranks disagree on the schedule: global rank \d has"):
        rt.step((x, ids), y)
    return "schedule mismatch raised"


def _pipeline_group(rank, world_size, failures):
    peaks = {cfg: _equivalence(rank, world_size, *cfg, steps=2 if i == 0 else 1)
             for i, cfg in enumerate(CONFIGS[world_size])}
    errors = {where: _failure(rank, world_size, where) for where in failures if where != "mismatch"}
    errors["changing batch"] = _changing_batch(rank, world_size)
    if "mismatch" in failures:
        errors["mismatch"] = _mismatch(rank, world_size)
    return peaks, errors


def _check_peaks(results, p):
    for (name, m, v), _ in results[0][0].items():
        peaks = [r[0][(name, m, v)] for r in results]
        if name == "1f1b":   # measured by the runtime: within p micro-batches, p - r on rank r
            assert peaks == [min(p - r, m) for r in range(p)], (name, m, peaks)
        if name == "gpipe":
            assert peaks == [m] * p
        if name in ("zb-h1", "zb-v"):   # graphs held between F and W, as the checker predicted
            from hcomm.parallel.pipeline import build_schedule, check_schedule
            assert peaks == check_schedule(build_schedule(name, p, m, v)).peak_in_flight, (name, m, peaks)


@pytest.mark.parametrize("p, failures", [(2, ("forward", "backward", "mismatch")), (3, ("forward", "loss"))])
def test_pipeline_matches_unpipelined_and_failures_reach_every_rank(p, failures):
    results = run_torch(_pipeline_group, p, args=(failures,))
    _check_peaks(results, p)
    for where in failures:
        want = "schedule mismatch raised" if where == "mismatch" else "failed on global rank(s)"
        assert all(want in r[1][where] for r in results)
    assert all(r[1]["changing batch"] == "batch size changes ok" for r in results)


# ------------------------------------------------------- composition, 4 ranks

def _dp_pp(rank):
    """dp=2 x pp=2: each replica pipelines half the batch; averaged grads equal the full batch's."""
    from hcomm.parallel.mesh import ParallelConfig, build_mesh
    from hcomm.parallel.pipeline import build_schedule
    from hcomm.parallel.pipeline.runtime import PipelineRuntime
    from hcomm.parallel.pipeline.stage import split_layers, stages_for_rank

    mesh = build_mesh(ParallelConfig(dp=2, pp=2))
    sched = build_schedule("1f1b", 2, 3)
    x, ids, y = _data(18, seed=7)
    ref, _ = _reference(x, ids, y)
    half = slice(9 * mesh.dp_rank, 9 * (mesh.dp_rank + 1))
    mine = _layers()
    stages = stages_for_rank(split_layers(mine, 2), mesh.pp_rank, sched)
    rt = PipelineRuntime.from_mesh(mesh, stages, sched, F.mse_loss)
    loss = rt.step((x[half], ids[half]), y[half])
    from hcomm.parallel.pipeline.stage import StageChain
    with torch.no_grad():
        assert loss == pytest.approx(F.mse_loss(StageChain(_layers())(x[half], ids[half]), y[half]).item(), rel=1e-12)
    _check_grads(mine, ref, sched, mesh.pp_rank)


def _tp_pp(rank):
    """tp=2 x pp=2 on the small GPT: stage 0 = embedding + block, stage 1 = block + head."""
    from hcomm.parallel.mesh import ParallelConfig, build_mesh
    from hcomm.parallel.models import GPT, GPTConfig, gpt_loss
    from hcomm.parallel.pipeline import build_schedule
    from hcomm.parallel.pipeline.runtime import PipelineRuntime
    from hcomm.parallel.pipeline.stage import split_layers, stages_for_rank
    from hcomm.parallel.tensor.layers import shard_state_dict

    torch.set_default_dtype(torch.float64)
    mesh = build_mesh(ParallelConfig(dp=1, tp=2, pp=2))
    cfg = GPTConfig(vocab_size=36, seq_len=12, hidden=20, heads=4, n_layers=2, ffn_hidden=28, init_std=0.2)
    g = torch.Generator().manual_seed(3)
    ids, targets = torch.randint(0, 36, (6, 12), generator=g), torch.randint(0, 36, (6, 12), generator=g)
    dense = GPT(cfg, seed=11)
    ref_loss = dense(ids, targets)
    ref_loss.backward()
    model = GPT(cfg, group=mesh.tp_group, seed=11)
    sched = build_schedule("1f1b", 2, 3)
    stages = stages_for_rank(split_layers(model.layers, 2), mesh.pp_rank, sched)
    rt = PipelineRuntime.from_mesh(mesh, stages, sched, lambda out, t: gpt_loss(out, t, mesh.tp_group))
    assert rt.step(ids, targets) == pytest.approx(ref_loss.item(), rel=1e-10)
    want = shard_state_dict(model, {n: p.grad for n, p in dense.named_parameters()}, mesh.tp_group)
    local = {f"layers.{i}." for i in (range(0, 2) if mesh.pp_rank == 0 else range(2, 4))}
    for name, prm in model.named_parameters():
        if any(name.startswith(pre) for pre in local):
            torch.testing.assert_close(prm.grad, want[name], rtol=1e-8, atol=1e-10, msg=lambda s: f"{name}: {s}")
        else:
            assert prm.grad is None, name
    _clip_like_dense(model, dense, mesh, local)
    torch.set_default_dtype(torch.float32)


def _clip_like_dense(model, dense, mesh, local):
    """hcomm.parallel.clip_grad_norm_ over tp x pp: the dense model's norm on every rank, and
    the clipped gradients equal the dense model's clipped by torch."""
    from hcomm.parallel.clip import clip_grad_norm_
    from hcomm.parallel.tensor.layers import shard_state_dict

    max_norm = 0.3 * torch.nn.utils.get_total_norm([p.grad for p in dense.parameters()]).item()
    want_norm = torch.nn.utils.clip_grad_norm_(dense.parameters(), max_norm).item()
    got_norm = clip_grad_norm_(model, max_norm, tp_group=mesh.tp_group, pp_group=mesh.pp_group)
    assert got_norm == pytest.approx(want_norm, rel=1e-10), (got_norm, want_norm)
    want = shard_state_dict(model, {n: p.grad for n, p in dense.named_parameters()}, mesh.tp_group)
    for name, prm in model.named_parameters():
        if any(name.startswith(pre) for pre in local):
            torch.testing.assert_close(prm.grad, want[name], rtol=1e-8, atol=1e-10, msg=lambda s: f"{name}: {s}")


def _zero_pp(rank, stage, clip=False):
    """dp=2 x pp=2 with ZeRO-1/2 reducing the gradients: one SGD step equals the full batch's.
    With clip: clipping over the pp group too, at a third of the whole model's gradient norm,
    so every stage scales by the same factor as the single-process reference."""
    from hcomm.parallel.mesh import ParallelConfig, build_mesh
    from hcomm.parallel.pipeline import build_schedule
    from hcomm.parallel.pipeline.runtime import PipelineRuntime
    from hcomm.parallel.pipeline.stage import split_layers, stages_for_rank
    from hcomm.parallel.zero import ZeroOptimizer

    mesh = build_mesh(ParallelConfig(dp=2, pp=2, zero_stage=stage))
    sched = build_schedule("1f1b", 2, 4)
    x, ids, y = _data(16, seed=9)
    ref, _ = _reference(x, ids, y)
    half = slice(8 * mesh.dp_rank, 8 * (mesh.dp_rank + 1))
    mine = [layer.float() for layer in _layers()]    # ZeRO keeps fp32 parameters
    stages = stages_for_rank(split_layers(mine, 2), mesh.pp_rank, sched)
    rt = PipelineRuntime.from_mesh(mesh, stages, sched, F.mse_loss, reduce_dp_grads=False)
    norm = torch.cat([p.grad.reshape(-1) for layer in ref for p in layer.parameters()]).double().norm().item()
    kw = dict(clip_grad_norm=norm / 3, pp_group=mesh.pp_group) if clip else {}
    zopt = ZeroOptimizer(nn.ModuleList(stages.values()), torch.optim.SGD, stage=stage, group=mesh.dp_group,
                         lr=0.5, print_plan=False, **kw)
    rt.step((x[half].float(), ids[half]), y[half].float())
    got = zopt.step()
    coef = 1 / 3 if clip else 1.0
    if clip:
        assert got == pytest.approx(norm, rel=1e-5), f"pp rank {mesh.pp_rank} clipped by {got}, model norm {norm}"
    per = L // 2
    for i in range(mesh.pp_rank * per, (mesh.pp_rank + 1) * per):
        for pa, pb in zip(mine[i].parameters(), ref[i].parameters()):
            torch.testing.assert_close(pa.detach(), (pb - 0.5 * coef * pb.grad).detach().float(), rtol=1e-4,
                                       atol=1e-5)


def _four_ranks(rank, world_size):
    peaks, errors = _pipeline_group(rank, world_size, ())
    _dp_pp(rank)
    _tp_pp(rank)
    _zero_pp(rank, 1)
    _zero_pp(rank, 2)
    _zero_pp(rank, 2, clip=True)
    return peaks, errors


def test_four_stages_and_composition_with_dp_tp_and_zero():
    results = run_torch(_four_ranks, 4)
    _check_peaks(results, 4)
    assert all(r[1]["changing batch"] == "batch size changes ok" for r in results)


def _gpt_zero_bubble(rank, world_size, name, vpp):
    """The GPT (tp = world_size / 2, pp = 2) under a zero-bubble schedule, with and without
    sequence parallelism: loss and every gradient equal the dense model's, and W ran for
    every column/row-parallel layer of the rank's stages (their weights were left out of B)."""
    from hcomm.parallel.mesh import ParallelConfig, build_mesh
    from hcomm.parallel.models import GPT, GPTConfig, gpt_loss
    from hcomm.parallel.pipeline import build_schedule
    from hcomm.parallel.pipeline.runtime import PipelineRuntime
    from hcomm.parallel.pipeline.stage import split_layers, stages_for_rank
    from hcomm.parallel.tensor import reduce_sequence_parallel_grads
    from hcomm.parallel.tensor.layers import ColumnParallelLinear, RowParallelLinear, shard_state_dict

    torch.set_default_dtype(torch.float64)
    cfg = GPTConfig(vocab_size=36, seq_len=12, hidden=20, heads=4, n_layers=2, ffn_hidden=28, init_std=0.2)
    g = torch.Generator().manual_seed(5)
    ids, targets = torch.randint(0, 36, (6, 12), generator=g), torch.randint(0, 36, (6, 12), generator=g)
    dense = GPT(cfg, seed=13)
    ref_loss = dense(ids, targets)
    ref_loss.backward()
    for sp in (False, True):
        mesh = build_mesh(ParallelConfig(dp=1, tp=world_size // 2, pp=2, vpp=vpp, sequence_parallel=sp))
        model = GPT(cfg, group=mesh.tp_group, sequence_parallel=sp, seed=13)
        sched = build_schedule(name, 2, 3, vpp)
        stages = stages_for_rank(split_layers(model.layers, 2 * vpp), mesh.pp_rank, sched)
        rt = PipelineRuntime.from_mesh(mesh, stages, sched, lambda out, t: gpt_loss(out, t, mesh.tp_group))
        seen = []    # a spy on W: the layers whose weight gradients it computed
        weight = rt._wgrad.weight
        rt._wgrad.weight = lambda pending: (seen.extend(m for m, *_ in pending), weight(pending))
        assert rt.step(ids, targets) == pytest.approx(ref_loss.item(), rel=1e-10)
        tp_layers = [m for s in stages.values() for m in s.modules()
                     if isinstance(m, (ColumnParallelLinear, RowParallelLinear))]
        assert tp_layers and sorted(map(id, seen)) == sorted(map(id, tp_layers * 3)), (len(seen), len(tp_layers))
        reduce_sequence_parallel_grads(nn.ModuleList(stages.values()), mesh.tp_group)
        want = shard_state_dict(model, {n: p.grad for n, p in dense.named_parameters()}, mesh.tp_group)
        local = {n for s in stages.values() for n, p in model.named_parameters()
                 if any(p is q for q in s.parameters())}
        assert local
        for n, prm in model.named_parameters():
            if n in local:
                torch.testing.assert_close(prm.grad, want[n], rtol=1e-8, atol=1e-10, msg=lambda s: f"sp={sp} {n}: {s}")
            else:
                assert prm.grad is None, n
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("name, world_size, vpp", [("zb-h1", 4, 1), ("zb-v", 2, 2)])
def test_zero_bubble_splits_the_tensor_parallel_gpt(name, world_size, vpp):
    run_torch(_gpt_zero_bubble, world_size, args=(name, vpp))
