"""parallelize(module, plan, tp_group) on a GPT written with plain torch layers: at tp = 2
and 4 (hcomm), the loss and every gradient equal the dense model's; bad plans raise
naming the module, before anything is replaced."""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from harness import run_torch
from hcomm.parallel.tensor import partition_dim
from hcomm.parallel.tensor.parallelize import Colwise, Rowwise, parallelize

VOCAB, HIDDEN, HEADS, SEQ, BATCH, LAYERS = 52, 36, 4, 7, 3, 2   # odd sizes; heads divisible by tp = 4


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.head_dim = HIDDEN // HEADS
        self.q, self.k, self.v = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
        self.out = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x):
        b, s, _ = x.shape
        # -1: the local number of heads (all of them dense, HEADS / tp when parallelized)
        q, k, v = (f(x).view(b, s, -1, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, s, -1))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
        self.attn = Attention()
        self.mlp = nn.Sequential()
        self.mlp.up, self.mlp.act, self.mlp.down = nn.Linear(HIDDEN, 4 * HIDDEN), nn.GELU(), nn.Linear(4 * HIDDEN, HIDDEN)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PlainGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(VOCAB, HIDDEN), nn.Embedding(SEQ, HIDDEN)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(HIDDEN)
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, ids, targets):
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(ids.size(1)))
        for block in self.blocks:
            x = block(x)
        return F.cross_entropy(self.lm_head(self.ln_f(x)).flatten(0, 1), targets.flatten())


PLAN = {"tok_emb": "vocab", "blocks.*.attn.[qkv]": "colwise", "blocks.*.attn.out": "rowwise",
        "blocks.*.mlp.up": Colwise(), "blocks.*.mlp.down": Rowwise(), "lm_head": Colwise(gather_output=True)}


def dense_model():
    torch.manual_seed(5)
    model = PlainGPT()
    with torch.no_grad():   # LayerNorms away from (1, 0), so their gradients are not trivial
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def data():
    g = torch.Generator().manual_seed(9)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g), torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)


def _check_tp(group, tp):
    dense = dense_model()
    model = parallelize(copy.deepcopy(dense), PLAN, group)
    assert type(model.blocks[1].attn.q).__name__ == "ColumnParallelLinear"
    assert model.tok_emb.weight.shape == (VOCAB // tp, HIDDEN)
    ids, targets = data()
    want, got = dense(ids, targets), model(ids, targets)
    want.backward()
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    dense_grads = dict(dense.named_parameters())
    for name, p in model.named_parameters():
        g = dense_grads[name].grad
        dim = partition_dim(model, name)
        if dim is not None:
            g = g.chunk(tp, dim)[dist.get_rank(group)]
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6, msg=lambda m: f"tp={tp} {name}: {m}")


def _body(rank, world_size):
    torch.set_num_threads(1)
    halves = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    _check_tp(halves[rank // 2], 2)
    _check_tp(dist.group.WORLD, 4)
    # an impossible plan: 6 outputs cannot be split four ways
    odd = nn.Sequential()
    odd.proj = nn.Linear(HIDDEN, 6)
    with pytest.raises(ValueError, match=r"module 'proj': out_features\(6\) is not divisible by the "
                                         r"tensor-parallel size\(4\)"):
        parallelize(odd, {"proj": "colwise"}, dist.group.WORLD)
    assert isinstance(odd.proj, nn.Linear)   # nothing replaced
    _sequence_parallel_needs_its_group()
    return True


def _sequence_parallel_needs_its_group():
    """Sequence-parallel replicated gradients are partial until summed over tp: without the
    tp group the sum cannot happen, so both places that do it refuse."""
    from hcomm.parallel.models import GPT, GPTConfig
    from hcomm.parallel.tensor import reduce_sequence_parallel_grads
    from hcomm.parallel.zero import ZeroOptimizer

    model = GPT(GPTConfig(vocab_size=8, seq_len=4, hidden=8, heads=4, n_layers=1), group=dist.group.WORLD,
                sequence_parallel=True)
    with pytest.raises(ValueError, match=r"module 'GPT' is sequence-parallel over 4 ranks.*pass it"):
        ZeroOptimizer(model, torch.optim.SGD, stage=1, group=None, tp_group=None, print_plan=False, lr=0.1)
    with pytest.raises(ValueError, match=r"is sequence-parallel over 4 ranks"):
        reduce_sequence_parallel_grads(model, None)


def test_plain_gpt_at_tp2_and_tp4_matches_dense():
    assert run_torch(_body, 4) == [True] * 4


def test_bad_plans_name_the_module():
    model = dense_model()
    with pytest.raises(ValueError, match=r"plan patterns \['blocks\.\*\.mlp\.fc1'\] match no module of PlainGPT"):
        parallelize(model, {**PLAN, "blocks.*.mlp.fc1": "colwise"}, None)
    with pytest.raises(TypeError, match=r"module 'blocks.0.ln1' \(LayerNorm, plan\['blocks.\*.ln1'\] = "
                                        r"Colwise\(gather_output=False\)\) is not an nn.Linear"):
        parallelize(model, {"blocks.*.ln1": "colwise"}, None)
    with pytest.raises(TypeError, match=r"module 'tok_emb' \(Embedding.*is not an nn.Linear"):
        parallelize(model, {"tok_emb": "rowwise"}, None)
    with pytest.raises(ValueError, match=r"module 'blocks.0.attn.q' is matched by two plan patterns"):
        parallelize(model, {"blocks.*.attn.q": "colwise", "blocks.0.attn.*": "rowwise"}, None)
    with pytest.raises(ValueError, match=r"unknown style 'columnwise'"):
        parallelize(model, {"lm_head": "columnwise"}, None)
    model.lm_head.weight = model.tok_emb.weight
    with pytest.raises(ValueError, match=r"module 'lm_head' shares a parameter with \['tok_emb'\] \(tied weights\)"):
        parallelize(model, {"lm_head": "colwise"}, None)
