"""Give torch's env:// rendezvous what it needs when launched by mpirun.

torch reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT before the hcomm backend is
ever called, so this runs at import of hcomm.torch. Rank 0 picks the address (loopback
when every rank is on its host, else its host name's address) and a free port, and one
mpi4py broadcast hands them to all ranks. Nothing happens outside MPI or when the
variables are already set (torchrun, Slurm scripts, a user's own choice).
"""
import os
import socket

from ..launch import under_mpi

_MPI_VARS = {
    "RANK": "OMPI_COMM_WORLD_RANK", "WORLD_SIZE": "OMPI_COMM_WORLD_SIZE",
    "LOCAL_RANK": "OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_WORLD_SIZE": "OMPI_COMM_WORLD_LOCAL_SIZE",
}


def _free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _master_address():
    single_host = os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") == os.environ.get("OMPI_COMM_WORLD_SIZE")
    return "127.0.0.1" if single_host else socket.gethostbyname(socket.gethostname())


def adopt_mpi_environment(environ=os.environ):
    if not under_mpi() or "OMPI_COMM_WORLD_RANK" not in environ:
        return
    for torch_name, mpi_name in _MPI_VARS.items():
        if torch_name not in environ and mpi_name in environ:
            environ[torch_name] = environ[mpi_name]
    if "MASTER_ADDR" in environ and "MASTER_PORT" in environ:
        return
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError("hcomm.torch: launched by mpirun without MASTER_ADDR/MASTER_PORT and mpi4py is not "
                           "installed to agree on them; set MASTER_ADDR and MASTER_PORT or install mpi4py") from None
    addr_port = (_master_address(), _free_port()) if MPI.COMM_WORLD.Get_rank() == 0 else None
    addr, port = MPI.COMM_WORLD.bcast(addr_port, root=0)
    environ.setdefault("MASTER_ADDR", addr)
    environ.setdefault("MASTER_PORT", str(port))
