"""Where the ranks come from: a launcher's environment, or ranks we spawn ourselves.

Under mpirun, torchrun or srun every process is a rank and reads its place from the
environment (`detect_world`). Run by hand, hcomm-bench is a parent that spawns
--ranks local ranks for hcomm and gloo (torchrun's variables plus HCOMM_UNIQUE_ID, so
a child looks exactly like a torchrun rank), or one `mpirun` for the MPI peer, and
reads each rank 0's result file.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from typing import Optional

MPIRUN_FLAGS = ("--oversubscribe", "--allow-run-as-root")


class UsageError(ValueError):
    """A benchmark that cannot run as asked (flags against the world); printed, exit 2."""


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    launcher: str                    # "mpirun", "torchrun", "slurm"
    master_addr: Optional[str] = None
    master_port: Optional[int] = None
    unique_id: Optional[str] = None  # hcomm's, when handed down in HCOMM_UNIQUE_ID


def _int_env(env, name):
    try:
        return int(env[name])
    except ValueError:
        raise UsageError(f"environment variable {name}={env[name]!r} is not an integer") from None


def detect_world(env=None):
    """The World this process is a rank of, or None when no launcher started it."""
    env = os.environ if env is None else env
    if "OMPI_COMM_WORLD_RANK" in env and "OMPI_COMM_WORLD_SIZE" in env:
        rank, size, launcher = _int_env(env, "OMPI_COMM_WORLD_RANK"), _int_env(env, "OMPI_COMM_WORLD_SIZE"), "mpirun"
    elif "RANK" in env and "WORLD_SIZE" in env:
        rank, size, launcher = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE"), "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        rank, size, launcher = _int_env(env, "SLURM_PROCID"), _int_env(env, "SLURM_NTASKS"), "slurm"
    else:
        return None
    if not 0 <= rank < size:
        raise UsageError(f"{launcher} environment gives rank {rank} outside world size {size}")
    port = env.get("MASTER_PORT")
    return World(rank, size, launcher, env.get("MASTER_ADDR"), int(port) if port else None,
                 env.get("HCOMM_UNIQUE_ID") or None)


def free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def complete_world(world, need_unique_id):
    """Fill in what the launcher did not hand out: under mpirun, rank 0 picks the gloo
    rendezvous address and hcomm's unique id and broadcasts them over MPI."""
    missing_master = world.master_addr is None or world.master_port is None
    if world.launcher != "mpirun" or not (missing_master or (need_unique_id and not world.unique_id)):
        return world
    try:
        from mpi4py import MPI
    except ImportError:
        return world  # the runners say what is missing
    mine = None
    if world.rank == 0:
        uid = world.unique_id
        if need_unique_id and not uid:
            import hcomm
            uid = hcomm.get_unique_id()
        mine = (world.master_addr or socket.gethostname(), world.master_port or free_port(), uid)
    addr, port, uid = MPI.COMM_WORLD.bcast(mine, root=0)
    return replace(world, master_addr=addr, master_port=port, unique_id=uid)


def child_env(rank, size, port, unique_id):
    """Environment of a spawned rank: torchrun's variables, minus any launcher's we inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "SLURM_"))}
    env.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # torchrun's default for several ranks per host: an intra-op thread pool per rank
    # would oversubscribe the cores and spin against the other ranks
    env.setdefault("OMP_NUM_THREADS", "1")
    if unique_id:
        env["HCOMM_UNIQUE_ID"] = unique_id
    else:
        env.pop("HCOMM_UNIQUE_ID", None)
    return env


@dataclass
class Launched:
    """Outcome of one spawned run: exit codes and what rank 0 / the ranks wrote on stderr."""

    returncodes: list
    timed_out: bool
    stderr_tail: str


def _tail(paths, lines=15):
    out = []
    for label, path in paths:
        if path is None or not os.path.exists(path):
            continue
        with open(path, errors="replace") as f:
            text = f.read().strip().splitlines()[-lines:]
        if text:
            out.append(f"[{label}]\n" + "\n".join(text))
    return "\n".join(out)


def _stop(procs):
    """Kill the process groups of the ranks we started (mpirun takes its ranks with it)."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in procs:
        p.wait()


def _wait_all(procs, timeout):
    """Wait for every process; stop the rest as soon as one fails or time runs out."""
    end = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        if time.monotonic() > end:
            _stop(procs)
            return True
        if any(p.poll() not in (None, 0) for p in procs):
            time.sleep(0.5)  # let the others report their own error first
            _stop(procs)
            return False
        time.sleep(0.02)
    return False


def _die_with_parent():
    """In the child before exec: Linux sends SIGKILL when the parent dies, so ranks
    never outlive a parent that was itself killed (a test timeout, ^C twice)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: _stop() still cleans up on every normal exit path


def _start(cmd, env, stderr_path, inherit_stderr):
    err = None if inherit_stderr else open(stderr_path, "w")
    try:
        # own process group: a timeout can kill a rank and everything it started
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                preexec_fn=_die_with_parent)
    finally:
        if err is not None:
            err.close()


def spawn_local(worker_args, size, unique_id, timeout, workdir, show_rank0):
    """Run `python -m hcomm.bench <worker_args>` as `size` local ranks."""
    port = free_port()
    cmd = [sys.executable, "-m", "hcomm.bench", *worker_args]
    paths = [(f"rank {r}", os.path.join(workdir, f"rank{r}.err")) for r in range(size)]
    procs = [_start(cmd, child_env(r, size, port, unique_id), paths[r][1], show_rank0 and r == 0)
             for r in range(size)]
    try:
        timed_out = _wait_all(procs, timeout)
    finally:
        _stop(procs)
    return Launched([p.returncode for p in procs], timed_out, _tail(paths))


def mpirun_command(size, worker_args):
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        return None
    return [mpirun, *MPIRUN_FLAGS, "-np", str(size), sys.executable, "-m", "hcomm.bench", *worker_args]


def spawn_mpirun(cmd, timeout, workdir, show_rank0):
    """Run the MPI peer under mpirun (`cmd` from mpirun_command)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "HCOMM_UNIQUE_ID")}
    env.setdefault("OMP_NUM_THREADS", "1")
    path = os.path.join(workdir, "mpirun.err")
    proc = _start(cmd, env, path, show_rank0)
    try:
        timed_out = _wait_all([proc], timeout)
    finally:
        _stop([proc])
    return Launched([proc.returncode], timed_out, _tail([("mpirun", path)]))
