"""Who am I, how many are we, and how do we meet: read from the launcher's environment.

Launchers understood: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
Open MPI (OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK), PMIx (PMIX_RANK), Slurm
(SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID).

The unique id (the bootstrap root's address and the job token) comes from, in order:
HCOMM_UNIQUE_ID; torchrun's agent store; MASTER_ADDR:MASTER_PORT (rank 0 listens
there); an MPI broadcast (mpi4py) under mpirun.
"""
import hashlib
import os

from . import _C
from ._errors import InvalidArgument


def _int_env(*names):
    for n in names:
        v = os.environ.get(n)
        if v not in (None, ""):
            return int(v)
    return None


def detect_rank_size():
    """(rank, size) from the launcher's environment; (0, 1) when there is none."""
    rank = _int_env("RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")
    size = _int_env("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")
    if rank is None and size is None:
        return 0, 1
    if rank is None or size is None:
        raise InvalidArgument(f"launcher environment gives rank={rank} but size={size}; set both")
    return rank, size


def local_rank():
    v = _int_env("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID")
    return 0 if v is None else v


def under_mpi():
    return any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"))


def _job_token(addr, port, size):
    # Shared by every rank without talking first; HCOMM_JOB_TOKEN makes it secret.
    secret = os.environ.get("HCOMM_JOB_TOKEN", "")
    return hashlib.sha256(f"{secret}|{addr}|{port}|{size}".encode()).hexdigest()[:32]


def _from_agent_store(rank, size, timeout):
    import datetime

    from torch.distributed import TCPStore

    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                     timeout=datetime.timedelta(seconds=timeout))
    key = f"hcomm/unique_id/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if rank == 0:
        store.set(key, _C.get_unique_id(timeout))
    return store.get(key).decode()


def _from_master(rank, size, timeout):
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    import socket

    ip = socket.gethostbyname(addr)
    token = _job_token(ip, port, size)
    if rank == 0:
        return _C.start_root(ip, port, token, timeout)
    return f"hcomm1:{ip}:{port}:{token}"


def _from_mpi(rank, size, timeout):
    try:
        from mpi4py import MPI
    except ImportError:
        raise InvalidArgument("launched by MPI without MASTER_ADDR/HCOMM_UNIQUE_ID, and mpi4py is not "
                              "installed to broadcast the unique id") from None
    uid = _C.get_unique_id(timeout) if MPI.COMM_WORLD.Get_rank() == 0 else None
    return MPI.COMM_WORLD.bcast(uid, root=0)


def exchange_unique_id(rank, size, timeout):
    uid = os.environ.get("HCOMM_UNIQUE_ID")
    if uid:
        return uid
    if size == 1:
        return ""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and "MASTER_ADDR" in os.environ:
        return _from_agent_store(rank, size, timeout)
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        return _from_master(rank, size, timeout)
    if under_mpi():
        return _from_mpi(rank, size, timeout)
    raise InvalidArgument("no way to meet the other ranks: pass unique_id=, set HCOMM_UNIQUE_ID or "
                          "MASTER_ADDR/MASTER_PORT, or launch with torchrun or mpirun")
