"""Who am I, how many are we, and how do we meet: read from the launcher's environment.

Launchers understood: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
Open MPI (OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK), PMIx (PMIX_RANK), Slurm's srun
(SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_NODEID, SLURM_STEP_NODELIST,
SLURM_JOB_ID, SLURM_STEP_ID).

The unique id (the bootstrap root's address and the job token) comes from, in order:
HCOMM_UNIQUE_ID; torchrun's agent store; MASTER_ADDR:MASTER_PORT (rank 0 listens
there); under srun, the first host of SLURM_STEP_NODELIST (where task 0 runs: srun's
default block distribution) and a port derived from the job and step ids; an MPI
broadcast (mpi4py) under mpirun.
"""
import hashlib
import os
import re

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


def expand_hostlist(text):
    """Slurm's hostlist syntax to host names, in order, without calling scontrol:
    'node[01-03,07],gpu5' -> ['node01', 'node02', 'node03', 'node07', 'gpu5'];
    several brackets in one name expand as a product ('r[1-2]n[1-2]' -> r1n1, r1n2, r2n1,
    r2n2); zero padding is kept. Raises InvalidArgument naming a malformed entry."""
    names = []
    for item in _top_level_split(text.strip()):
        if not item:
            raise InvalidArgument(f"hostlist {text!r}: empty entry")
        names.extend(_expand_one(item, text))
    return names


def _top_level_split(text):
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += (c == "[") - (c == "]")
        if depth < 0 or depth > 1:
            raise InvalidArgument(f"hostlist {text!r}: unbalanced or nested brackets")
        if c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise InvalidArgument(f"hostlist {text!r}: unclosed bracket")
    parts.append(text[start:])
    return parts


def _expand_one(item, text):
    m = re.match(r"([^\[]*)\[([^\]]*)\](.*)$", item)
    if not m:
        return [item]
    prefix, ranges, rest = m.groups()
    tails = _expand_one(rest, text) if rest else [""]
    out = []
    for part in ranges.split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise InvalidArgument(f"hostlist {text!r}: bad range {part!r} in {item!r}")
        hi = hi if sep else lo
        if int(hi) < int(lo):
            raise InvalidArgument(f"hostlist {text!r}: range {part!r} runs backwards")
        width = len(lo) if lo.startswith("0") else 0
        out.extend(f"{prefix}{n:0{width}d}{t}" for n in range(int(lo), int(hi) + 1) for t in tails)
    return out


def slurm_port(job_id, step_id):
    """The rendezvous port of a Slurm step: the same on every task without talking, and
    different for steps that may run at once (several sruns in one allocation). Kept
    out of Linux's ephemeral range (32768-60999) so a client socket rarely holds it."""
    return 12000 + (int(job_id) * 64 + int(step_id)) % 20000


def under_slurm(environ=os.environ):
    """Inside an srun step (not merely in an allocation, where sbatch's script runs)."""
    return all(environ.get(k) not in (None, "") for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NODELIST",
                                                           "SLURM_JOB_ID", "SLURM_STEP_ID"))


def slurm_master(environ=os.environ):
    """(MASTER_ADDR, MASTER_PORT) for an srun step: task 0's host and the step's port.
    SLURM_SRUN_COMM_HOST is not it (that is where srun runs, maybe a login node)."""
    hosts = expand_hostlist(environ["SLURM_STEP_NODELIST"])
    return hosts[0], slurm_port(environ["SLURM_JOB_ID"], environ["SLURM_STEP_ID"])


def adopt_slurm_environment(environ=os.environ):
    """Under srun, fill in torch's env:// variables (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT, ...) from Slurm's, so init_process_group("hcomm") works
    unchanged. Variables already set win. Returns True when it ran."""
    if not under_slurm(environ):
        return False
    names = {"RANK": "SLURM_PROCID", "WORLD_SIZE": "SLURM_NTASKS", "LOCAL_RANK": "SLURM_LOCALID",
             "GROUP_RANK": "SLURM_NODEID", "LOCAL_WORLD_SIZE": "SLURM_NTASKS_PER_NODE"}
    for torch_name, slurm_name in names.items():
        value = environ.get(slurm_name, "")
        if torch_name not in environ and value.isdigit():  # NTASKS_PER_NODE may read "2(x3)"
            environ[torch_name] = value
    if "MASTER_ADDR" not in environ or "MASTER_PORT" not in environ:
        addr, port = slurm_master(environ)
        environ.setdefault("MASTER_ADDR", addr)
        environ.setdefault("MASTER_PORT", str(port))
    return True


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


def _from_master(rank, size, timeout, addr=None, port=None):
    if addr is None:
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
    if under_slurm():
        addr, port = slurm_master()
        return _from_master(rank, size, timeout, addr, port)
    if under_mpi():
        return _from_mpi(rank, size, timeout)
    raise InvalidArgument("no way to meet the other ranks: pass unique_id=, set HCOMM_UNIQUE_ID or "
                          "MASTER_ADDR/MASTER_PORT, or launch with torchrun, srun or mpirun")
