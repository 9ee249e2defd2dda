"""Tensor-parallel layers against their dense torch counterparts, on 1-4 hcomm ranks.

One spawned job per world size runs every layer check (spawning dominates the cost).
Each check builds the dense layer and the parallel layer from the same seed, feeds both
the same seeded input (odd batch sizes; the sharded dims are multiples of 12 so that 1,
2, 3 and 4 ranks all divide them), and compares the forward output, the input gradient
and this rank's shard of every weight gradient, in float64.
"""
import pytest
import torch
import torch.nn.functional as F

from harness import run_torch

B, S = 3, 12           # batch (odd), sequence (divisible by 1..4 for sequence parallelism)
IN, OUT = 7, 24        # odd unsharded dim; sharded dim divisible by 1..4
VOCAB = 36
TOL = 1e-10


def _close(what, got, want, tol=TOL):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs().max().item() if got.numel() else 0.0
    assert err <= tol * max(1.0, want.abs().max().item()), f"{what}: max abs error {err:.3e}"


def _chunk(t, dim, group):
    from hcomm.parallel.tensor import group_rank, group_size
    return t.chunk(group_size(group), dim)[group_rank(group)]


def _data(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _column(group, gather_output, sequence_parallel):
    from hcomm.parallel.tensor import ColumnParallelLinear, dense_linear

    dense = dense_linear(IN, OUT, seed=11)
    par = ColumnParallelLinear(IN, OUT, gather_output=gather_output, group=group,
                               sequence_parallel=sequence_parallel, seed=11)
    x = _data(B, S, IN, seed=1).requires_grad_()
    gy = _data(B, S, OUT, seed=2)
    (dense(x) * gy).sum().backward()
    xp = (_chunk(x.detach(), 1, group) if sequence_parallel else x.detach()).clone().requires_grad_()
    y = par(xp)
    want = dense(x) if gather_output else _chunk(dense(x), -1, group)
    _close("column forward", y, want)
    (y * (gy if gather_output else _chunk(gy, -1, group))).sum().backward()
    _close("column input grad", xp.grad, _chunk(x.grad, 1, group) if sequence_parallel else x.grad)
    _close("column weight grad", par.weight.grad, _chunk(dense.weight.grad, 0, group))
    _close("column bias grad", par.bias.grad, _chunk(dense.bias.grad, 0, group))


def _sp_reduce(module, group, sequence_parallel):
    """Sum the sequence-parallel replicated gradients over tp (once per step, one bucket);
    before it they are this rank's partial sums."""
    from hcomm.parallel.tensor import reduce_sequence_parallel_grads, sequence_parallel_params

    if sequence_parallel:
        assert [n for n, _ in sequence_parallel_params(module)] == ["bias"] if hasattr(module, "input_is_parallel") \
            else ["weight", "bias"]
        reduce_sequence_parallel_grads(module, group)


def _row(group, input_is_parallel, sequence_parallel):
    from hcomm.parallel.tensor import RowParallelLinear, dense_linear

    dense = dense_linear(OUT, IN, seed=12)
    par = RowParallelLinear(OUT, IN, input_is_parallel=input_is_parallel, group=group,
                            sequence_parallel=sequence_parallel, seed=12)
    x = _data(B, S, OUT, seed=3).requires_grad_()
    gy = _data(B, S, IN, seed=4)
    (dense(x) * gy).sum().backward()
    xp = (_chunk(x.detach(), -1, group) if input_is_parallel else x.detach()).clone().requires_grad_()
    y = par(xp)
    seq = (lambda t: _chunk(t, 1, group)) if sequence_parallel else (lambda t: t)
    _close("row forward", y, seq(dense(x)))
    (y * seq(gy)).sum().backward()
    _sp_reduce(par, group, sequence_parallel)
    _close("row input grad", xp.grad, _chunk(x.grad, -1, group) if input_is_parallel else x.grad)
    _close("row weight grad", par.weight.grad, _chunk(dense.weight.grad, 1, group))
    _close("row bias grad", par.bias.grad, dense.bias.grad)


def _embedding(group, sequence_parallel):
    from hcomm.parallel.tensor import VocabParallelEmbedding

    par = VocabParallelEmbedding(VOCAB, IN, group=group, sequence_parallel=sequence_parallel, seed=13)
    full = torch.empty(VOCAB, IN).normal_(generator=torch.Generator().manual_seed(13))
    dense = torch.nn.Embedding(VOCAB, IN, _weight=full.clone())
    ids = torch.randint(0, VOCAB, (B, S), generator=torch.Generator().manual_seed(5))
    ids[0, :min(S, VOCAB)] = torch.arange(min(S, VOCAB))  # every shard owns some ids
    gy = _data(B, S, IN, seed=6)
    seq = (lambda t: _chunk(t, 1, group)) if sequence_parallel else (lambda t: t)
    (dense(ids) * gy).sum().backward()
    y = par(ids)
    _close("embedding forward", y, seq(dense(ids)))
    (y * seq(gy)).sum().backward()
    _close("embedding weight grad", par.weight.grad, _chunk(dense.weight.grad, 0, group))
    with pytest.raises(IndexError, match=r"\[0, 36\)"):
        par(torch.tensor([[VOCAB]]))


def _cross_entropy(group):
    from hcomm.parallel.tensor import vocab_parallel_cross_entropy

    logits = (_data(B, S, VOCAB, seed=7) * 5).requires_grad_()   # large logits: stability
    target = torch.randint(0, VOCAB, (B, S), generator=torch.Generator().manual_seed(8))
    gl = _data(B, S, seed=9)
    want = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(B, S)
    (want * gl).sum().backward()
    shard = _chunk(logits.detach(), -1, group).clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(shard, target, group)
    _close("cross-entropy loss", loss.double(), want)
    (loss * gl).sum().backward()
    _close("cross-entropy logits grad", shard.grad, _chunk(logits.grad, -1, group))


def _layernorm_sp(group):
    from hcomm.parallel.tensor import ParallelLayerNorm

    dense, par = ParallelLayerNorm(IN), ParallelLayerNorm(IN, group=group, sequence_parallel=True)
    with torch.no_grad():
        for m in (dense, par):
            m.weight.copy_(_data(IN, seed=10))
    x, gy = _data(B, S, IN, seed=14), _data(B, S, IN, seed=15)
    (dense(x) * gy).sum().backward()
    (par(_chunk(x, 1, group)) * _chunk(gy, 1, group)).sum().backward()
    _sp_reduce(par, group, True)
    _close("sequence-parallel layernorm weight grad", par.weight.grad, dense.weight.grad)
    _close("sequence-parallel layernorm bias grad", par.bias.grad, dense.bias.grad)


def _bf16_mlp_and_loss(group):
    """Column -> row -> vocab-parallel loss with bf16 parameters and activations: the
    dtype plumbing (fp32 softmax, bf16 gradients) against the float64 dense computation."""
    from hcomm.parallel.tensor import (ColumnParallelLinear, RowParallelLinear, dense_linear,
                                       vocab_parallel_cross_entropy)

    fc1, fc2 = dense_linear(IN, OUT, seed=21), dense_linear(OUT, VOCAB, seed=22)
    col = ColumnParallelLinear(IN, OUT, group=group, seed=21, dtype=torch.bfloat16)
    row = RowParallelLinear(OUT, VOCAB, input_is_parallel=True, group=group, seed=22, dtype=torch.bfloat16)
    head = ColumnParallelLinear(VOCAB, VOCAB, group=group, seed=23, dtype=torch.bfloat16)
    x = _data(B, S, IN, seed=16)
    target = torch.randint(0, VOCAB, (B, S), generator=torch.Generator().manual_seed(17))
    logits = dense_linear(VOCAB, VOCAB, seed=23)(fc2(torch.relu(fc1(x))))
    want = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    shard = head(row(torch.relu(col(x.to(torch.bfloat16)))))
    loss = vocab_parallel_cross_entropy(shard, target, group).mean()
    assert shard.dtype == torch.bfloat16 and loss.dtype == torch.float32
    _close("bf16 loss", loss.double(), want, tol=2e-2)
    loss.backward()
    assert col.weight.grad.dtype == torch.bfloat16 and torch.isfinite(col.weight.grad).all()


def _bad_shapes(group, n):
    from hcomm.parallel.tensor import ColumnParallelLinear, RowParallelLinear

    if n == 1:
        return
    with pytest.raises(ValueError, match=rf"out_features\({OUT + 1}\) is not divisible .*\({n}\)"):
        ColumnParallelLinear(IN, OUT + 1, group=group)
    with pytest.raises(ValueError, match=rf"in_features\({OUT + 1}\)"):
        RowParallelLinear(OUT + 1, IN, group=group)


def _all_layers(rank, world_size):
    torch.set_num_threads(1)   # ranks share 2 cores: avoid oversubscription
    from hcomm.parallel.mesh import ParallelConfig, build_mesh

    torch.set_default_dtype(torch.float64)
    group = build_mesh(ParallelConfig(dp=1, tp=world_size)).tp_group
    for gather_output in (False, True):
        for sp in (False, True):
            _column(group, gather_output, sp)
    for input_is_parallel in (False, True):
        for sp in (False, True):
            _row(group, input_is_parallel, sp)
    for sp in (False, True):
        _embedding(group, sp)
    _cross_entropy(group)
    _layernorm_sp(group)
    _bf16_mlp_and_loss(group)
    _bad_shapes(group, world_size)
    return True


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_layers_match_dense(world_size):
    assert run_torch(_all_layers, world_size) == [True] * world_size


def test_dense_twin_without_processes():
    """group=None is the dense layer: same weights as nn.Linear built from the same seed."""
    from hcomm.parallel.tensor import ColumnParallelLinear, RowParallelLinear, dense_linear

    lin = dense_linear(IN, OUT, seed=3)
    for cls in (ColumnParallelLinear, RowParallelLinear):
        layer = cls(IN, OUT, seed=3)
        assert torch.equal(layer.weight, lin.weight) and torch.equal(layer.bias, lin.bias)
    gen = torch.Generator().manual_seed(3)
    a, b = ColumnParallelLinear(IN, OUT, seed=gen), ColumnParallelLinear(IN, OUT, seed=gen)
    assert not torch.equal(a.weight, b.weight), "a shared generator must give each layer new draws"


def test_vocab_cross_entropy_dense_path():
    from hcomm.parallel.tensor import vocab_parallel_cross_entropy

    logits, target = _data(5, VOCAB, seed=1), torch.arange(5)
    _close("ce", vocab_parallel_cross_entropy(logits, target, None).double(),
           F.cross_entropy(logits, target, reduction="none"))
    with pytest.raises(ValueError, match="must agree"):
        vocab_parallel_cross_entropy(logits, target[:4], None)


def test_sharded_dropout_without_processes():
    from hcomm.parallel.tensor import ShardedDropout

    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got 1.0"):
        ShardedDropout(1.0)
    drop, x = ShardedDropout(0.3, seed=5), torch.ones(200, 50)
    state = drop.get_rng_state()
    first = drop(x)
    assert abs((first == 0).double().mean().item() - 0.3) < 0.02
    assert torch.allclose(first[first != 0], torch.tensor(1 / 0.7))
    assert not torch.equal(drop(x), first), "the generator must advance"
    drop.set_rng_state(state)   # what activation recomputation does
    assert torch.equal(drop(x), first)
    assert torch.equal(drop.eval()(x), x)
