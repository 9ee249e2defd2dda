"""hcomm.parallel: tensor, pipeline and ZeRO parallelism on torch.distributed groups.

    mesh      ParallelConfig (validated degrees, placement, from_config), rank_layout, build_mesh -> Mesh (on a DeviceMesh)
    tensor    column/row-parallel linear, vocab-parallel embedding and loss, sequence parallel
    models    a small GPT built from the tensor layers (model.layers splits into stages)
    pipeline  schedules as data and the runtime that executes them
    zero      ZeRO stage 1/2/3 optimizer wrappers
    clip      clip_grad_norm_ by the whole model's norm over tp and pp groups

Only the mesh is imported here (it needs no torch until build_mesh); import the others
as submodules, e.g. `from hcomm.parallel.tensor import ColumnParallelLinear`.
"""
from .mesh import Mesh, ParallelConfig, build_mesh, rank_layout

__all__ = ["Mesh", "ParallelConfig", "build_mesh", "rank_layout"]
