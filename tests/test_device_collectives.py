"""Collectives on device buffers through hcomm.init()'s Communicator, on the fake GPU.

Ranks are processes on one simulated host sharing one fake GPU (tests/fake_cuda: device
memory in shared memory, IPC handles other processes open, streams as worker threads),
so the real device path runs: the placement of a call, the event on the caller's stream,
the device Memory, and the cuda_ipc transport with its receive slots, credits and early
messages. Small slots (4 KiB x 2) make every large message a pipeline of pieces.
Every result is checked against numpy (tests/reference.py) for world sizes 2-5.
What this cannot show: real kernels and real device timing (the device script does).
"""
import json

import numpy as np
import pytest

import fake_device
import reference as ref
from harness import run_comm

SLOTS = dict(HCOMM_CUDA_IPC_SLOT_BYTES=4096, HCOMM_CUDA_IPC_SLOTS=2)
ALLREDUCE_ALGOS = [None, "ring", "tree", "halving_doubling"]


def _env(**extra):
    return fake_device.child_env(devices=1, **{**SLOTS, **extra})


def to_dev(cuda, x, dtype):
    if dtype == "bfloat16":
        return fake_device.DeviceArray.from_numpy(x.float().numpy(), cuda=cuda, dtype=fake_device.BFLOAT16)
    return fake_device.DeviceArray.from_numpy(x, cuda=cuda)


def from_dev(arr, dtype):
    host = arr.to_numpy()
    return fake_device.bf16_values(host) if dtype == "bfloat16" else host


def concat(xs, dtype):
    if dtype == "bfloat16":
        import torch

        return torch.cat(xs)
    return np.concatenate(xs)


def empty_dev(cuda, dtype, count):
    dt = fake_device.BFLOAT16 if dtype == "bfloat16" else dtype
    return fake_device.DeviceArray(cuda, (count,), dt)


def allreduce(comm, x, op, algo, factor):
    """comm.allreduce, or the core's for 'hierarchical' (the Python method lists the flat
    algorithms), on the device path either way."""
    if algo != "hierarchical":
        return comm.allreduce(x, op=op, algo=algo, factor=factor)
    from hcomm._buffers import as_buffer

    b = as_buffer(x, "input", writable=True)
    comm._core(None, b).allreduce(b.ptr, b.ptr, b.count, b.dtype, op, float(factor or 1.0), algo, False)


def _check_reductions(comm, cuda, seed, algos=ALLREDUCE_ALGOS):
    n, me, checks = comm.size, comm.rank, 0
    for dtype in ref.DTYPES:
        for op in ref.ops_for(dtype):
            for count in (1, 1031):
                inputs = [ref.make(dtype, count, r, seed, op) for r in range(n)]
                want = ref.reduce_ref(inputs, op, dtype)
                factor = ref.premul(dtype) if op == "premul_sum" else None
                for algo in algos:
                    x = to_dev(cuda, inputs[me], dtype)
                    allreduce(comm, x, op, algo, factor)
                    ref.check(from_dev(x, dtype), want, dtype, n, f"allreduce {algo} {dtype} {op} {count}")
                    checks += 1
                x, out = to_dev(cuda, inputs[me], dtype), empty_dev(cuda, dtype, count)
                comm.reduce(x, out=out, root=count % n, op=op, factor=factor)
                if me == count % n:
                    ref.check(from_dev(out, dtype), want, dtype, n, f"reduce {dtype} {op}")
                per = count // n
                if per:
                    rs = empty_dev(cuda, dtype, per)
                    comm.reduce_scatter(to_dev(cuda, inputs[me][: per * n], dtype), rs, op=op, factor=factor)
                    ref.check(from_dev(rs, dtype), want[me * per:(me + 1) * per], dtype, n, f"reduce_scatter {dtype}")
                checks += 2
    return checks


def _check_moves(comm, cuda, seed):
    n, me, checks = comm.size, comm.rank, 0
    for dtype in ("float32", "bfloat16", "int8", "float64"):
        for count in (0, 1, 7, 3001):
            inputs = [ref.make(dtype, count, r, seed) for r in range(n)]
            host = [np.asarray(from_dev(to_dev(cuda, x, dtype), dtype)) for x in inputs]
            for root in range(n):
                x = to_dev(cuda, inputs[me] if me == root else ref.zeros(dtype, count), dtype)
                comm.broadcast(x, root=root)
                np.testing.assert_array_equal(from_dev(x, dtype), host[root], err_msg=f"broadcast {dtype} {root}")
                out = empty_dev(cuda, dtype, count * n)
                comm.gather(to_dev(cuda, inputs[me], dtype), out if me == root else None, root=root)
                if me == root:
                    np.testing.assert_array_equal(from_dev(out, dtype), np.concatenate(host), err_msg="gather")
                whole = to_dev(cuda, concat(inputs, dtype), dtype)
                part = empty_dev(cuda, dtype, count)
                comm.scatter(whole, part, root=root)
                np.testing.assert_array_equal(from_dev(part, dtype), host[me], err_msg="scatter")
                checks += 3
            out = empty_dev(cuda, dtype, count * n)
            comm.allgather(to_dev(cuda, inputs[me], dtype), out)
            np.testing.assert_array_equal(from_dev(out, dtype), np.concatenate(host), err_msg="allgather")
            counts = [(count + r) % 5 for r in range(n)]
            mine = to_dev(cuda, ref.make(dtype, counts[me], me, seed), dtype)
            outv = empty_dev(cuda, dtype, sum(counts))
            comm.allgatherv(mine, outv, counts)
            wantv = np.concatenate([np.asarray(from_dev(to_dev(cuda, ref.make(dtype, c, r, seed), dtype), dtype))
                                    for r, c in enumerate(counts)])
            np.testing.assert_array_equal(from_dev(outv, dtype), wantv, err_msg="allgatherv")
            a2a_in = to_dev(cuda, ref.make(dtype, count * n, me, seed + 1), dtype)
            a2a_out = empty_dev(cuda, dtype, count * n)
            comm.alltoall(a2a_in, a2a_out)
            blocks = [np.asarray(from_dev(to_dev(cuda, ref.make(dtype, count * n, r, seed + 1), dtype), dtype))
                      for r in range(n)]
            want = np.concatenate([b[me * count:(me + 1) * count] for b in blocks])
            np.testing.assert_array_equal(from_dev(a2a_out, dtype), want, err_msg="alltoall")
            comm.alltoall(a2a_in, a2a_in)  # in place
            np.testing.assert_array_equal(from_dev(a2a_in, dtype), want, err_msg="alltoall in place")
            checks += 3
    return checks


def _check_p2p_async(comm, cuda, seed):
    n, me = comm.size, comm.rank
    right, left = (me + 1) % n, (me - 1) % n
    for count in (0, 5, 20001):  # 20001 float32: 20 pieces through two 4 KiB slots
        send = to_dev(cuda, ref.make("float32", count, me, seed), "float32")
        got = empty_dev(cuda, "float32", count)
        if me % 2 == 0:
            comm.send(send, right, tag=3)
            comm.recv(got, left, tag=3)
        else:
            comm.recv(got, left, tag=3)
            comm.send(send, right, tag=3)
        np.testing.assert_array_equal(from_dev(got, "float32"), ref.make("float32", count, left, seed))
    xs = [to_dev(cuda, ref.make("float32", 4099, me, seed + k), "float32") for k in range(3)]
    works = [comm.allreduce(x, async_op=True) for x in xs]
    for k, w in enumerate(works):
        assert w.wait() is True
        want = ref.reduce_ref([ref.make("float32", 4099, r, seed + k) for r in range(n)], "sum", "float32")
        ref.check(from_dev(xs[k], "float32"), want, "float32", n, f"async allreduce {k}")
    comm.barrier()
    entry = comm.flight_record()["entries"][-2]
    assert entry["device"] == "cuda:0" and entry["op"] == "allreduce", entry
    return 4


def _every_collective(comm, seed, algos=ALLREDUCE_ALGOS, hosts=None):
    cuda = fake_device.FakeCuda()
    checks = (_check_reductions(comm, cuda, seed, algos) + _check_moves(comm, cuda, seed)
              + _check_p2p_async(comm, cuda, seed))
    hosts = hosts or [comm.size]
    host_of = [h for h, k in enumerate(hosts) for _ in range(k)]
    expect = ["self" if r == comm.rank else "cuda_ipc" if host_of[r] == host_of[comm.rank] else "staging"
              for r in range(comm.size)]
    assert comm._c.device_transports() == expect, (comm._c.device_transports(), expect)
    return checks


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_every_collective_on_device_buffers_over_cuda_ipc(n):
    checks = run_comm(_every_collective, n, mode="process", start_method="spawn", args=(100 + n,), env=_env(), timeout=240)
    assert len(set(checks)) == 1 and checks[0] > 500


def _topo_file(tmp_path, sizes):
    hosts, r = [], 0
    for h, n in enumerate(sizes):
        hosts.append({"name": f"host{h}", "ranks": list(range(r, r + n))})
        r += n
    path = tmp_path / "topo.json"
    path.write_text(json.dumps({"hosts": hosts}))
    return str(path)


@pytest.mark.parametrize("sizes", [[2, 2], [3, 1], [1, 1, 1]])
def test_every_collective_across_simulated_hosts_through_staging(sizes, tmp_path):
    """Simulated hosts (a topology file): device buffers to ranks on the same host go over
    cuda_ipc, to other hosts through pinned host pieces (4 KiB) over tcp; hierarchical
    allreduce runs on device memory too."""
    n = sum(sizes)
    env = _env(HCOMM_TOPO_FILE=_topo_file(tmp_path, sizes), HCOMM_STAGING_PIECE_BYTES=4096,
               HCOMM_STAGING_PIECES=2)
    algos = ALLREDUCE_ALGOS + ["hierarchical"]
    checks = run_comm(_every_collective, n, mode="process", start_method="spawn", args=(200 + n, algos, sizes), env=env, timeout=240)
    assert len(set(checks)) == 1 and checks[0] > 500


# One program per rank (python -c) in a namespace host: device allreduce over the
# namespaces' real tcp through staging, and cuda_ipc inside each namespace host.
NETNS_WORKER = r"""
import json, os, sys
import numpy as np
sys.path.insert(0, os.environ["HCOMM_TEST_DIR"])
import fake_device
import hcomm
comm = hcomm.init(timeout=60)
cuda = fake_device.FakeCuda()
out = {}
for algo in ("hierarchical", "ring", None):
    for count in (1, 1001, 65537):
        inputs = [np.random.default_rng([q, count]).standard_normal(count).astype(np.float32)
                  for q in range(comm.size)]
        x = fake_device.DeviceArray.from_numpy(inputs[comm.rank], cuda=cuda)
        b = hcomm._buffers.as_buffer(x, "input", writable=True)
        comm._core(None, b).allreduce(b.ptr, b.ptr, count, "float32", "sum", 1.0, algo or "", False)
        np.testing.assert_allclose(x.to_numpy(), np.sum(inputs, axis=0, dtype=np.float64), rtol=1e-5, atol=1e-5)
    out[algo or "auto"] = comm._c.last_algorithm()
print(json.dumps({"rank": comm.rank, "algos": out, "transports": comm._c.device_transports()}))
comm.close()
"""


def test_device_buffers_between_namespace_hosts():
    import os
    import sys

    from hcomm.topology import NetnsCluster, wait_all

    why = NetnsCluster.unavailable()
    if why is not None:
        pytest.skip(f"no namespace cluster: {why}")
    env = _env(HCOMM_TEST_DIR=os.path.dirname(os.path.abspath(__file__)), HCOMM_STAGING_PIECE_BYTES=65536)
    with NetnsCluster(2, rate="1gbit") as cluster:
        results = wait_all(cluster.launch(2, [sys.executable, "-c", NETNS_WORKER], env=env), timeout=120)
    failed = [f"rank {r}: rc {rc}\n{se[-3000:]}" for r, (rc, so, se) in enumerate(results) if rc]
    assert not failed, "\n".join(failed)
    for rank, (_, so, _) in enumerate(results):
        rep = json.loads(so.strip().splitlines()[-1])
        assert rep["algos"]["hierarchical"] == "hierarchical"
        host = rank // 2
        assert rep["transports"] == ["self" if q == rank else "cuda_ipc" if q // 2 == host else "staging"
                                     for q in range(4)]


def _deterministic_on_device(comm, seed):
    """HCOMM_DETERMINISTIC=1 on device buffers: every algorithm returns the rank-order
    float32 sum bit for bit; bfloat16 sums are the float32 rank-order sum rounded once."""
    from test_numerics import bits, fold_in_rank_order, inputs

    cuda = fake_device.FakeCuda()
    n, r = comm.size, comm.rank
    for count in (1, 1001, 20001):
        stack = inputs("float32", count, n, seed)
        want = bits(fold_in_rank_order(stack))
        for algo in ALLREDUCE_ALGOS + ["hierarchical"]:
            x = fake_device.DeviceArray.from_numpy(stack[r], cuda=cuda)
            allreduce(comm, x, "sum", algo, None)
            got = x.to_numpy().view(np.uint32)
            assert np.array_equal(got, want), f"{algo} count={count}: {np.count_nonzero(got != want)} differ"
        bf = [s.astype(np.float32) for s in inputs("bfloat16", count, n, seed)]
        x = fake_device.DeviceArray.from_numpy(bf[r], cuda=cuda, dtype=fake_device.BFLOAT16)
        comm.allreduce(x)
        once = fake_device.bf16_bits(fold_in_rank_order(np.stack(bf)))  # the float32 fold, rounded once
        got = x.to_numpy()
        assert np.array_equal(got, once), f"bfloat16: {np.count_nonzero(got != once)} differ from the fold rounded once"
    return True


@pytest.mark.parametrize("sizes", [[4], [2, 3]])
def test_deterministic_and_16_bit_exact_on_device_buffers(sizes, tmp_path):
    extra = {} if len(sizes) == 1 else {"HCOMM_TOPO_FILE": _topo_file(tmp_path, sizes),
                                        "HCOMM_STAGING_PIECE_BYTES": 4096}
    run_comm(_deterministic_on_device, sum(sizes), mode="process", start_method="spawn", args=(7,),
             env=_env(HCOMM_DETERMINISTIC=1, **extra), timeout=240)
