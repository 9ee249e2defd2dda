"""torch.distributed backend "hcomm" (cpu and cuda).

    import hcomm.torch
    torch.distributed.init_process_group("hcomm")      # env://, tcp://, file://

Importing registers the backend for the cpu and cuda devices; one ProcessGroupHcomm
serves both (torch uses a Python ProcessGroup for every device it was registered for).
CUDA tensors run as with ProcessGroupNCCL: after the work on the caller's current
stream, and work.wait() makes the current stream wait (streams.py, with the one
difference: an async work's wait() also waits on the host for hcomm's progress thread). Under mpirun, where neither torch's env:// variables
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) nor torchrun exist, the import fills them
in from Open MPI's environment so the unchanged init_process_group("hcomm") call works:
rank and size from OMPI_COMM_WORLD_*, and rank 0's address plus a free port handed to
every rank by one mpi4py broadcast (an MPI collective: every rank must import
hcomm.torch, which it does anyway to use the backend). Under srun the same variables
come from Slurm's (hcomm.launch.adopt_slurm_environment: SLURM_PROCID, SLURM_NTASKS,
SLURM_LOCALID, task 0's host from SLURM_STEP_NODELIST, a port from the job and step
ids). Variables already set win.

Differences from Gloo a user may meet:
- dist.monitored_barrier() refuses every backend but Gloo inside torch 2.13, before the
  group is reached; use hcomm.torch.monitored_barrier(group, timeout, wait_all_ranks).
- ReduceOp.BAND / BOR / BXOR run as an allgather plus a local fold (exact, more bytes).
- all_gather with uneven output sizes and alltoall / allgather_coalesced with mixed
  dtypes work (Gloo refuses some of them), as do integer AVG and a 2-D output for
  all_gather_into_tensor; scatter and send/recv honour non-contiguous tensors' strides
  (Gloo's scatter copies their raw memory).
- Complex tensors reduce with sum, avg and premul_sum (on their float view, as Gloo);
  max, min, product and bitwise ops on them are refused with an error.
- A per-op opts.timeout is not used; the group's timeout (init_process_group /
  new_group, or ProcessGroupHcomm.set_timeout; HCOMM_TIMEOUT, when set, in place of torch's 30-minute default)
  bounds every operation. After an error
  the core aborts that communicator: later calls on the group fail at once.
- After a rank dies, hcomm.torch.shrink_world() lets the survivors go on without a
  restart (hcomm agrees on who is left, torch is initialised again on them);
  ProcessGroupHcomm.abort() fails in-flight work here and on the peers waiting on it.
  docs/recovery.md.
"""
import torch.distributed as dist

from ..launch import adopt_slurm_environment
from .backend import ProcessGroupHcomm, create_hcomm
from .elastic import shrink_world
from .mpi_env import adopt_mpi_environment

__all__ = ["ProcessGroupHcomm", "monitored_barrier", "shrink_world"]

BACKEND_NAME = "hcomm"
DEVICES = ("cpu", "cuda")


def monitored_barrier(group=None, timeout=None, wait_all_ranks=False):
    """dist.monitored_barrier for hcomm groups.

    torch 2.13's dist.monitored_barrier refuses every backend but Gloo before it reaches
    the group, so hcomm groups are served here; other groups go to torch's."""
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    if isinstance(pg, ProcessGroupHcomm):
        return pg.monitored_barrier(timeout, wait_all_ranks=wait_all_ranks)
    return dist.monitored_barrier(group, timeout, wait_all_ranks)


def _register():
    if BACKEND_NAME.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(BACKEND_NAME, create_hcomm, devices=list(DEVICES))


_register()
adopt_slurm_environment()
adopt_mpi_environment()
