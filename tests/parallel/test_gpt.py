"""The small GPT: dense path against a hand-written reference, and tensor / sequence
parallel versions against the dense twin on 2 and 4 hcomm ranks (float64)."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from harness import run_torch

# seq 12 and heads 4 divide by 2 and 4; batch 3 and hidden 20 keep other dims odd-ish.
CFG = dict(vocab_size=36, seq_len=12, hidden=20, heads=4, n_layers=2, ffn_hidden=28, init_std=0.2)
B = 3
TOL = 1e-10


def _close(what, got, want, tol=TOL):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"{what}: max abs error {err:.3e}"


def _reference_block(block, x):
    """The block written out with plain tensor ops from its (dense) weights."""
    def ln(m, t):
        mu, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
        return (t - mu) / torch.sqrt(var + m.eps) * m.weight + m.bias

    a = block.attn
    b, s, h = x.shape
    heads, hd = a.local_heads, a.head_dim
    qkv = ln(block.ln1, x) @ a.qkv.weight.T + a.qkv.bias
    q, k, v = qkv.view(b, s, heads, 3, hd).unbind(3)                    # each [b, s, heads, hd]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    att = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, s, h)
    x = x + att @ a.proj.weight.T + a.proj.bias
    m = block.mlp
    hid = F.gelu(ln(block.ln2, x) @ m.fc1.weight.T + m.fc1.bias)
    return x + hid @ m.fc2.weight.T + m.fc2.bias


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CFG["vocab_size"], (B, CFG["seq_len"]), generator=g)
    targets = torch.randint(0, CFG["vocab_size"], (B, CFG["seq_len"]), generator=g)
    x = torch.randn(B, CFG["seq_len"], CFG["hidden"], generator=g, dtype=torch.float64)
    return ids, targets, x


def test_dense_block_matches_reference_and_is_causal():
    from hcomm.parallel.models import GPTBlock, GPTConfig

    torch.set_default_dtype(torch.float64)
    try:
        block = GPTBlock(GPTConfig(**CFG), seed=5)
        with torch.no_grad():   # non-trivial LayerNorm parameters
            for ln in (block.ln1, block.ln2):
                ln.weight.normal_(1.0, 0.3)
                ln.bias.normal_(0.0, 0.3)
        _, _, x = _inputs()
        y = block(x)
        _close("block vs reference", y, _reference_block(block, x))
        x2 = x.clone()
        x2[:, 7:] += 1.0                     # change the future only
        _close("causal prefix", block(x2)[:, :7], y[:, :7])
    finally:
        torch.set_default_dtype(torch.float32)


def test_dropout_paths_without_processes():
    """Eval mode ignores dropout; the written-out attention used for attention dropout
    equals the fused kernel; training masks change the loss and advance per step."""
    from hcomm.parallel.models import GPT, GPTConfig

    ids, targets, _ = _inputs()
    plain = GPT(GPTConfig(**CFG), seed=2)
    dropped = GPT(GPTConfig(**CFG, dropout=0.3), seed=2)
    plain.eval()
    dropped.eval()
    _close("eval ignores dropout", dropped(ids, targets), plain(ids, targets), tol=1e-6)
    dropped.train()
    first, second = dropped(ids, targets), dropped(ids, targets)
    assert abs(first.item() - plain(ids, targets).item()) > 1e-4 and abs(first.item() - second.item()) > 1e-4
    attn = GPT(GPTConfig(**CFG), seed=2).layers[1].attn
    x = torch.randn(B, CFG["seq_len"], CFG["hidden"], generator=torch.Generator().manual_seed(1))
    fused = attn(x)
    attn.attn_drop.p = 1e-12   # takes the written-out path, drops nothing
    _close("written-out attention", attn(x), fused, tol=1e-5)


def test_config_errors():
    from hcomm.parallel.models import GPT, GPTConfig

    with pytest.raises(ValueError, match=r"hidden\(10\) is not divisible by heads\(4\)"):
        GPTConfig(hidden=10, heads=4)
    model = GPT(GPTConfig(**CFG))
    with pytest.raises(ValueError, match=r"seq <= 12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    assert model(*_inputs()[:2]).ndim == 0


def _grads(model):
    return {n: p.grad for n, p in model.named_parameters()}


def _check_block(cfg, group, n):
    from hcomm.parallel.models import GPTBlock
    from hcomm.parallel.tensor import gather_state_dict, group_rank, reduce_sequence_parallel_grads

    _, _, x = _inputs(1)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    dense = GPTBlock(cfg, seed=7)
    xd = x.clone().requires_grad_()
    yd = dense(xd)
    (yd * gy).sum().backward()
    seq = lambda t: t.chunk(n, 1)[group_rank(group)]  # noqa: E731 - sequence shard of this rank
    for sp in (False, True):
        block = GPTBlock(cfg, group=group, sequence_parallel=sp, seed=7)
        xp = (seq(x) if sp else x).clone().requires_grad_()
        y = block(xp)
        what = f"tp={n} sp={sp} block"
        _close(f"{what} output", y, seq(yd) if sp else yd)
        (y * (seq(gy) if sp else gy)).sum().backward()
        reduce_sequence_parallel_grads(block, group)   # no-op without sp
        _close(f"{what} input grad", xp.grad, seq(xd.grad) if sp else xd.grad)
        full = gather_state_dict(block, group, _grads(block))
        for name, g in _grads(dense).items():
            _close(f"{what} grad {name}", full[name], g)
    _check_split_is_even(dense, block, n)


def _check_split_is_even(dense, block, n):
    """Every sharded parameter holds exactly 1/n of the dense one; the rest is replicated."""
    from hcomm.parallel.tensor import partition_dim

    for name, p in block.named_parameters():
        want = dense.get_parameter(name).numel()
        sharded = partition_dim(block, name) is not None
        assert p.numel() * (n if sharded else 1) == want, (name, p.numel(), want, n)


def _run_steps(model, steps):
    """Loss of each of `steps` forward/backward passes (gradients accumulate)."""
    losses = []
    for step in range(steps):
        ids, targets, _ = _inputs(3 + step)
        loss = model(ids, targets)
        loss.backward()
        losses.append(loss.detach())
    return losses


def _check_model(cfg, group, n, steps=1):
    """Loss and accumulated gradients of the tp and sp models equal the dense twin's.
    With dropout, steps=2 also checks that the masks advance alike on every rank."""
    from hcomm.parallel.models import GPT
    from hcomm.parallel.tensor import gather_state_dict, reduce_sequence_parallel_grads

    dense = GPT(cfg, seed=9, dropout_seed=4)
    if steps == 1:
        _check_state_dicts(GPT(cfg, group=group, seed=9), GPT(cfg, group=group, seed=10), dense, group)
    want = _run_steps(dense, steps)
    what = f"tp={n} dropout={cfg.dropout}"
    for sp in (False, True):
        model = GPT(cfg, group=group, sequence_parallel=sp, seed=9, dropout_seed=4)
        for step, (got, ref) in enumerate(zip(_run_steps(model, steps), want)):
            _close(f"{what} sp={sp} loss of step {step}", got, ref)
        reduce_sequence_parallel_grads(model, group)   # once, after all steps' backward passes
        full = gather_state_dict(model, group, _grads(model))
        for name, g in _grads(dense).items():
            _close(f"{what} sp={sp} grad {name}", full[name], g)


def _check_state_dicts(same_seed, other_seed, dense, group):
    """Same seed -> exactly the dense shards; shard_state_dict moves any model onto them."""
    from hcomm.parallel.tensor import gather_state_dict, shard_state_dict

    want = dense.state_dict()
    full = gather_state_dict(same_seed, group)
    assert full.keys() == want.keys()
    assert all(torch.equal(full[k], want[k]) for k in want), "weights are not the dense shards"
    assert not torch.equal(other_seed.state_dict()["layers.1.mlp.fc1.weight"],
                           same_seed.state_dict()["layers.1.mlp.fc1.weight"])
    other_seed.load_state_dict(shard_state_dict(other_seed, want, group))
    mine = same_seed.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in other_seed.state_dict().items())


def _gpt_tp(rank, world_size):
    torch.set_num_threads(1)   # ranks share 2 cores: avoid oversubscription
    from hcomm.parallel.mesh import ParallelConfig, build_mesh
    from hcomm.parallel.models import GPTConfig

    torch.set_default_dtype(torch.float64)
    group = build_mesh(ParallelConfig(dp=1, tp=world_size)).tp_group
    cfg = GPTConfig(**CFG)
    _check_block(cfg, group, world_size)
    _check_model(cfg, group, world_size)
    _check_model(dataclasses.replace(cfg, dropout=0.25), group, world_size, steps=2)
    return True


@pytest.mark.parametrize("world_size", [2, 4])
def test_tensor_and_sequence_parallel_gpt_match_dense(world_size):
    assert run_torch(_gpt_tp, world_size) == [True] * world_size
