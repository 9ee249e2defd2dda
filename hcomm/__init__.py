"""hcomm: collective communication and training parallelism.

    import hcomm
    comm = hcomm.init()                 # from torchrun / mpirun / Slurm env
    comm.allreduce(x)                   # numpy or torch, in place
"""
import os

from . import _C
from ._C import Error
from ._errors import InvalidArgument
from .comm import Communicator, Work
from .comm import timeout_seconds as _timeout_seconds
from .launch import detect_rank_size, exchange_unique_id, local_rank
from .topology import explain

__all__ = ["Communicator", "Error", "InvalidArgument", "Work", "build_config", "explain", "get_unique_id", "init"]

build_config = _C.build_config


def default_timeout():
    """HCOMM_TIMEOUT in seconds (default 300): the limit on every blocking wait."""
    return float(os.environ.get("HCOMM_TIMEOUT", "300"))


def get_unique_id(timeout=None):
    """Start a bootstrap root in this process and return its id, to hand to every rank."""
    return _C.get_unique_id(default_timeout() if timeout is None else float(timeout))


def init(rank=None, size=None, unique_id=None, timeout=None):
    """Create the world communicator.

    With no arguments, rank, size and the rendezvous come from the launcher (torchrun,
    mpirun, Slurm). Explicitly: init(rank=r, size=n, unique_id=get_unique_id() from one
    process, passed to all). timeout: seconds every blocking wait may take (a positive,
    finite number; default HCOMM_TIMEOUT), checked before anything else is done."""
    timeout = _timeout_seconds(default_timeout(), "HCOMM_TIMEOUT") if timeout is None else _timeout_seconds(timeout)
    if (rank is None) != (size is None):
        raise InvalidArgument("pass both rank and size, or neither")
    if rank is None:
        rank, size = detect_rank_size()
    if not isinstance(size, int) or size < 1:
        raise InvalidArgument(f"size must be a positive int, got {size!r}")
    if not isinstance(rank, int) or not 0 <= rank < size:
        raise InvalidArgument(f"rank {rank!r} is out of range for size {size}")
    if unique_id is None:
        unique_id = exchange_unique_id(rank, size, timeout)
    comm = Communicator(_C.Communicator.create(rank, size, unique_id or "", timeout))
    if os.environ.get("HCOMM_DEBUG_DUMP_DIR"):
        from .debug import install_dump_on_signal

        install_dump_on_signal(comm)
    return comm
