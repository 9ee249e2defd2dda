"""ZeRO stages 1, 2 and 3 over an explicit torch.distributed group (hcomm, gloo, nccl).

    from hcomm.parallel.zero import ZeroOptimizer
    zopt = ZeroOptimizer(model, torch.optim.AdamW, stage=2, group=dp_group, lr=1e-3)

Files: flat.py (flat buffers and shard arithmetic), comm.py (collectives, byte counters),
shards.py (master/grad shard), stage12.py, stage3.py, optimizer.py (the front end),
memory.py (the memory plan), checkpoint.py (sharded save/load/reshard/consolidate).
"""
from .flat import FlatLayout
from .memory import MemoryPlan
from .optimizer import ZeroOptimizer
from .stage3 import ZeroControlFlowError

__all__ = ["ZeroOptimizer", "ZeroControlFlowError", "MemoryPlan", "FlatLayout"]
