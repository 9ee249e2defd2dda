"""NCCL inside hcomm.init()'s Communicator, on the fake GPU and fake NCCL (tests/fake_cuda).

When every rank of a communicator has a GPU of its own and NCCL loads, the first device
collective sets up an NCCL communicator through hcomm's own bootstrap (bus ids gathered,
the unique id broadcast over the host transports) and times NCCL's allreduce at two
sizes (HCOMM_NCCL_COST replaces the timing here, so that choices are known). NCCL is
then used two ways:
- whole collectives (algo="native" / HCOMM_ALGO=native, or where the tuner finds NCCL's
  measured price lower than hcomm's planned algorithm; not under HCOMM_DETERMINISTIC);
- point to point under hcomm's own algorithms, to the peers HCOMM_NCCL_P2P names (by
  default those on other hosts, which would otherwise go through host staging).
Ranks sharing a GPU keep hcomm's algorithms over cuda_ipc and say why. Results against
numpy on seeded data with odd sizes and odd world sizes.
"""
import numpy as np
import pytest

import fake_device
import reference as ref
from harness import run_comm

CHEAP = "0.001,1000000"  # HCOMM_NCCL_COST: NCCL wins every size
DEAR = "1000000000,0.001"  # ... and loses every size (1000 s a call)


def _own_gpus(comm, forced):
    cuda = fake_device.FakeCuda()
    n, me = comm.size, comm.rank
    dev = lambda x, dtype="float32": (fake_device.DeviceArray.from_numpy(x.float().numpy(), cuda=cuda, device=me,
                                                                         dtype=fake_device.BFLOAT16)
                                      if dtype == "bfloat16" else
                                      fake_device.DeviceArray.from_numpy(x, cuda=cuda, device=me))
    algo = "native" if forced else None
    for dtype in ("float32", "bfloat16", "int32", "float64"):
        for op in ("sum", "max", "avg", "premul_sum"):
            if dtype == "int32" and op in ("avg", "premul_sum"):
                continue
            factor = ref.premul(dtype) if op == "premul_sum" else None
            inputs = [ref.make(dtype, 1003, r, 11, op) for r in range(n)]
            want = ref.reduce_ref(inputs, op, dtype)
            x = dev(inputs[me], dtype)
            comm.allreduce(x, op=op, algo=algo, factor=factor)
            got = x.to_numpy()
            ref.check(fake_device.bf16_values(got) if dtype == "bfloat16" else got, want, dtype, n,
                      f"allreduce {dtype} {op}")
    assert comm._c.device_engine() == "nccl", comm._c.device_engine()
    inputs = [ref.make("float32", 999, r, 12) for r in range(n)]
    out = fake_device.DeviceArray(cuda, (999,), np.float32, device=me)
    comm.reduce(dev(inputs[me]), out=out, root=1, algo=algo)
    if me == 1:
        ref.check(out.to_numpy(), ref.reduce_ref(inputs, "sum", "float32"), "float32", n, "reduce")
    for root in range(n):
        x = dev(inputs[me] if me == root else np.zeros(999, np.float32))
        comm.broadcast(x, root=root, algo=algo)
        np.testing.assert_array_equal(x.to_numpy(), inputs[root])
    out = fake_device.DeviceArray(cuda, (999 * n,), np.float32, device=me)
    comm.allgather(dev(inputs[me]), out, algo=algo)
    np.testing.assert_array_equal(out.to_numpy(), np.concatenate(inputs))
    rs = fake_device.DeviceArray(cuda, (333,), np.float32, device=me)
    comm.reduce_scatter(dev(inputs[me]), rs)
    ref.check(rs.to_numpy(), ref.reduce_ref(inputs, "sum", "float32")[me * 333:(me + 1) * 333], "float32", n,
              "reduce_scatter")
    w = comm.allreduce(dev(inputs[me]), async_op=True, algo=algo)
    w.wait()
    w.synchronize()
    from hcomm import _C

    calls = 14 + 1 + n + 3  # allreduces, reduce, a broadcast per root, allgather, reduce_scatter, async
    assert _C._comm_device_native_calls(comm._c) == calls, _C._comm_device_native_calls(comm._c)  # all on NCCL
    return comm._c.device_engine()


@pytest.mark.parametrize("forced", [False, True])
def test_nccl_runs_device_collectives_when_each_rank_has_a_gpu(forced):
    env = fake_device.child_env(devices=3, HCOMM_NCCL_COST=CHEAP)
    engines = run_comm(_own_gpus, 3, mode="process", start_method="spawn", args=(forced,), env=env, timeout=120)
    assert engines == ["nccl"] * 3


def _world_of_one(comm):
    cuda = fake_device.FakeCuda()
    x = fake_device.DeviceArray.from_numpy(np.arange(7, dtype=np.float32), cuda=cuda)
    comm.allreduce(x, algo="native")
    np.testing.assert_array_equal(x.to_numpy(), np.arange(7, dtype=np.float32))
    return comm._c.device_engine()


def test_nccl_at_world_size_one_through_the_communicator():
    assert run_comm(_world_of_one, 1, mode="process", start_method="spawn", env=fake_device.child_env(devices=1)) == ["nccl"]


def _shared_gpu(comm):
    import hcomm

    cuda = fake_device.FakeCuda()
    x = fake_device.DeviceArray.from_numpy(np.ones(5, np.float32), cuda=cuda)
    comm.allreduce(x)  # hcomm's algorithms over cuda_ipc
    np.testing.assert_array_equal(x.to_numpy(), np.full(5, comm.size, np.float32))
    engine = comm._c.device_engine()
    with pytest.raises(hcomm.Error, match="'native' on device buffers needs NCCL: two ranks share GPU"):
        comm.allreduce(x, algo="native")
    return engine


def test_ranks_sharing_a_gpu_keep_hcomm_and_native_is_refused_with_the_reason():
    engines = run_comm(_shared_gpu, 2, mode="process", start_method="spawn", env=fake_device.child_env(devices=1), timeout=120)
    assert all(e.startswith("hcomm: two ranks share GPU") for e in engines), engines


# ---------------------------------------------------------------- NCCL point to point under hcomm's algorithms

def _dev(cuda, x, dtype, device):
    if dtype == "bfloat16":
        return fake_device.DeviceArray.from_numpy(x.float().numpy(), cuda=cuda, device=device,
                                                  dtype=fake_device.BFLOAT16)
    return fake_device.DeviceArray.from_numpy(x, cuda=cuda, device=device)


def _host(arr, dtype):
    got = arr.to_numpy()
    return fake_device.bf16_values(got) if dtype == "bfloat16" else got


def _empty(cuda, dtype, count, device):
    return fake_device.DeviceArray(cuda, (count,), fake_device.BFLOAT16 if dtype == "bfloat16" else dtype,
                                   device=device)


def _over_nccl_p2p(comm, expect, algos):
    """hcomm's algorithms on device buffers whose messages take the routes in
    `expect[rank]`;
    NCCL never runs a whole collective here (HCOMM_NCCL_COST=DEAR, algorithms named)."""
    from hcomm import _C

    cuda = fake_device.FakeCuda()
    n, me, checks = comm.size, comm.rank, 0
    for dtype, ops in (("float32", ("sum", "max", "avg")), ("bfloat16", ("sum", "premul_sum")),
                       ("int32", ("sum", "prod", "min")), ("float64", ("sum",))):
        for op in ops:
            factor = ref.premul(dtype) if op == "premul_sum" else None
            for count in (1, 1031, 150001):  # 600 KB of float32: more than the fake's buffered sends
                inputs = [ref.make(dtype, count, r, 31, op) for r in range(n)]
                want = ref.reduce_ref(inputs, op, dtype)
                for algo in algos:
                    x = _dev(cuda, inputs[me], dtype, me)
                    comm.allreduce(x, op=op, algo=algo, factor=factor)
                    ref.check(_host(x, dtype), want, dtype, n, f"allreduce {algo} {dtype} {op} {count}")
                    checks += 1
    assert comm._c.device_transports() == expect[me], (comm._c.device_transports(), expect[me])
    for count in (0, 7, 3001):
        inputs = [ref.make("float32", count, r, 32) for r in range(n)]
        for root in range(n):
            x = _dev(cuda, inputs[me] if me == root else np.zeros(count, np.float32), "float32", me)
            comm.broadcast(x, root=root, algo="binomial")
            np.testing.assert_array_equal(x.to_numpy(), inputs[root], err_msg=f"broadcast {root}")
            out = _empty(cuda, "float32", count, me)
            comm.reduce(_dev(cuda, inputs[me], "float32", me), out=out, root=root, algo="binomial")
            if me == root:
                ref.check(out.to_numpy(), ref.reduce_ref(inputs, "sum", "float32"), "float32", n, "reduce")
            checks += 2
        counts = [(count + 2 * r) % 5 for r in range(n)]  # some ranks send nothing
        mine = _dev(cuda, ref.make("float32", counts[me], me, 33), "float32", me)
        outv = _empty(cuda, "float32", sum(counts), me)
        comm.allgatherv(mine, outv, counts, algo="ring")
        np.testing.assert_array_equal(outv.to_numpy(), np.concatenate([ref.make("float32", c, r, 33)
                                                                       for r, c in enumerate(counts)]))
        rs = _empty(cuda, "float32", count, me)
        whole = [ref.make("float32", count * n, r, 34) for r in range(n)]
        comm.reduce_scatter(_dev(cuda, whole[me], "float32", me), rs)
        ref.check(rs.to_numpy(), ref.reduce_ref(whole, "sum", "float32")[me * count:(me + 1) * count], "float32", n,
                  "reduce_scatter")
        a2a = _empty(cuda, "float32", count * n, me)
        comm.alltoall(_dev(cuda, whole[me], "float32", me), a2a)
        np.testing.assert_array_equal(a2a.to_numpy(), np.concatenate([w[me * count:(me + 1) * count] for w in whole]))
        checks += 3
    assert _C._comm_device_native_calls(comm._c) == 0
    return checks


def test_hcomm_algorithms_over_nccl_point_to_point_on_one_host():
    """HCOMM_NCCL_P2P=1: every peer over ncclSend/ncclRecv, none over cuda_ipc."""
    n = 3
    env = fake_device.child_env(devices=n, HCOMM_NCCL_P2P="1", HCOMM_NCCL_COST=DEAR,
                                HCOMM_ALGO="reduce_scatter:ring")
    expect = [["self" if q == r else "nccl" for q in range(n)] for r in range(n)]
    checks = run_comm(_over_nccl_p2p, n, mode="process", start_method="spawn",
                      args=(expect, ("ring", "tree", "halving_doubling")), env=env, timeout=240)
    assert len(set(checks)) == 1 and checks[0] > 100


def test_nccl_point_to_point_replaces_staging_between_hosts():
    """Default HCOMM_NCCL_P2P=auto, two simulated hosts (2 + 1 ranks): cuda_ipc inside a
    host, NCCL to the other host instead of host staging."""
    n, host_of = 3, [0, 0, 1]
    envs = [fake_device.child_env(devices=n, HCOMM_NCCL_COST=DEAR, HCOMM_HOST_ID=f"nccl-host{host_of[r]}")
            for r in range(n)]
    expect = [["self" if q == r else "cuda_ipc" if host_of[q] == host_of[r] else "nccl" for q in range(n)]
              for r in range(n)]
    checks = run_comm(_over_nccl_p2p, n, mode="process", start_method="spawn", args=(expect, ("ring", None)),
                      env=envs, timeout=240)
    assert len(set(checks)) == 1 and checks[0] > 50


# ---------------------------------------------------------------- the tuner prices native NCCL

def _priced(comm):
    """Three communicators, each with its own NCCL set-up: NCCL's cost measured (the
    timed probe), then given cheap and dear (HCOMM_NCCL_COST, read at each set-up). Each
    shows in explain() and decides where an automatic call runs."""
    import os

    import hcomm
    from hcomm import _C

    cuda = fake_device.FakeCuda()
    me, size = comm.rank, 64 << 10
    out = {}
    for label, cost in (("measured", None), ("cheap", CHEAP), ("dear", DEAR)):
        if cost is None:
            os.environ.pop("HCOMM_NCCL_COST", None)
        else:
            os.environ["HCOMM_NCCL_COST"] = cost
        c = comm.split(0, me)
        x = fake_device.DeviceArray.from_numpy(np.ones(size // 4, np.float32), cuda=cuda, device=me)
        c.allreduce(x, algo="ring")  # the first device collective sets NCCL up (and times it)
        table = hcomm.explain("allreduce", size, comm=c)
        rows = {r.algo: r.seconds for r in table.candidates}
        before = _C._comm_device_native_calls(c._c)
        c.allreduce(x)  # automatic: NCCL or hcomm, as the table says
        np.testing.assert_array_equal(x.to_numpy(), np.full(size // 4, comm.size ** 2, np.float32))
        out[label] = (table.chosen, rows, _C._comm_device_native_calls(c._c) - before)
        entry = c.flight_record()["entries"][-1]  # what ran, beside what the host plan said
        out[label + " flight"] = (entry["algo"], entry["ran"], entry["device"])
        host = hcomm.explain("allreduce", size, comm=c, device=False)  # the same sizes on host buffers
        out[label + " explain"] = (table.memory, host.memory, "native" in {r.algo for r in host.candidates})
        if label == "dear":  # HCOMM_ALGO=native forces NCCL whatever its price
            os.environ["HCOMM_ALGO"] = "native"
            forced = hcomm.explain("allreduce", size, comm=c)
            c.allreduce(x)
            out["forced"] = (forced.chosen, forced.why, _C._comm_device_native_calls(c._c) - before)
            del os.environ["HCOMM_ALGO"]
            print(forced)
        c.close()
    out["rank"] = me
    return out


def test_the_tuner_prices_native_nccl_from_its_measured_cost():
    n, size = 2, 64 << 10
    results = run_comm(_priced, n, mode="process", start_method="spawn", env=fake_device.child_env(devices=n),
                       timeout=180)
    assert results[0]["measured"] == results[1]["measured"]  # the slowest rank's times, agreed: one table
    for r in results:
        chosen, rows, ran = r["measured"]
        assert rows["native"] > 0 and "ring" in rows  # both engines in one table
        hcomm_best = min(v for k, v in rows.items() if k != "native")
        assert (chosen == "native") == (rows["native"] < hcomm_best) and ran == (chosen == "native")
        chosen, rows, ran = r["cheap"]
        assert chosen == "native" and ran == 1
        assert rows["native"] == pytest.approx(1e-9 + size / 1e15, rel=1e-6)  # 0.001 us + S / (10^6 GB/s)
        chosen, rows, ran = r["dear"]
        assert chosen != "native" and ran == 0 and rows["native"] == pytest.approx(1000 + size / 1e6, rel=1e-9)
        assert r["forced"] == ("native", "HCOMM_ALGO", 1)
        # The flight record says what ran: NCCL when its price won, even though the plan
        # (the host tuner's pick, in "algo") named one of hcomm's algorithms.
        for label in ("measured", "cheap", "dear"):
            chosen, _, ran = r[label]
            planned, what, device = r[label + " flight"]
            assert planned != "native" and device == f"cuda:{r['rank']}", r[label + " flight"]
            assert what == ("native nccl" if ran else f"{planned} over cuda_ipc"), r[label + " flight"]
            # explain() says which buffers it describes: device by default on a communicator with
            # NCCL, host when asked, and the host table has no NCCL row (no MPI here either).
            assert r[label + " explain"] == (f"cuda:{r['rank']}", "host", False), r[label + " explain"]


def _one_rank_missing(comm, how):
    """Rank 2 skips a collective whose messages go over NCCL point to point, and either
    comes late (after the others' timeout) or exits: the others raise hcomm.Error naming
    rank 2, with no hang, and every rank closes."""
    import time

    import hcomm

    cuda = fake_device.FakeCuda()
    x = fake_device.DeviceArray.from_numpy(np.ones(1001, np.float32), cuda=cuda, device=comm.rank)
    comm.allreduce(x, algo="ring")  # sets NCCL up, every rank
    np.testing.assert_array_equal(x.to_numpy(), np.full(1001, 3, np.float32))
    comm.timeout = 3
    if comm.rank == 2:
        if how == "late":
            time.sleep(8)
        return "skipped"
    with pytest.raises(hcomm.Error) as err:
        comm.allreduce(x, algo="ring")
    time.sleep(3)  # the other rank's own error comes first, not "rank 0 exited"
    return str(err.value)


@pytest.mark.parametrize("how", ["late", "exits"])
def test_a_missing_rank_over_nccl_point_to_point_fails_naming_it(how):
    env = fake_device.child_env(devices=3, HCOMM_NCCL_P2P="1", HCOMM_NCCL_COST=DEAR)
    out = run_comm(_one_rank_missing, 3, mode="process", start_method="spawn", args=(how,), env=env, timeout=120)
    assert out[2] == "skipped"
    for why in out[:2]:
        assert "rank 2" in why and "allreduce" in why, why
        if how == "late":
            assert "did not" in why or "timed out" in why or "timeout" in why.lower(), why


def _first_device_collective(comm):
    import hcomm

    cuda = fake_device.FakeCuda()
    x = fake_device.DeviceArray.from_numpy(np.ones(5, np.float32), cuda=cuda, device=comm.rank)
    with pytest.raises(hcomm.Error) as err:
        comm.allreduce(x)
    return str(err.value)


@pytest.mark.parametrize("settings,message", [
    ([{"HCOMM_NCCL_P2P": "1"}, {"HCOMM_NCCL_P2P": "auto"}],
     "HCOMM_NCCL_P2P differs between ranks: rank 0 has '1', rank 1 'a'"),
    ([{}, {"HCOMM_NCCL_P2P": "always"}], "HCOMM_NCCL_P2P must be auto, 1 or 0, not 'always'|rank 1 could not read"),
    ([{"HCOMM_NCCL_COST": "fast"}, {}], "HCOMM_NCCL_COST must be|rank 0 could not read"),
])
def test_nccl_settings_that_ranks_cannot_share_fail_on_every_rank(settings, message):
    """Checked after the set-up's exchange, so that every rank raises (none waits alone)."""
    import re

    envs = [fake_device.child_env(devices=2, **extra) for extra in settings]
    out = run_comm(_first_device_collective, 2, mode="process", start_method="spawn", env=envs, timeout=90)
    for why in out:
        assert re.search(message, why), why
