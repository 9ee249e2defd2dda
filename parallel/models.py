"""A small GPT built from the tensor-parallel layers, for tests, benchmarks and demos.

    GPT.layers = [GPTEmbedding, GPTBlock x n_layers, GPTHead]     (an nn.ModuleList)

Each entry maps one tensor to one tensor (ids [b, s] -> hidden [b, s, h] -> ... ->
vocab-sharded logits [b, s, V / tp]), so a pipeline can cut the list into stages; the
loss (`gpt_loss`) is separate and runs on the last stage.

Tensor parallelism: attention heads and the MLP's inner dim are split across the tp
group (QKV and fc1 column-parallel, the output projection and fc2 row-parallel), the
vocabulary is split in the embedding and the head. With sequence_parallel the residual
stream between them is sharded along the sequence ([b, s / tp, h]); only the
column-parallel inputs are gathered to the full sequence.

Same seed, same weights: the layers draw their full dense weights from one generator in
construction order, so GPT(cfg, group=tp_group, seed=s) holds exactly the shards of
GPT(cfg, seed=s), its dense twin, and computes the same loss. That holds with dropout
too (cfg.dropout > 0, training mode): every dropout draws the dense tensor's mask from its
own generator, seeded from `dropout_seed` alike on every tp rank, and keeps this rank's
slice (see tensor/dropout.py). Use a different dropout_seed per dp rank if the replicas
should not share masks.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .tensor.comm import check_divisible, group_rank, group_size
from .tensor.cross_entropy import vocab_parallel_cross_entropy
from .tensor.dropout import ShardedDropout
from .tensor.layers import (ColumnParallelLinear, ParallelLayerNorm, RowParallelLinear, Seed,
                            VocabParallelEmbedding, make_generator)


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 96
    seq_len: int = 16          # longest sequence (number of position embeddings)
    hidden: int = 48
    heads: int = 4
    n_layers: int = 2
    ffn_hidden: Optional[int] = None   # default 4 * hidden
    init_std: float = 0.02
    eps: float = 1e-5
    dropout: float = 0.0       # embedding, attention-probability and residual dropout

    def __post_init__(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden({self.hidden}) is not divisible by heads({self.heads})")
        if self.ffn_hidden is None:
            object.__setattr__(self, "ffn_hidden", 4 * self.hidden)


def _layer_dropout_seed(dropout_seed: int, layer: int) -> int:
    # distinct seeds for the (at most 8) dropouts of each entry of GPT.layers
    return dropout_seed * 1_000_003 + layer * 8


def _residual_dropout(cfg: GPTConfig, group, sequence_parallel: bool, seed: int) -> ShardedDropout:
    # the residual stream is replicated over tp, or sharded along the sequence with sp
    return ShardedDropout(cfg.dropout, group, shard_dim=1 if sequence_parallel else None, seed=seed)


class CausalSelfAttention(nn.Module):
    """Heads split across tp: each rank computes heads / tp heads end to end.

    The QKV weight's rows are ordered (head, q|k|v, head_dim), so the contiguous row
    shard a column-parallel layer keeps holds q, k and v of whole heads.
    """

    def __init__(self, cfg: GPTConfig, group=None, sequence_parallel=False, seed: Seed = 0,
                 dropout_seed: int = 0):
        super().__init__()
        self.local_heads = check_divisible("heads", cfg.heads, group)
        self.head_dim = cfg.hidden // cfg.heads
        gen = make_generator(seed)
        self.qkv = ColumnParallelLinear(cfg.hidden, 3 * cfg.hidden, group=group,
                                        sequence_parallel=sequence_parallel, seed=gen, init_std=cfg.init_std)
        self.proj = RowParallelLinear(cfg.hidden, cfg.hidden, input_is_parallel=True, group=group,
                                      sequence_parallel=sequence_parallel, seed=gen, init_std=cfg.init_std)
        # attention probabilities [b, heads, s, s] are split over tp along the heads
        self.attn_drop = ShardedDropout(cfg.dropout, group, shard_dim=1, seed=dropout_seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)                                   # [b, s, local_heads * 3 * head_dim]
        b, s, _ = qkv.shape
        q, k, v = qkv.view(b, s, self.local_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        if self.training and self.attn_drop.p > 0:
            out = self._attend_with_dropout(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # [b, heads, s, head_dim]
        return self.proj(out.transpose(1, 2).reshape(b, s, self.local_heads * self.head_dim))

    def _attend_with_dropout(self, q, k, v):
        # written out because the fused kernel's dropout uses the global RNG, whose masks
        # would differ from the dense twin's
        s = q.size(-2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        future = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
        return self.attn_drop(scores.masked_fill(future, float("-inf")).softmax(-1)) @ v


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig, group=None, sequence_parallel=False, seed: Seed = 0):
        super().__init__()
        gen = make_generator(seed)
        self.fc1 = ColumnParallelLinear(cfg.hidden, cfg.ffn_hidden, group=group,
                                        sequence_parallel=sequence_parallel, seed=gen, init_std=cfg.init_std)
        self.fc2 = RowParallelLinear(cfg.ffn_hidden, cfg.hidden, input_is_parallel=True, group=group,
                                     sequence_parallel=sequence_parallel, seed=gen, init_std=cfg.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class GPTBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + drop(attn(ln1(x))), then + drop(mlp(ln2(.)))."""

    def __init__(self, cfg: GPTConfig, group=None, sequence_parallel=False, seed: Seed = 0,
                 dropout_seed: int = 0):
        super().__init__()
        gen = make_generator(seed)
        self.ln1 = ParallelLayerNorm(cfg.hidden, group, sequence_parallel, cfg.eps)
        self.attn = CausalSelfAttention(cfg, group, sequence_parallel, gen, dropout_seed)
        self.drop1 = _residual_dropout(cfg, group, sequence_parallel, dropout_seed + 1)
        self.ln2 = ParallelLayerNorm(cfg.hidden, group, sequence_parallel, cfg.eps)
        self.mlp = MLP(cfg, group, sequence_parallel, gen)
        self.drop2 = _residual_dropout(cfg, group, sequence_parallel, dropout_seed + 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop1(self.attn(self.ln1(x)))
        return x + self.drop2(self.mlp(self.ln2(x)))


class GPTEmbedding(nn.Module):
    """Token ids [b, s] -> hidden [b, s, h] (or [b, s / tp, h] with sequence_parallel)."""

    partition_dims = {"pos": None}   # replicated over tp

    def __init__(self, cfg: GPTConfig, group=None, sequence_parallel=False, seed: Seed = 0,
                 dropout_seed: int = 0):
        super().__init__()
        gen = make_generator(seed)
        self.cfg, self.group, self.sequence_parallel = cfg, group, sequence_parallel
        self.tok = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden, group, sequence_parallel, seed=gen,
                                          init_std=cfg.init_std)
        self.pos = nn.Parameter(torch.empty(cfg.seq_len, cfg.hidden).normal_(0.0, cfg.init_std, generator=gen))
        self.drop = _residual_dropout(cfg, group, sequence_parallel, dropout_seed)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.size(1) > self.cfg.seq_len:
            raise ValueError(f"ids must be [batch, seq <= {self.cfg.seq_len}], got {tuple(ids.shape)}")
        h = self.tok(ids)
        start = group_rank(self.group) * h.size(1) if self.sequence_parallel else 0
        # each rank adds its slice; under sequence parallelism pos's gradient is partial (sp_grads.py)
        return self.drop(h + self.pos[start:start + h.size(1)])


class GPTHead(nn.Module):
    """Final LayerNorm and the LM head: hidden -> this rank's vocab shard of the logits."""

    def __init__(self, cfg: GPTConfig, group=None, sequence_parallel=False, seed: Seed = 0):
        super().__init__()
        self.ln_f = ParallelLayerNorm(cfg.hidden, group, sequence_parallel, cfg.eps)
        self.lm_head = ColumnParallelLinear(cfg.hidden, cfg.vocab_size, bias=False, group=group,
                                            sequence_parallel=sequence_parallel, seed=make_generator(seed),
                                            init_std=cfg.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(x))                # [b, s, V / tp], full sequence


def gpt_loss(logits: torch.Tensor, targets: torch.Tensor, group=None) -> torch.Tensor:
    """Mean next-token loss from vocab-sharded logits; the same value on every tp rank."""
    return vocab_parallel_cross_entropy(logits, targets, group).mean()


class GPT(nn.Module):
    """Embedding, n_layers blocks and the head, as `self.layers` (see module docstring).

    group: the tp process group (None = dense). seed: int or shared torch.Generator for
    the weights. dropout_seed: int seeding the dropout masks (used when cfg.dropout > 0).
    """

    def __init__(self, cfg: GPTConfig, group=None, sequence_parallel: bool = False, seed: Seed = 0,
                 dropout_seed: int = 0):
        super().__init__()
        gen = make_generator(seed)
        self.cfg, self.group, self.sequence_parallel = cfg, group, sequence_parallel
        ds = [_layer_dropout_seed(dropout_seed, i) for i in range(cfg.n_layers + 1)]
        self.layers = nn.ModuleList(
            [GPTEmbedding(cfg, group, sequence_parallel, gen, ds[0])]
            + [GPTBlock(cfg, group, sequence_parallel, gen, ds[i + 1]) for i in range(cfg.n_layers)]
            + [GPTHead(cfg, group, sequence_parallel, gen)])

    def forward(self, ids: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Vocab-sharded logits [b, s, V / tp], or the mean loss when targets are given."""
        x = ids
        for layer in self.layers:
            x = layer(x)
        return x if targets is None else self.loss(x, targets)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return gpt_loss(logits, targets, self.group)

    def extra_repr(self) -> str:
        return f"tp={group_size(self.group)}, sequence_parallel={self.sequence_parallel}"
