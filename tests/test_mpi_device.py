"""Device buffers to other hosts over MPI, under mpirun, on the fake GPU (tests/fake_cuda).

HCOMM_TRANSPORT=inter:mpi puts the links between (simulated) hosts on MPI. Device
buffers to those peers then go either straight to MPI (the library is CUDA-aware) or
through host staging over MPI. The MPI here is not CUDA-aware, but fake device pointers
are host memory, so HCOMM_MPI_CUDA_AWARE=1 runs the real direct path: device pointers
handed to MPI_Isend / MPI_Irecv, reducing receives staged in (fake) device memory and
reduced with the device Memory. Every result is checked against numpy
(tests/reference.py), and comm._c.device_transports() names the route to each rank,
so each job asserts which path it took ("mpi": direct, "staging"):

    np 4, 2 hosts, =1         every collective and dtype; cuda_ipc inside a host, mpi between
    np 3, 3 hosts, =1, mpi    odd world, every link direct
    np 3, 2 hosts, =0         staging over MPI (as before this knob)
    np 2, 2 hosts, auto       the library's own answer; Open MPI's ompi_info is the reference
    np 2, 2 hosts, =1, inter:staging+mpi   the order puts staging first: staged anyway
Also: a bad HCOMM_MPI_CUDA_AWARE raises at init, naming it.
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
JOB_TIMEOUT = 240


# ---------------------------------------------------------------- the launching side
def _run(n, job, **extra):
    from test_mpi import _job_env, _require_mpi

    import fake_device

    _require_mpi()
    # Small pieces everywhere, so that messages of a few thousand elements are pipelines.
    env = fake_device.child_env(devices=1, base=_job_env({}), HCOMM_NCCL="0", HCOMM_CUDA_IPC_SLOT_BYTES="4096",
                                HCOMM_CUDA_IPC_SLOTS="2", HCOMM_MPI_PIECE_BYTES="4096",
                                HCOMM_STAGING_PIECE_BYTES="4096", HCOMM_STAGING_PIECES="2", **extra)
    cmd = [shutil.which("mpirun"), "--oversubscribe", "--allow-run-as-root", "-np", str(n), sys.executable,
           os.path.abspath(__file__), job]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT, cwd=HERE)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}"
    for r in range(n):
        assert f"rank {r}/{n} {job} ok" in proc.stdout, out[-6000:]
    return proc.stdout


def _library_says_cuda():
    """Open MPI's own answer, from ompi_info (independent of hcomm's run-time query)."""
    info = shutil.which("ompi_info")
    if info is None:
        pytest.skip("ompi_info is not installed: no reference for the library's CUDA support")
    out = subprocess.run([info, "--parsable", "--all"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"mpi_built_with_cuda_support:value:(true|false)", out)
    if m is None:
        pytest.skip("ompi_info does not say whether this Open MPI has CUDA support")
    return m.group(1) == "true"


def test_cuda_aware_mpi_carries_device_buffers_directly_4_ranks_2_hosts():
    _run(4, "every", HCOMM_TRANSPORT="inter:mpi", HCOMM_SIM_HOSTS="2", HCOMM_MPI_CUDA_AWARE="1",
         HCOMM_EXPECT_REMOTE="mpi")


def test_cuda_aware_mpi_every_link_odd_world_3_hosts():
    _run(3, "some", HCOMM_TRANSPORT="mpi", HCOMM_SIM_HOSTS="3", HCOMM_MPI_CUDA_AWARE="1",
         HCOMM_EXPECT_REMOTE="mpi")


def test_mpi_not_cuda_aware_stages_device_buffers_3_ranks():
    _run(3, "some", HCOMM_TRANSPORT="inter:mpi", HCOMM_SIM_HOSTS="2", HCOMM_MPI_CUDA_AWARE="0",
         HCOMM_EXPECT_REMOTE="staging")


def test_auto_follows_what_the_library_says():
    want = "mpi" if _library_says_cuda() else "staging"
    _run(2, "some", HCOMM_TRANSPORT="inter:mpi", HCOMM_SIM_HOSTS="2", HCOMM_EXPECT_REMOTE=want)


def test_order_with_staging_first_stages_even_when_cuda_aware():
    _run(2, "some", HCOMM_TRANSPORT="inter:staging+mpi", HCOMM_SIM_HOSTS="2", HCOMM_MPI_CUDA_AWARE="1",
         HCOMM_EXPECT_REMOTE="staging")


def test_bad_cuda_aware_setting_raises_at_init():
    _run(2, "bad_knob", HCOMM_TRANSPORT="inter:mpi", HCOMM_SIM_HOSTS="2", HCOMM_MPI_CUDA_AWARE="maybe")


# ---------------------------------------------------------------- the job side (under mpirun)
def _init():
    from test_mpi import _simulate_hosts

    import hcomm

    hosts = _simulate_hosts()
    return hcomm.init(), hosts


def _check_routes(comm, hosts):
    """The route to each rank: this host over cuda_ipc, other hosts over the expected one."""
    n, r = comm.size, comm.rank
    host = [q * hosts // n for q in range(n)]
    remote = os.environ["HCOMM_EXPECT_REMOTE"]
    want = ["self" if q == r else "cuda_ipc" if host[q] == host[r] else remote for q in range(n)]
    got = comm._c.device_transports()
    assert got == want, (got, want)
    # Host buffers keep their own routes: shm inside a host, mpi between.
    host_want = ["mpi" if os.environ["HCOMM_TRANSPORT"] == "mpi" or host[q] != host[r] else "shm" for q in range(n)]
    assert comm.transports() == host_want, (comm.transports(), host_want)


def job_every():
    """Every collective, dtype and op (tests/test_device_collectives.py's checks)."""
    import fake_device
    from test_device_collectives import _check_moves, _check_p2p_async, _check_reductions

    comm, hosts = _init()
    cuda = fake_device.FakeCuda()
    algos = ["ring", "tree", "halving_doubling", "hierarchical"]
    checks = _check_reductions(comm, cuda, 31, algos) + _check_moves(comm, cuda, 32) + _check_p2p_async(comm, cuda, 33)
    assert checks > 500, checks
    _check_routes(comm, hosts)
    comm.close()
    print(f"rank {comm.rank}/{comm.size} every ok", flush=True)


def job_some():
    """A few collectives with odd sizes that span several 4 KiB pieces."""
    import fake_device
    import reference as ref
    from test_device_collectives import empty_dev, from_dev, to_dev

    comm, hosts = _init()
    cuda = fake_device.FakeCuda()
    n, me = comm.size, comm.rank
    for dtype, op in (("float32", "sum"), ("bfloat16", "sum"), ("int32", "max"), ("float64", "avg")):
        for count in (1, 3001):
            inputs = [ref.make(dtype, count, r, 41, op) for r in range(n)]
            want = ref.reduce_ref(inputs, op, dtype)
            for algo in ("ring", "tree", "halving_doubling") + (("hierarchical",) if hosts < n else ()):
                x = to_dev(cuda, inputs[me], dtype)
                if algo == "hierarchical":
                    from test_device_collectives import allreduce
                    allreduce(comm, x, op, algo, None)
                else:
                    comm.allreduce(x, op=op, algo=algo)
                ref.check(from_dev(x, dtype), want, dtype, n, f"allreduce {algo} {dtype} {op} {count}")
            per = count // n
            rs = empty_dev(cuda, dtype, per)
            comm.reduce_scatter(to_dev(cuda, inputs[me][: per * n], dtype), rs, op=op)
            ref.check(from_dev(rs, dtype), want[me * per:(me + 1) * per], dtype, n, f"reduce_scatter {dtype}")
    x = to_dev(cuda, ref.make("float32", 2047, me, 42) if me == n - 1 else ref.zeros("float32", 2047), "float32")
    comm.broadcast(x, root=n - 1)
    np.testing.assert_array_equal(from_dev(x, "float32"), ref.make("float32", 2047, n - 1, 42))
    out = empty_dev(cuda, "int8", 1001 * n)
    comm.allgather(to_dev(cuda, ref.make("int8", 1001, me, 43), "int8"), out)
    want = np.concatenate([ref.make("int8", 1001, r, 43) for r in range(n)])
    np.testing.assert_array_equal(from_dev(out, "int8"), want)
    _check_routes(comm, hosts)
    comm.close()
    print(f"rank {me}/{n} some ok", flush=True)


def job_bad_knob():
    import hcomm
    from test_mpi import _simulate_hosts

    _simulate_hosts()
    with pytest.raises(hcomm.Error, match="HCOMM_MPI_CUDA_AWARE must be 0, 1 or auto, got 'maybe'"):
        hcomm.init()
    r, n = os.environ["OMPI_COMM_WORLD_RANK"], os.environ["OMPI_COMM_WORLD_SIZE"]
    print(f"rank {r}/{n} bad_knob ok", flush=True)


if __name__ == "__main__":
    {"every": job_every, "some": job_some, "bad_knob": job_bad_knob}[sys.argv[1]]()
