"""Tensor and sequence parallelism: raw moves (comm) -> autograd pairs (mappings) ->
layers and the vocab-parallel loss. `group` is the tp group; None means dense (tp=1)."""
from .comm import group_rank, group_size
from .cross_entropy import vocab_parallel_cross_entropy
from .dropout import ShardedDropout
from .layers import (ColumnParallelLinear, ParallelLayerNorm, RowParallelLinear, VocabParallelEmbedding,
                     dense_linear, dense_linear_params, gather_state_dict, make_generator, partition_dim,
                     shard_state_dict)
from .parallelize import Colwise, Rowwise, Vocab, parallelize
from .sp_grads import reduce_sequence_parallel_grads, sequence_parallel_params
from .mappings import (SEQ_DIM, copy_to_tp_region, gather_from_sequence_region, gather_from_tp_region,
                       reduce_from_tp_region, reduce_scatter_to_sequence_region, scatter_to_sequence_region,
                       scatter_to_tp_region)

__all__ = [
    "group_rank", "group_size", "vocab_parallel_cross_entropy",
    "ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding", "ParallelLayerNorm", "ShardedDropout",
    "dense_linear", "dense_linear_params", "make_generator", "partition_dim",
    "reduce_sequence_parallel_grads", "sequence_parallel_params",
    "shard_state_dict", "gather_state_dict", "parallelize", "Colwise", "Rowwise", "Vocab",
    "SEQ_DIM", "copy_to_tp_region", "reduce_from_tp_region", "scatter_to_tp_region", "gather_from_tp_region",
    "scatter_to_sequence_region", "gather_from_sequence_region", "reduce_scatter_to_sequence_region",
]
