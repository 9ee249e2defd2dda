"""ZeRO stages 1, 2 and 3 over an explicit torch.distributed group (hcomm, gloo, nccl).

    from hcomm.parallel.zero import ZeroOptimizer
    zopt = ZeroOptimizer(model, torch.optim.AdamW, stage=3, group=mesh.dp_group,
                         mixed_precision=torch.bfloat16, clip_grad_norm=1.0, lr=1e-3)
    for x, y in data:                 # each dp rank its own batch
        loss_fn(model(x), y).backward()
        zopt.step()                   # the global grad norm when clipping
        zopt.zero_grad()

What each stage keeps per rank (Ψ parameters, N = dp size; memory.py has the table):
stage 1 shards the optimizer state (fp32 master + AdamW moments), stage 2 also the
gradients (reduce-scattered in flat buckets during backward), stage 3 also the
parameters (gathered per module for forward and backward, prefetched, freed after).
Communication per step: 2Ψ (stages 1, 2), 3Ψ (stage 3), in parameter-dtype elements.

Behaviour worth knowing:
- The memory plan (formulas beside real tensor bytes) prints on group rank 0 when the
  optimizer is built; `zopt.memory_plan()` measures again at any time.
- Gradient accumulation: call backward several times, then step. Stage 1 reduces only
  at step; stages 2 and 3 reduce-scatter every backward and add into the shard.
- Mixed precision: bf16 parameters and gradients (reductions too), fp32 master
  shard and optimizer state; floating forward inputs are cast to that dtype.
- Stage 3 checks before every gather that all ranks run the same module and raises
  ZeroControlFlowError (naming module and ranks) instead of hanging; one tiny all-gather
  per module per pass (check_control_flow=False removes it).
- Checkpoints: zopt.save_sharded(dir) / zopt.load_sharded(dir) (any dp size, stage or
  bucket size on load), zopt.full_state_dict() (consolidated, on group rank 0).
- Under stage 3 the module's parameters are empty between uses: read weights through
  full_state_dict(), not model.state_dict().
- The inner optimizer is `zopt.inner` (for LR schedulers); element-wise optimizers only.

Files: flat.py (flat buffers and shard arithmetic), comm.py (collectives, byte counters),
shards.py (master/grad shard), stage12.py, stage3.py, optimizer.py (the front end),
memory.py (the memory plan), checkpoint.py (sharded save/load/reshard/consolidate).
"""
from .flat import FlatLayout
from .memory import MemoryPlan
from .optimizer import ZeroOptimizer
from .stage3 import ZeroControlFlowError

__all__ = ["ZeroOptimizer", "ZeroControlFlowError", "MemoryPlan", "FlatLayout"]
