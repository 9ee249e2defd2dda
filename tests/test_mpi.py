"""hcomm on MPI, launched by mpirun from pytest: the mpi transport (HCOMM_TRANSPORT), the
native algorithm (MPI's own collectives), and DDP training under mpirun.

Each test runs this file under `mpirun -np N python test_mpi.py <job>`; the job checks
every rank's results against numpy references (tests/reference.py) and prints one
"ok" line per rank. Skipped where mpirun is missing or hcomm was built without MPI.

    np 2  every peer over MPI; MPI initialised by mpi4py (hcomm.init's unique-id broadcast)
    np 3  every peer over MPI; MPI initialised by hcomm itself (MASTER_ADDR given, no mpi4py)
    np 4  two simulated hosts (HCOMM_HOST_ID): shm inside, MPI between (inter:mpi), so
          hierarchical runs shm + MPI
and each job then repeats the collectives with HCOMM_ALGO=native.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BIG = 20011  # odd, many 4 KiB segments
JOB_TIMEOUT = 150


# ---------------------------------------------------------------- the launching side
def _require_mpi():
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed")
    import hcomm

    if not hcomm.build_config()["with_mpi"]:
        pytest.skip("hcomm was built without MPI (HCOMM_WITH_MPI=0)")


def _job_env(extra):
    """The test process may carry another launcher's variables; the job must not."""
    drop = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
            "HCOMM_UNIQUE_ID", "HCOMM_ALGO", "HCOMM_TRANSPORT", "HCOMM_MPI", "HCOMM_HOST_ID")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("OMPI_", "PMIX_"))}
    env.update({
        "OMP_NUM_THREADS": "1",
        # Open MPI refuses root without these; CI containers run as root.
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        # More ranks than cores: MPI's blocking waits must give the core away.
        "OMPI_MCA_mpi_yield_when_idle": "1",
        "HCOMM_TIMEOUT": "60",
        "HCOMM_RING_SEGMENT_BYTES": "4096", "HCOMM_TREE_SEGMENT_BYTES": "4096",
        "PYTHONPATH": HERE + os.pathsep + env.get("PYTHONPATH", ""),
    })
    env.update(extra)
    return env


def _mpirun(n, job, **extra):
    cmd = [shutil.which("mpirun"), "--oversubscribe", "--allow-run-as-root", "-np", str(n), sys.executable,
           os.path.abspath(__file__), job]
    proc = subprocess.run(cmd, env=_job_env(extra), capture_output=True, text=True, timeout=JOB_TIMEOUT, cwd=HERE)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}"
    for r in range(n):
        assert f"rank {r}/{n} {job} ok" in proc.stdout, out[-6000:]
    return proc.stdout


def test_mpi_transport_and_native_2_ranks():
    _require_mpi()
    _mpirun(2, "collectives", HCOMM_TRANSPORT="mpi")


def test_mpi_transport_and_native_3_ranks_hcomm_initialises_mpi():
    _require_mpi()
    from harness import free_port

    _mpirun(3, "collectives", HCOMM_TRANSPORT="mpi", HCOMM_EXPECT_MPI4PY="0", MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()))


def test_two_simulated_hosts_shm_inside_mpi_between_4_ranks():
    _require_mpi()
    _mpirun(4, "collectives", HCOMM_TRANSPORT="inter:mpi", HCOMM_SIM_HOSTS="2")


def test_ddp_training_under_mpirun_4_ranks():
    _require_mpi()
    pytest.importorskip("mpi4py")
    _mpirun(4, "ddp", HCOMM_TRANSPORT="inter:mpi", HCOMM_SIM_HOSTS="2")


def test_mismatched_collective_over_mpi_raises():
    _require_mpi()
    _mpirun(2, "mismatch", HCOMM_TRANSPORT="mpi")


def test_native_without_mpi_raises_clearly(monkeypatch):
    import hcomm

    monkeypatch.setenv("HCOMM_MPI", "0")
    with hcomm.init(rank=0, size=1) as comm:
        x = np.ones(3, np.float32)
        with pytest.raises(hcomm.Error, match="native.*needs MPI"):
            comm.broadcast(x, algo="native")
        monkeypatch.setenv("HCOMM_ALGO", "native")
        with pytest.raises(hcomm.Error, match="needs MPI"):
            comm.barrier()
    monkeypatch.setenv("HCOMM_TRANSPORT", "mpi")
    with pytest.raises(hcomm.Error, match="HCOMM_MPI=0"):
        hcomm.init(rank=0, size=1)


def test_bad_transport_setting_is_named(monkeypatch):
    import hcomm

    monkeypatch.setenv("HCOMM_TRANSPORT", "inter:carrier-pigeon")
    with pytest.raises(hcomm.Error, match="HCOMM_TRANSPORT.*inter:carrier-pigeon"):
        hcomm.init(rank=0, size=1)


# ---------------------------------------------------------------- the job side (under mpirun)
ALLREDUCE_CASES = [  # (dtype, op, count): every dtype, every op, odd counts
    ("float32", "sum", BIG), ("float32", "avg", 1001), ("float32", "premul_sum", 7), ("float64", "max", 1001),
    ("float64", "prod", 13), ("bfloat16", "sum", 1001), ("float16", "min", 333), ("int8", "prod", 1001),
    ("uint8", "sum", 1), ("int32", "avg", 1001), ("int64", "max", BIG), ("bool", "min", 77), ("bool", "sum", 77),
    ("float32", "sum", 0),
]


def _allreduces(comm, algos, seed):
    """algos run through HCOMM_ALGO (read at every call), which also reaches the ones
    the Python API does not list yet (hierarchical)."""
    for algo in algos:
        _with_env("HCOMM_ALGO", algo, lambda: _allreduce_cases(comm, algo, seed))


def _with_env(name, value, fn):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        return fn()
    finally:
        os.environ[name] = old if old is not None else ""


def _allreduce_cases(comm, algo, seed):
    from reference import check, copy, empty_like, make, premul, reduce_ref

    n, r = comm.size, comm.rank
    for i, (dtype, op, count) in enumerate(ALLREDUCE_CASES):
        inputs = [make(dtype, count, q, seed + i, op) for q in range(n)]
        x = copy(inputs[r])
        factor = premul(dtype) if op == "premul_sum" else None
        what = f"allreduce {algo} {dtype} {op} count={count} rank {r}/{n}"
        if i % 2:
            comm.allreduce(x, op=op, factor=factor)
            out = x
        else:
            out = empty_like(x)
            comm.allreduce(x, out, op=op, factor=factor)
        check(out, reduce_ref(inputs, op, dtype), dtype, n, what)
        _expect_algo(comm, algo, what)


def _expect_algo(comm, algo, what):
    want = "native" if os.environ.get("HCOMM_ALGO") == "native" else algo
    assert comm._c.last_algorithm() == want, f"{what}: ran {comm._c.last_algorithm()}, expected {want}"
    # The flight record says what ran: MPI's own collective, or the algorithm over its
    # transports; a split communicator of one rank copies locally.
    ran = comm.flight_record()["entries"][-1]["ran"]
    if comm.size == 1:
        assert ran == "local (1 rank)", f"{what}: recorded {ran!r}"
    else:
        assert ran == "native mpi" if want == "native" else ran.startswith(want + " over "), f"{what}: recorded {ran!r}"


def _rooted(comm, seed):
    from hcomm import explain
    from hcomm._buffers import ITEMSIZE
    from reference import check, copy, make, reduce_ref, zeros

    n, r = comm.size, comm.rank
    for i, (dtype, count) in enumerate([("float32", 1001), ("int32", BIG), ("bfloat16", 7), ("uint8", 0)]):
        for root in range(n):
            inputs = [make(dtype, count, q, seed + 100 * i + root) for q in range(n)]
            for op in ("sum", "max"):
                out = zeros(dtype, count)
                comm.reduce(copy(inputs[r]), out, root=root, op=op)
                if r == root:
                    check(out, reduce_ref(inputs, op, dtype), dtype, n, f"reduce {dtype} {op} root {root}")
            x = inputs[r] if r == root else zeros(dtype, count)
            comm.broadcast(x, root=root)
            check(x, reduce_ref([inputs[root]], "max", dtype) if dtype != "bfloat16" else inputs[root].double().numpy(),
                  dtype, 1, f"broadcast {dtype} root {root}")
            planned = explain("broadcast", count * ITEMSIZE[dtype], comm=comm, root=root).chosen  # the tuner's pick
            _expect_algo(comm, planned, f"broadcast root {root}")


def _gathers(comm, seed):
    from hcomm import explain
    from hcomm._buffers import ITEMSIZE
    from reference import check, make, reduce_ref, zeros

    n, r = comm.size, comm.rank
    counts = [2 * q + 1 for q in range(n)]  # uneven, odd
    parts = [make("float32", counts[q], q, seed) for q in range(n)]
    out = np.zeros(sum(counts), np.float32)
    comm.allgatherv(parts[r], out, counts)
    np.testing.assert_array_equal(out, np.concatenate(parts), "allgatherv")
    _expect_algo(comm, explain("allgather", sum(counts) * 4, comm=comm).chosen, "allgatherv")  # the tuner's pick
    # in place: this rank's block already sits in the output
    out = np.concatenate([parts[q] if q == r else np.zeros(counts[q], np.float32) for q in range(n)])
    start = sum(counts[:r])
    comm.allgatherv(out[start:start + counts[r]], out, counts)
    np.testing.assert_array_equal(out, np.concatenate(parts), "allgatherv in place")
    for dtype, op in (("float32", "sum"), ("int64", "max"), ("bfloat16", "avg")):
        inputs = [make(dtype, sum(counts), q, seed + 1, op) for q in range(n)]
        expected = reduce_ref(inputs, op, dtype)
        out = zeros(dtype, counts[r])
        comm.reduce_scatterv(inputs[r], out, counts, op=op)
        check(out, expected[start:start + counts[r]], dtype, n, f"reduce_scatterv {dtype} {op}")
        planned = explain("reduce_scatter", sum(counts) * ITEMSIZE[dtype], comm=comm, dtype=dtype).chosen
        _expect_algo(comm, planned, f"reduce_scatterv {dtype}")  # the tuner's pick, native priced from init
    comm.barrier()
    _expect_algo(comm, "dissemination", "barrier")


def _hcomm_only(comm, seed):
    """Collectives native leaves to hcomm, and point to point, over the job's transports."""
    from reference import make

    n, r = comm.size, comm.rank
    blocks = [make("int32", 5 * n, q, seed) for q in range(n)]
    out = np.zeros(5 * n, np.int32)
    comm.alltoall(blocks[r], out)
    np.testing.assert_array_equal(out, np.concatenate([b[5 * r:5 * r + 5] for b in blocks]), "alltoall")
    if r == 0:
        for _ in range(n - 1):  # any-source receives: matched through the transport's probe
            got = np.zeros(3, np.int64)
            src = comm.recv(got, tag=9)
            np.testing.assert_array_equal(got, [src, 2 * src, BIG], "recv from any source")
    else:
        comm.send(np.array([r, 2 * r, BIG], np.int64), 0, tag=9)
    big = make("float64", BIG, 0, seed)  # above the eager limit: MPI's rendezvous path
    if r == 0:
        comm.send(big, n - 1, tag=3)
    elif r == n - 1:
        got = np.zeros(BIG)
        comm.recv(got, 0, tag=3)
        np.testing.assert_array_equal(got, big, "large send/recv")


def _split(comm, algos, seed):
    sub = comm.split(comm.rank % 2, key=-comm.rank)  # reversed order inside each half
    members = [q for q in range(comm.size) if q % 2 == comm.rank % 2][::-1]
    assert sub.size == len(members) and members[sub.rank] == comm.rank, (sub.size, sub.rank)
    for algo in algos:
        x = np.full(9, comm.rank + 1, np.float64)
        _with_env("HCOMM_ALGO", algo, lambda: sub.allreduce(x))
        _expect_algo(sub, algo, f"split allreduce {algo}")
        np.testing.assert_allclose(x, sum(q + 1 for q in members), err_msg=f"split allreduce {algo}")
    x = np.array([float(comm.rank)] * 4)
    sub.broadcast(x, root=sub.size - 1)
    np.testing.assert_array_equal(x, members[-1], "split broadcast")
    sub.close()


def _simulate_hosts():
    """HCOMM_SIM_HOSTS=k: rank r claims host r * k // size (set before hcomm reads it)."""
    hosts = int(os.environ.get("HCOMM_SIM_HOSTS", "0"))
    if hosts:
        r, n = int(os.environ["OMPI_COMM_WORLD_RANK"]), int(os.environ["OMPI_COMM_WORLD_SIZE"])
        os.environ["HCOMM_HOST_ID"] = f"simulated-host-{r * hosts // n}"
    return hosts


def job_collectives():
    import hcomm

    hosts = _simulate_hosts()
    comm = hcomm.init()
    n, r = comm.size, comm.rank
    _check_transports(comm, hosts)
    if os.environ.get("HCOMM_EXPECT_MPI4PY") == "0":
        assert "mpi4py" not in sys.modules, "this job is meant to have hcomm initialise MPI itself"
    algos = ["ring", "tree", "halving_doubling"] + (["hierarchical"] if hosts > 1 else [])
    _allreduces(comm, algos, seed=11)
    _rooted(comm, seed=12)
    _gathers(comm, seed=13)
    _hcomm_only(comm, seed=14)
    _split(comm, algos, seed=15)
    os.environ["HCOMM_ALGO"] = "native"  # read at every call: from here on MPI's own collectives
    _allreduces(comm, ["native"], seed=21)
    _rooted(comm, seed=22)
    _gathers(comm, seed=23)
    _split(comm, ["native"], seed=25)
    os.environ["HCOMM_ALGO"] = ""
    _native_priced(comm)
    _native_size_rule(comm)
    _deterministic_refuses_native(comm)
    comm.close()
    print(f"rank {r}/{n} collectives ok", flush=True)


def _deterministic_refuses_native(comm):
    """HCOMM_DETERMINISTIC=1 (read at every call): MPI's own floating sums are refused,
    with the reason, on every rank before any byte moves; exact ones (integers) still run;
    the size rule no longer hands allreduce to MPI."""
    import hcomm

    os.environ["HCOMM_DETERMINISTIC"] = "1"
    try:
        for call in (lambda x: comm.allreduce(x, algo="native"), lambda x: comm.reduce(x, root=0, algo="native")):
            with pytest.raises(hcomm.Error, match="HCOMM_DETERMINISTIC=1 asks for the sum in rank order"):
                call(np.ones(7, np.float32))
        x = np.full(5, comm.rank + 1, np.int32)
        comm.allreduce(x, algo="native")
        assert comm._c.last_algorithm() == "native" and x[0] == comm.size * (comm.size + 1) // 2
        def sized():
            comm.allreduce(np.ones(7, np.float32))
            assert comm._c.last_algorithm() != "native"

        _with_env("HCOMM_NATIVE_BYTES", "0-", sized)
    finally:
        del os.environ["HCOMM_DETERMINISTIC"]


def job_mismatch():
    """Ranks that disagree on a collective's count get an hcomm.Error naming it, within
    the timeout, over the MPI transport (the size/signature travels in the header)."""
    import hcomm

    comm = hcomm.init()
    comm.timeout = 5
    x = np.ones(5 + 1000 * comm.rank, np.float32)
    with_error = None
    try:
        comm.allreduce(x, algo="ring")
    except hcomm.Error as e:
        with_error = str(e)
    assert with_error is not None, "a mismatched allreduce succeeded"
    # The signature check must name the mismatch; a plain timeout would mean it never ran.
    assert "allreduce" in with_error and "mismatch" in with_error, with_error
    print(f"rank {comm.rank}/{comm.size} mismatch ok: {with_error[:160]}", flush=True)


def _native_priced(comm):
    """MPI's own collectives are timed at init and priced like any candidate: every rank
    sees the same price (the probe's slowest rank), and the automatic choice is the
    cheapest applicable candidate, native included; a 16-bit sum on 3+ ranks (float32
    fold in rank order) never goes to MPI."""
    from hcomm import explain

    for collective in ("allreduce", "broadcast", "allgather", "reduce_scatter", "reduce"):
        for nbytes in (8, 1 << 20):
            e = explain(collective, nbytes, comm=comm)
            nat = e.candidate("native")
            assert nat.applicable and nat.seconds > 0, str(e)
            prices = np.array([nat.seconds])
            comm.allreduce(prices, op="max")
            assert prices[0] == nat.seconds, f"{collective}: ranks price native differently"
            best = min((c for c in e.candidates if c.applicable), key=lambda c: c.seconds)
            assert e.chosen == best.algo, str(e)
    if comm.size > 2:
        e = explain("allreduce", 8, comm=comm, dtype="bfloat16")
        assert not e.candidate("native").applicable and e.chosen != "native", str(e)


def _native_size_rule(comm):
    """HCOMM_NATIVE_BYTES: the tuner hands allreduce to MPI inside the range only."""
    os.environ["HCOMM_NATIVE_BYTES"] = "4K-64K"
    try:
        for count, want_native in ((1023, False), (1024, True), (16383, True), (16384, False)):
            x = np.full(count, comm.rank + 1, np.float32)
            comm.allreduce(x)
            np.testing.assert_array_equal(x, comm.size * (comm.size + 1) / 2, f"size rule, count {count}")
            ran = comm._c.last_algorithm()
            assert (ran == "native") == want_native, f"{count * 4} bytes ran {ran}"
        assert comm._c.choose_allreduce(1 << 20, "ring") == "ring"  # a request still wins
    finally:
        os.environ["HCOMM_NATIVE_BYTES"] = ""


def _check_transports(comm, hosts):
    n, r = comm.size, comm.rank
    names = comm.transports()
    if os.environ.get("HCOMM_TRANSPORT") == "mpi":
        assert names == ["mpi"] * n, names
    elif hosts:
        host = [q * hosts // n for q in range(n)]
        want = ["shm" if host[q] == host[r] else "mpi" for q in range(n)]
        assert names == want, (names, want)


def job_ddp():
    """DDP on init_process_group("hcomm") under mpirun: per-step global loss and final
    parameters equal a single-process run on the concatenated batch; then again with
    HCOMM_ALGO=native."""
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    _simulate_hosts()
    import hcomm.torch  # noqa: F401 - registers "hcomm"; fills torch's env:// from mpirun

    dist.init_process_group("hcomm")
    r, n = dist.get_rank(), dist.get_world_size()
    ref_losses, ref_params = _ddp_reference(n)
    for algo in ("", "native"):
        os.environ["HCOMM_ALGO"] = algo
        torch.manual_seed(0)
        model = DDP(_ddp_model(), bucket_cap_mb=0.001)  # several buckets
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step, batch in enumerate(_ddp_batches(n)):
            x, y = batch[r]
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            total = loss.detach().clone()
            dist.all_reduce(total)
            torch.testing.assert_close(total / n, ref_losses[step], rtol=1e-5, atol=1e-6,
                                       msg=f"DDP ({algo or 'auto'}) loss at step {step}")
        for k, (a, b) in enumerate(zip(model.module.parameters(), ref_params)):
            torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-6, msg=f"DDP ({algo}) param {k}")
    dist.destroy_process_group()
    print(f"rank {r}/{n} ddp ok", flush=True)


def _ddp_model():
    import torch.nn as nn

    return nn.Sequential(nn.Linear(13, 31), nn.Tanh(), nn.Linear(31, 17), nn.Tanh(), nn.Linear(17, 5))


def _ddp_batches(n, steps=4, local=6):
    import torch

    g = torch.Generator().manual_seed(7)
    return [[(torch.randn(local, 13, generator=g), torch.randn(local, 5, generator=g)) for _ in range(n)]
            for _ in range(steps)]


def _ddp_reference(n):
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    model = _ddp_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for batch in _ddp_batches(n):
        x, y = torch.cat([b[0] for b in batch]), torch.cat([b[1] for b in batch])
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses, [p.detach() for p in model.parameters()]


if __name__ == "__main__":
    {"collectives": job_collectives, "ddp": job_ddp, "mismatch": job_mismatch}[sys.argv[1]]()
