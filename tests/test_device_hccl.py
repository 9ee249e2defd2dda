"""HCCL inside the Communicator: NPU buffers through hcomm.init()'s Communicator, on the
fake AscendCL / HCCL pair of tests/fake_cuda/ (no NPU exists on the machines that run
this). Ranks are spawned processes; each is given its own fake NPU (device = rank).

What runs is the real NPU path of the core: the placement of a call (DLPack kDLAscend),
the NPU context and its events, HCCL made collectively through hcomm's bootstrap at the
first NPU collective (root infos exchanged by the Communicator), and then either
  - native HCCL (HcclAllReduce / HcclReduce / HcclBroadcast / HcclAllGather /
    HcclReduceScatter), what a device call with no algorithm choice runs, or
  - hcomm's algorithms over the HCCL point-to-point transport (HcclSend / HcclRecv on
    pair communicators), with the NPU Memory's copies and host-kernel reductions.
The fake counts the calls it was given (hcommFakeHcclCalls), so each test also shows
which of the two ran. Every result is checked against numpy (tests/reference.py) on
seeded data, odd counts, world sizes 2-4.

What this cannot show: HCCL's own behaviour on NPUs (its algorithms, HCCS/RoCE links,
its timeouts and error codes beyond those the fake models) and any speed.
"""
import ctypes
import json
import os

import numpy as np
import pytest

import fake_device
import reference as ref
from harness import RankFailure, run_comm

DTYPES = ["float32", "float16", "bfloat16", "int32"]
OPS = ["sum", "max", "min", "prod"]
CHEAP = "0.001,1000000"  # HCOMM_HCCL_COST: HCCL wins every size
DEAR = "1000000000,0.001"  # ... and loses every size (1000 s a call)
NATIVE_CALLS = ("HcclAllReduce", "HcclReduce", "HcclBroadcast", "HcclAllGather", "HcclReduceScatter")


def _env(**extra):
    return fake_device.child_env(devices=4, **extra)


def _run(body, n, env=None, args=(), timeout=240):
    return run_comm(body, n, mode="process", start_method="spawn", env=env or _env(), timeout=timeout, args=args)


def _calls():
    """{entry point: calls queued} of the fake HCCL loaded in this process."""
    lib = ctypes.CDLL(os.environ["HCOMM_HCCL_LIB"])
    lib.hcommFakeHcclCalls.restype = ctypes.c_uint64
    return {k: lib.hcommFakeHcclCalls(k.encode()) for k in NATIVE_CALLS + ("HcclSend", "HcclRecv")}


class _Npu:
    """This rank's NPU arrays (fake memory, DLPack kDLAscend) from reference inputs."""

    def __init__(self, rank):
        import npu_fake

        self.acl, self.device, self._mod = npu_fake.Acl(), rank, npu_fake

    def put(self, x, dtype):
        host = x.float().numpy() if dtype == "bfloat16" else np.asarray(x)
        return self._mod.NpuArray.from_numpy(host, dtype, self.acl, self.device)

    def zeros(self, dtype, count):
        return self._mod.NpuArray.from_numpy(np.zeros(count, np.float32 if dtype == "bfloat16" else dtype), dtype,
                                             self.acl, self.device)


def _concat(xs, dtype):
    if dtype == "bfloat16":
        import torch

        return torch.cat(xs)
    return np.concatenate(xs)


def _exact(xs, dtype):
    """Values as float64 (bfloat16 inputs are torch tensors), for data-movement checks."""
    return ref.to_f64(_concat(xs, dtype)) if dtype != "int32" else _concat(xs, dtype)


# ---------------------------------------------------------------- native HCCL

def _native_body(comm, seed):
    npu, r, n = _Npu(comm.rank), comm.rank, comm.size
    for i, dtype in enumerate(DTYPES):
        for j, op in enumerate(OPS):
            count = 31 + 2 * (4 * i + j)  # odd, different per case
            what = f"{dtype} {op} n={n} count={count}"
            inputs = [ref.make(dtype, count, q, seed + i, op) for q in range(n)]
            want = ref.reduce_ref(inputs, op, dtype)
            x = npu.put(inputs[r], dtype)
            comm.allreduce(x, op=op, algo="native" if j % 2 else None)  # asked for, or the automatic choice
            ref.check(x.to_numpy(), want, dtype, n, "allreduce " + what)
            root = (i + j) % n
            x, out = npu.put(inputs[r], dtype), npu.zeros(dtype, count)
            comm.reduce(x, out=out, root=root, op=op)
            if r == root:
                ref.check(out.to_numpy(), want, dtype, n, f"reduce root {root} " + what)
            blocks = [ref.make(dtype, count * n, q, seed + 50 + i, op) for q in range(n)]
            x, out = npu.put(blocks[r], dtype), npu.zeros(dtype, count)
            comm.reduce_scatter(x, out, op=op)
            full = ref.reduce_ref(blocks, op, dtype)
            ref.check(out.to_numpy(), full[r * count:(r + 1) * count], dtype, n, "reduce_scatter " + what)
        count = 13 + 2 * i
        parts = [ref.make(dtype, count, q, seed + 90 + i) for q in range(n)]
        out = npu.zeros(dtype, count * n)
        comm.allgather(npu.put(parts[r], dtype), out)
        np.testing.assert_array_equal(out.to_numpy(), _exact(parts, dtype), err_msg=f"allgather {dtype}")
        root = (n - 1 + i) % n
        b = npu.put(parts[r], dtype)
        comm.broadcast(b, root=root)
        np.testing.assert_array_equal(b.to_numpy(), _exact([parts[root]], dtype), err_msg=f"broadcast {dtype}")
    # AVG and PREMUL_SUM are not HCCL ops: built around SUM with the NPU Memory.
    for dtype, op in (("float32", "avg"), ("int32", "avg"), ("float32", "premul_sum")):
        inputs = [ref.make(dtype, 21, q, seed + 7, op) for q in range(n)]
        x = npu.put(inputs[r], dtype)
        comm.allreduce(x, op=op, factor=ref.premul(dtype) if op == "premul_sum" else None)
        ref.check(x.to_numpy(), ref.reduce_ref(inputs, op, dtype), dtype, n, f"allreduce {dtype} {op}")
    _ran_everywhere(comm, lambda e: "native hccl")
    return comm._c.device_engine(), _calls()


def _ran_everywhere(comm, want):
    """Every flight-record entry is on this rank's NPU and ran what want(entry) says."""
    entries = [e for e in comm.flight_record()["entries"] if e["device"] != "host"]  # init's own are host calls
    assert entries and all(e["device"] == f"npu:{comm.rank}" for e in entries), entries[-1]
    wrong = [(e["op"], e["algo"], e["ran"]) for e in entries if e["ran"] != want(e)]
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_native_hccl_collectives_against_numpy(n):
    # HCCL priced cheap (HCOMM_HCCL_COST): the automatic calls go to HCCL's own too.
    for engine, calls in _run(_native_body, n, env=_env(HCOMM_HCCL_COST=CHEAP), args=(100 + n,)):
        assert engine == "hccl"
        assert all(calls[k] > 0 for k in NATIVE_CALLS), calls
        # Native collectives never use the point-to-point transport.
        assert calls["HcclSend"] == 0 and calls["HcclRecv"] == 0, calls


# ---------------------------------------------------------------- hcomm's algorithms over HCCL send/recv

def _algorithms_body(comm, seed):
    npu, r, n = _Npu(comm.rank), comm.rank, comm.size
    cases = [(a, d, o) for a in ("ring", "tree", "halving_doubling") for d in DTYPES for o in OPS]
    cases += [("hierarchical", d, "sum") for d in DTYPES]
    for k, (algo, dtype, op) in enumerate(cases):
        count = 17 + 2 * k
        inputs = [ref.make(dtype, count, q, seed + k, op) for q in range(n)]
        x = npu.put(inputs[r], dtype)
        _allreduce(comm, x, op, algo)
        assert comm._c.last_algorithm() == algo, (comm._c.last_algorithm(), algo)
        ref.check(x.to_numpy(), ref.reduce_ref(inputs, op, dtype), dtype, n, f"allreduce {algo} {dtype} {op}")
    for k, (algo, dtype, op) in enumerate([(a, d, "sum") for a in ("binomial", "reduce_scatter_gather", "tree")
                                           for d in DTYPES] + [("binomial", "float32", "max")]):
        count, root = 23 + 2 * k, k % n
        inputs = [ref.make(dtype, count, q, seed + 40 + k, op) for q in range(n)]
        x, out = npu.put(inputs[r], dtype), npu.zeros(dtype, count)
        comm.reduce(x, out=out, root=root, op=op, algo=algo)
        if r == root:
            ref.check(out.to_numpy(), ref.reduce_ref(inputs, op, dtype), dtype, n, f"reduce {algo} {dtype} {op}")
    for k, dtype in enumerate(DTYPES):  # reduce_scatter's algorithm comes from HCOMM_ALGO (see the test)
        count = 9 + 2 * k
        blocks = [ref.make(dtype, count * n, q, seed + 60 + k) for q in range(n)]
        x, out = npu.put(blocks[r], dtype), npu.zeros(dtype, count)
        comm.reduce_scatter(x, out, op="sum")
        ref.check(out.to_numpy(), ref.reduce_ref(blocks, "sum", dtype)[r * count:(r + 1) * count], dtype, n,
                  f"reduce_scatter {dtype}")
    for k, (algo, dtype) in enumerate([(a, d) for a in ("binomial", "tree") for d in DTYPES]):
        root, parts = k % n, [ref.make(dtype, 19 + 2 * k, q, seed + 70 + k) for q in range(n)]
        b = npu.put(parts[r], dtype)
        comm.broadcast(b, root=root, algo=algo)
        np.testing.assert_array_equal(b.to_numpy(), _exact([parts[root]], dtype), err_msg=f"broadcast {algo}")
    for k, (algo, dtype) in enumerate([(a, d) for a in ("ring", "bruck") for d in DTYPES]):
        parts = [ref.make(dtype, 7 + 2 * k, q, seed + 80 + k) for q in range(n)]
        out = npu.zeros(dtype, parts[0].shape[0] * n)
        comm.allgather(npu.put(parts[r], dtype), out, algo=algo)
        np.testing.assert_array_equal(out.to_numpy(), _exact(parts, dtype), err_msg=f"allgather {algo} {dtype}")
    _movement(comm, npu, seed)
    # What ran: the algorithm the call named, over the HCCL point-to-point transport.
    _ran_everywhere(comm, lambda e: "over hccl" if e["op"] in ("send", "recv") else e["algo"] + " over hccl")
    return _calls()


def _allreduce(comm, x, op, algo):
    """comm.allreduce, or the core's for 'hierarchical' (the Python method lists the flat
    algorithms); the NPU path either way."""
    if algo != "hierarchical":
        return comm.allreduce(x, op=op, algo=algo)
    from hcomm._buffers import as_buffer

    b = as_buffer(x, "input", writable=True)
    comm._core(None, b).allreduce(b.ptr, b.ptr, b.count, b.dtype, op, 1.0, algo, False)


def _movement(comm, npu, seed):
    """alltoall, gather, scatter and send/recv: pure data movement over the transport."""
    r, n, dtype, count = comm.rank, comm.size, "float32", 11
    blocks = [ref.make(dtype, count * n, q, seed + 90) for q in range(n)]
    out = npu.zeros(dtype, count * n)
    comm.alltoall(npu.put(blocks[r], dtype), out)
    want = np.concatenate([blocks[q][r * count:(r + 1) * count] for q in range(n)])
    np.testing.assert_array_equal(out.to_numpy(), want, err_msg="alltoall")
    root = n - 1
    g = npu.zeros(dtype, count * n) if r == root else None
    comm.gather(npu.put(blocks[r][:count], dtype), g, root=root)
    if r == root:
        np.testing.assert_array_equal(g.to_numpy(), np.concatenate([b[:count] for b in blocks]), err_msg="gather")
    s = npu.zeros(dtype, count)
    comm.scatter(npu.put(blocks[0], dtype) if r == 0 else None, s, root=0)
    np.testing.assert_array_equal(s.to_numpy(), blocks[0][r * count:(r + 1) * count], err_msg="scatter")
    # A ring of sends with two tags, received in the opposite tag order (tag matching:
    # the first message waits staged). Even ranks send first, a pattern valid under
    # HCCL's rule that a send completes only once the peer receives.
    right, left = (r + 1) % n, (r - 1) % n
    a, b = npu.put(blocks[r][:5], dtype), npu.put(blocks[r][5:], dtype)
    ga, gb = npu.zeros(dtype, 5), npu.zeros(dtype, count * n - 5)
    sends = [lambda: comm.send(a, right, tag=1), lambda: comm.send(b, right, tag=2)]
    recvs = [lambda: comm.recv(gb, left, tag=2), lambda: comm.recv(ga, left, tag=1)]
    for step in sends + recvs if r % 2 == 0 else recvs + sends:
        step()
    np.testing.assert_array_equal(ga.to_numpy(), blocks[left][:5], err_msg="recv tag 1")
    np.testing.assert_array_equal(gb.to_numpy(), blocks[left][5:], err_msg="recv tag 2")


@pytest.mark.parametrize("n", [2, 3, 4])
def test_hcomm_algorithms_over_the_hccl_transport_against_numpy(n, tmp_path):
    # reduce_scatter takes its algorithm from HCOMM_ALGO only: ring at n = 2 and 4,
    # direct (each owner folds its block) at n = 3. Two simulated hosts (a topology
    # file) give the hierarchical allreduce two levels to go through.
    hosts = [{"name": "host0", "ranks": list(range(n // 2))}, {"name": "host1", "ranks": list(range(n // 2, n))}]
    topo = tmp_path / "topo.json"
    topo.write_text(json.dumps({"hosts": hosts}))
    # HCCL priced dear (given, so nothing is timed at set-up): no call goes native.
    env = _env(HCOMM_ALGO="reduce_scatter:" + ("direct" if n == 3 else "ring"), HCOMM_TOPO_FILE=topo,
               HCOMM_HCCL_COST=DEAR)
    for calls in _run(_algorithms_body, n, env=env, args=(200 + n,)):
        assert calls["HcclSend"] > 0 and calls["HcclRecv"] > 0, calls
        assert all(calls[k] == 0 for k in NATIVE_CALLS), f"an algorithm ran natively: {calls}"


# ---------------------------------------------------------------- the tuner prices native HCCL

def _hccl_priced(comm):
    """HCCL priced as NCCL is (comm/device_price.cc): three communicators, each with its
    own HCCL set-up, HCCL's cost measured (the timed probe), then given cheap and dear
    (HCOMM_HCCL_COST, read at each set-up). Each shows HCCL's row in explain() and decides
    where an automatic call runs; the flight record says what ran."""
    import hcomm
    from hcomm import _C

    npu, me, n, size = _Npu(comm.rank), comm.rank, comm.size, 64 << 10
    out = {}
    for label, cost in (("measured", None), ("cheap", CHEAP), ("dear", DEAR)):
        if cost is None:
            os.environ.pop("HCOMM_HCCL_COST", None)
        else:
            os.environ["HCOMM_HCCL_COST"] = cost
        c = comm.split(0, me)
        x = npu.put(np.ones(size // 4, np.float32), "float32")
        c.allreduce(x, algo="ring")  # the first NPU collective makes HCCL (and prices it)
        table = hcomm.explain("allreduce", size, comm=c)
        host = hcomm.explain("allreduce", size, comm=c, device=False)
        before = _C._comm_device_native_calls(c._c)
        c.allreduce(x)  # automatic: HCCL or hcomm, as the table says
        np.testing.assert_array_equal(x.to_numpy(), np.full(size // 4, n * n, np.float32))
        entry = c.flight_record()["entries"][-1]
        out[label] = {"chosen": table.chosen, "memory": (table.memory, host.memory), "text": str(table),
                      "rows": {r.algo: (r.seconds, r.inner) for r in table.candidates},
                      "host_rows": [r.algo for r in host.candidates],
                      "native_calls": _C._comm_device_native_calls(c._c) - before,
                      "flight": (entry["algo"], entry["ran"], entry["device"])}
        c.close()
    return out


def test_the_tuner_prices_native_hccl_from_its_measured_cost():
    n, size = 2, 64 << 10
    results = _run(_hccl_priced, n, timeout=180)
    assert results[0]["measured"]["rows"] == results[1]["measured"]["rows"]  # the slowest rank's: one table
    for rank, r in enumerate(results):
        for label in ("measured", "cheap", "dear"):
            x = r[label]
            seconds, inner = x["rows"]["native"]
            assert inner == "hccl" and seconds > 0 and "native(hccl)" in x["text"], x["text"]
            assert x["chosen"] == "native" or "HCCL's own, priced as measured" in x["text"], x["text"]
            hcomm_best = min(v[0] for k, v in x["rows"].items() if k != "native")
            assert (x["chosen"] == "native") == (seconds < hcomm_best), x
            ran = x["native_calls"]
            assert ran == (x["chosen"] == "native"), x
            planned, what, device = x["flight"]
            assert what == ("native hccl" if ran else f"{planned} over hccl") and device == f"npu:{rank}", x["flight"]
            # explain() says which buffers it describes; the host table has no HCCL row.
            assert x["memory"] == (f"npu:{rank}", "host") and "native" not in x["host_rows"], x
        assert r["cheap"]["chosen"] == "native"
        assert r["cheap"]["rows"]["native"][0] == pytest.approx(1e-9 + size / 1e15, rel=1e-6)
        assert r["dear"]["chosen"] != "native"
        assert r["dear"]["rows"]["native"][0] == pytest.approx(1000 + size / 1e6, rel=1e-9)


def _first_npu_collective(comm):
    import hcomm

    with pytest.raises(hcomm.Error) as err:
        comm.allreduce(_Npu(comm.rank).put(np.ones(5, np.float32), "float32"))
    return str(err.value)


def test_a_cost_setting_one_rank_cannot_read_fails_on_every_rank():
    """Checked after the pricing's exchange, so that every rank raises (none waits alone
    in HCCL's timed allreduce)."""
    envs = [_env(HCOMM_HCCL_COST="fast"), _env()]
    out = _run(_first_npu_collective, 2, env=envs, timeout=120)
    assert "HCOMM_HCCL_COST must be '<latency in us>" in out[0], out[0]
    assert "rank 0 could not read its HCOMM_HCCL_COST" in out[1], out[1]


# ---------------------------------------------------------------- split, async, stream order

def _split_body(comm, seed):
    npu, r, n = _Npu(comm.rank), comm.rank, comm.size
    sub = comm.split(color=r % 2, key=-r)  # key -r: the highest world rank is sub-rank 0
    members = [q for q in range(n) if q % 2 == r % 2]
    assert sub.size == len(members) and sub.rank == sorted(members, reverse=True).index(r)
    inputs = {q: ref.make("float32", 29, q, seed) for q in range(n)}
    x = npu.put(inputs[r], "float32")
    sub.allreduce(x)  # the sub-communicator's first NPU collective makes its own HCCL
    ref.check(x.to_numpy(), ref.reduce_ref([inputs[q] for q in members], "sum", "float32"), "float32",
              len(members), "split allreduce")
    y = npu.put(inputs[r], "float32")
    w = comm.allreduce(y, op="max", algo="ring", async_op=True)  # the parent: its own HCCL, async
    w.wait()
    ref.check(y.to_numpy(), ref.reduce_ref(list(inputs.values()), "max", "float32"), "float32", n, "parent max")
    z = npu.put(inputs[r], "float32")
    sub.allreduce(z, algo="tree")  # the sub-communicator over its own HCCL transport
    ref.check(z.to_numpy(), ref.reduce_ref([inputs[q] for q in members], "sum", "float32"), "float32",
              len(members), "split tree")
    return sub.size


def test_split_communicators_make_their_own_hccl():
    assert _run(_split_body, 4, args=(11,)) == [2, 2, 2, 2]


def _stream_wait_body(comm, board_dir):
    """Work.wait() on NPU buffers while the call is still running (rank 1 joins only
    after rank 0's wait() returned): it returns without blocking the host, the caller's
    stream waits instead (an event recorded on it after the wait is not reached until the
    call completes), and a copy queued on the stream after the wait reads the result."""
    npu, r, n = _Npu(comm.rank), comm.rank, comm.size
    board = fake_device.Board(board_dir)
    lib = npu.acl.lib
    comm.allreduce(npu.put(np.ones(3, np.float32), "float32"))  # HCCL is made
    if r == 1:
        try:  # joins once rank 0's wait() returned (or, if that wait blocks, after 20 s)
            board.get("waited", timeout=20)
        except TimeoutError:
            pass
        y = npu.put(np.full(1001, 2.0, np.float32), "float32")
        comm.allreduce(y, algo="ring")
        return "joined"
    npu.acl.set_device(r)
    stream, event, status = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_int(-1)
    assert lib.aclrtCreateStream(ctypes.byref(stream)) == 0 and lib.aclrtCreateEvent(ctypes.byref(event)) == 0
    y = npu.put(np.full(1001, 1.0, np.float32), "float32")
    work = comm.allreduce(y, algo="ring", async_op=True, stream=stream.value)
    work.wait()  # the stream waits for the call; the host goes on
    running = not work.is_completed()  # rank 1 has not joined: it waits for "waited"
    assert lib.aclrtRecordEvent(event, stream) == 0
    assert lib.aclrtQueryEventStatus(event, ctypes.byref(status)) == 0
    stream_held = status.value == 0  # NOT_READY: the stream is held until the call completes
    seen = np.zeros(1001, np.float32)
    assert lib.aclrtMemcpyAsync(ctypes.c_void_p(seen.ctypes.data), ctypes.c_size_t(seen.nbytes),
                                ctypes.c_void_p(y.ptr), ctypes.c_size_t(seen.nbytes), 2, stream) == 0  # D2H
    board.put("waited", b"1")
    assert lib.aclrtSynchronizeStream(stream) == 0
    work.synchronize()
    assert lib.aclrtDestroyEvent(event) == 0 and lib.aclrtDestroyStream(stream) == 0
    return running, stream_held, seen.tolist() == [3.0] * 1001


def test_work_wait_on_npu_makes_the_stream_wait_not_the_host(tmp_path):
    got = _run(_stream_wait_body, 2, args=(str(tmp_path),), timeout=120)
    assert got[1] == "joined"
    assert got[0] == (True, True, True), got[0]  # (host not blocked, stream held, consumer saw the sum)


# ---------------------------------------------------------------- bad input, missing libraries, mismatches

def _bad_input_body(comm):
    import hcomm

    npu, r = _Npu(comm.rank), comm.rank
    x = npu.put(np.arange(5, dtype=np.float32), "float32")
    with pytest.raises(hcomm.Error, match="first call with NPU buffers on this communicator must be a collective"):
        comm.send(x, (r + 1) % comm.size)
    with pytest.raises(hcomm.InvalidArgument, match=f"a host ndarray and a npu:{r} array"):
        comm.allreduce(x, out=np.zeros(5, np.float32))
    other = npu._mod.NpuArray.from_numpy(np.zeros(5, np.float32), "float32", npu.acl, device=(r + 1) % 4)
    with pytest.raises(hcomm.InvalidArgument, match=f"two devices in one call: npu:{r} and npu:{(r + 1) % 4}"):
        comm.allreduce(x, out=other)
    cuda = fake_device.DeviceArray.from_numpy(np.zeros(5, np.float32), device=0)
    with pytest.raises(hcomm.InvalidArgument, match=f"two kinds of device in one call: npu:{r} and cuda:0"):
        comm.allreduce(x, out=cuda)
    comm.allreduce(x)  # nothing moved before: the communicator is still good
    np.testing.assert_array_equal(x.to_numpy(), np.arange(5, dtype=np.float32) * comm.size)
    with pytest.raises(hcomm.Error, match=f"this communicator's calls use npu:{r}, not npu:{(r + 1) % 4}"):
        comm.allreduce(other)
    h = np.full(3, r + 1.0)
    comm.allreduce(h)  # host calls go on as before
    return h.tolist()


def test_bad_npu_input_is_refused_before_any_byte_moves():
    assert _run(_bad_input_body, 2) == [[3.0] * 3] * 2


def _missing_library_body(comm, missing, acl_path):
    import hcomm
    import npu_fake

    x = npu_fake.NpuArray.from_numpy(np.ones(3, np.float32), "float32", npu_fake.Acl(acl_path), comm.rank)
    with pytest.raises(hcomm.Error) as e:
        comm.allreduce(x)
    h = np.ones(2)
    comm.allreduce(h)  # refused before any byte moved: the communicator still works
    return str(e.value), h.tolist()


@pytest.mark.parametrize("missing", ["hccl", "ascendcl"])
def test_missing_library_is_named(missing):
    env = _env()
    acl_path = env["HCOMM_ASCENDCL_LIB"]
    lib = {"hccl": "libhccl.so", "ascendcl": "libascendcl.so"}[missing]
    env[fake_device.ENV_VARS[missing]] = f"/nonexistent/{lib}"
    env.pop("ASCEND_HOME_PATH", None), env.pop("ASCEND_TOOLKIT_HOME", None)
    for why, host in _run(_missing_library_body, 2, env=env, args=(missing, acl_path)):
        assert "HCCL is not available" in why and f"/nonexistent/{lib}" in why and f"({lib}) not found" in why, why
        assert host == [2.0, 2.0]


def _mismatch_body(comm, algo):
    import hcomm

    npu = _Npu(comm.rank)
    x = npu.put(np.ones(5 + comm.rank, np.float32), "float32")  # the ranks disagree on the count
    with pytest.raises(hcomm.Error) as e:
        comm.allreduce(x, algo=algo)
    return str(e.value)


def test_mismatched_native_call_is_an_error_not_a_hang():
    for why in _run(_mismatch_body, 2, args=("native",), env=_env(HCOMM_TIMEOUT=30)):
        assert "HCCL collective on this stream failed" in why and "count" in why, why


def test_mismatched_call_over_the_transport_names_both_signatures():
    for why in _run(_mismatch_body, 2, args=("ring",), env=_env(HCOMM_TIMEOUT=30)):
        assert "count 5" in why and "count 6" in why, why


# ---------------------------------------------------------------- the fake AscendCL's new contract

def test_fake_ascendcl_memory_and_events():
    import npu_fake

    acl = npu_fake.Acl(fake_device.libraries()["ascendcl"])
    lib = acl.lib
    import threading

    codes = []  # on a fresh thread, where no device was set: ACL_ERROR_RT_CONTEXT_NULL
    t = threading.Thread(target=lambda: codes.append(lib.aclrtMalloc(ctypes.byref(ctypes.c_void_p()),
                                                                     ctypes.c_size_t(64), 0)))
    t.start(), t.join()
    assert codes == [107002]
    acl.set_device(0)
    dev = acl.malloc(64)
    host = np.arange(16, dtype=np.float32)
    back = np.zeros(16, np.float32)
    # aclrtMemcpy checks that `kind` matches where each side lives.
    assert lib.aclrtMemcpy(ctypes.c_void_p(host.ctypes.data), ctypes.c_size_t(64), ctypes.c_void_p(dev),
                           ctypes.c_size_t(64), 1) == 107000  # host-to-device into host memory
    assert lib.aclrtMemcpy(ctypes.c_void_p(dev), ctypes.c_size_t(32), ctypes.c_void_p(host.ctypes.data),
                           ctypes.c_size_t(64), 1) == 107000  # count > destMax
    acl.memcpy(dev, host.ctypes.data, 64, npu_fake.H2D)
    acl.memcpy(back.ctypes.data, dev, 64, npu_fake.D2H)
    np.testing.assert_array_equal(back, host)
    # An event completes once the work queued before its record ran.
    stream, event, status = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_int(-1)
    assert lib.aclrtCreateStream(ctypes.byref(stream)) == 0 and lib.aclrtCreateEvent(ctypes.byref(event)) == 0
    gate, ran_on = threading.Event(), []

    def hold(_):
        ran_on.append(threading.get_ident())
        gate.wait(10)

    hold = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(hold)
    # Host callbacks: only on a stream bound to a thread, run by that thread's aclrtProcessReport.
    assert lib.aclrtLaunchCallback(hold, None, 1, stream) == 107015  # ACL_ERROR_RT_STREAM_NO_CB_REG
    assert lib.aclrtProcessReport(ctypes.c_int32(10)) == 107012     # this thread is bound to no stream
    stop = threading.Event()

    def report():
        while not stop.is_set():
            lib.aclrtProcessReport(ctypes.c_int32(20))

    reporter = threading.Thread(target=report)
    reporter.start()
    assert lib.aclrtSubscribeReport(ctypes.c_uint64(reporter.ident), stream) == 0
    assert lib.aclrtSubscribeReport(ctypes.c_uint64(threading.get_ident()), stream) == 100033  # bound already
    assert lib.aclrtLaunchCallback(hold, None, 1, stream) == 0  # ACL_CALLBACK_BLOCK: the stream waits for it
    assert lib.aclrtRecordEvent(event, stream) == 0
    assert lib.aclrtQueryEventStatus(event, ctypes.byref(status)) == 0 and status.value == 0  # NOT_READY
    gate.set()
    assert lib.aclrtSynchronizeStream(stream) == 0
    assert lib.aclrtQueryEventStatus(event, ctypes.byref(status)) == 0 and status.value == 1  # COMPLETE
    assert ran_on == [reporter.ident]
    assert lib.aclrtUnSubscribeReport(ctypes.c_uint64(reporter.ident), stream) == 0
    assert lib.aclrtLaunchCallback(hold, None, 0, stream) == 107015
    stop.set()
    reporter.join()
    assert lib.aclrtDestroyEvent(event) == 0 and lib.aclrtDestroyStream(stream) == 0
    acl.free(dev)


# ---------------------------------------------------------------- torch_npu tensors (routing only)

def _torch_npu_body(comm):
    """No torch_npu exists here: a stand-in module and tensor class with the attributes
    hcomm reads from a torch_npu tensor (device.type "npu", data_ptr, numel, dtype,
    is_contiguous; torch_npu.npu.current_stream().npu_stream) over fake NPU memory. This
    shows hcomm's routing of such a tensor, not torch_npu itself."""
    import sys
    import types

    npu = _Npu(comm.rank)
    stub = types.ModuleType("torch_npu")
    stub.npu = types.SimpleNamespace(current_device=lambda: comm.rank,
                                     current_stream=lambda dev: types.SimpleNamespace(npu_stream=0))
    sys.modules["torch_npu"] = stub

    class NpuTensor:
        __module__ = "torch_npu.stand_in"

        def __init__(self, arr):
            self.arr, self.dtype, self.is_cpu, self.is_cuda = arr, "torch.float32", False, False
            self.device, self.shape = types.SimpleNamespace(type="npu", index=arr.device), (arr.count,)

        def data_ptr(self):
            return self.arr.ptr

        def numel(self):
            return self.arr.count

        def is_contiguous(self):
            return True

    x = NpuTensor(npu.put(np.arange(9, dtype=np.float32) * (comm.rank + 1), "float32"))
    comm.allreduce(x)
    return x.arr.to_numpy().tolist()


def test_torch_npu_tensor_routing_with_a_stand_in_module():
    want = (np.arange(9, dtype=np.float32) * 3).tolist()
    assert _run(_torch_npu_body, 2) == [want, want]


def _timeout_body(comm, algo, board_dir):
    """Rank 0 calls a collective rank 1 never makes: a TimeoutError naming the call, no
    hang, and the process still exits (the failed HCCL state is let go, not waited on)."""
    import time

    import hcomm

    npu, board = _Npu(comm.rank), fake_device.Board(board_dir)
    x = npu.put(np.ones(7, np.float32), "float32")
    comm.allreduce(x)  # both ranks: HCCL is made
    if comm.rank == 1:
        board.get("raised", timeout=60)  # stay alive (a dead peer would fail rank 0 at once)
        return "waited"
    start = time.monotonic()
    with pytest.raises(hcomm.Error) as e:
        comm.allreduce(x, algo=algo)
    board.put("raised", b"1")
    return str(e.value), time.monotonic() - start


@pytest.mark.parametrize("algo", ["native", "ring"])
def test_a_rank_that_never_joins_times_out_instead_of_hanging(algo, tmp_path):
    got = _run(_timeout_body, 2, env=_env(HCOMM_TIMEOUT=3), args=(algo, str(tmp_path)), timeout=120)
    why, took = got[0]
    assert got[1] == "waited"
    assert "HCOMM_TIMEOUT" in why and "rank 1 did not reach" in why and took < 30, got[0]


# ---------------------------------------------------------------- deterministic mode (the fold steps)

def _deterministic_body(comm, seed):
    """HCOMM_DETERMINISTIC=1 on NPU buffers: no native HCCL (its summation order is its
    own); every algorithm over the transport returns the rank-order float32 sum bit for
    bit, and bfloat16 the float32 fold rounded once (the NPU Memory's accumulate step)."""
    from test_numerics import bits, fold_in_rank_order, inputs

    npu, n, r = _Npu(comm.rank), comm.size, comm.rank
    for count in (1, 333):
        stack = inputs("float32", count, n, seed)
        want = bits(fold_in_rank_order(stack))
        for algo in (None, "ring", "tree", "halving_doubling"):
            x = npu._mod.NpuArray.from_numpy(stack[r], "float32", npu.acl, r)
            comm.allreduce(x, algo=algo)
            got = x.to_numpy().view(np.uint32)
            assert np.array_equal(got, want), f"{algo} count={count}: {np.count_nonzero(got != want)} differ"
        bf = [s.astype(np.float32) for s in inputs("bfloat16", count, n, seed)]
        x = npu._mod.NpuArray.from_numpy(bf[r], "bfloat16", npu.acl, r)
        comm.allreduce(x)
        once = fake_device.bf16_values(fake_device.bf16_bits(fold_in_rank_order(np.stack(bf))))
        got = x.to_numpy()
        assert np.array_equal(got, once), f"bfloat16: {np.count_nonzero(got != once)} differ from the fold rounded once"
    return _calls()


def test_deterministic_mode_on_npu_buffers_is_bit_exact_over_the_transport():
    for calls in _run(_deterministic_body, 3, env=_env(HCOMM_DETERMINISTIC=1), args=(5,)):
        assert all(calls[k] == 0 for k in NATIVE_CALLS), calls
