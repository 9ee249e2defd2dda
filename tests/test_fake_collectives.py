"""Contract tests of the NCCL and HCCL fakes in tests/fake_cuda/, on 2-5 spawned
processes against numpy: every collective, dtype and op, grouped send/recv, NCCL's
duplicate-GPU refusal, mismatched calls as errors (not garbage), abort, a dead peer.
The HCCL pair is driven through hcomm's own HcclComm.
"""
import ctypes
import os
import threading
import time

import numpy as np
import pytest

import fake_device as fd


@pytest.fixture(scope="module")
def libs():
    return fd.libraries()


# ---------------------------------------------------------------- NCCL

NCCL_TYPES = {"int8": 0, "uint8": 1, "int32": 2, "uint32": 3, "int64": 4, "uint64": 5, "float16": 6,
              "float32": 7, "float64": 8, "bfloat16": 9}
NCCL_OPS = {"sum": 0, "prod": 1, "max": 2, "min": 3, "avg": 4}
INVALID_ARGUMENT, INVALID_USAGE, REMOTE_ERROR = 4, 5, 6


class _UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * 128)]


class Nccl:
    """ctypes over the fake libnccl; buffers are DeviceArrays, streams ints."""

    def __init__(self):
        self.lib = ctypes.CDLL(fd.libraries()["nccl"])
        self.lib.ncclGetLastError.restype = ctypes.c_char_p
        self.lib.ncclGetErrorString.restype = ctypes.c_char_p

    def check(self, name, *args):
        code = getattr(self.lib, name)(*args)
        if code != 0:
            raise RuntimeError(f"{name}: {code} {self.last_error()}")

    def last_error(self):
        return self.lib.ncclGetLastError(None).decode()

    def unique_id(self):
        uid = _UniqueId()
        self.check("ncclGetUniqueId", ctypes.byref(uid))
        return ctypes.string_at(ctypes.addressof(uid), 128)

    def init(self, nranks, uid, rank):
        comm, u = ctypes.c_void_p(), _UniqueId()
        ctypes.memmove(ctypes.byref(u), uid, 128)
        code = self.lib.ncclCommInitRank(ctypes.byref(comm), nranks, u, rank)
        return code, comm.value

    def async_error(self, comm):
        e = ctypes.c_int()
        self.check("ncclCommGetAsyncError", ctypes.c_void_p(comm), ctypes.byref(e))
        return e.value

    def coll(self, name, comm, stream, send, recv, count, dtype, *extra):
        """extra: (op,) (op, root) (root,) as the NCCL function takes them."""
        args = [ctypes.c_void_p(send.ptr if send is not None else 0), ctypes.c_void_p(recv.ptr if recv is not None else 0),
                ctypes.c_size_t(count), ctypes.c_int(NCCL_TYPES[dtype])]
        args += [ctypes.c_int(x) for x in extra]
        return getattr(self.lib, name)(*args, ctypes.c_void_p(comm), ctypes.c_void_p(stream))

    def premul(self, comm, scalar, dtype):
        op, s = ctypes.c_int(), np.array([scalar], dtype=np.float32 if dtype == "bfloat16" else dtype)
        if dtype == "bfloat16":
            s = fd.bf16_bits(s)
        self.check("ncclRedOpCreatePreMulSum", ctypes.byref(op), ctypes.c_void_p(s.ctypes.data),
                   ctypes.c_int(NCCL_TYPES[dtype]), ctypes.c_int(1), ctypes.c_void_p(comm))
        return op.value


def _nccl_setup(rank, world, board):
    cuda, nccl = fd.FakeCuda(), Nccl()
    cuda.set_device(rank % cuda.device_count())
    if rank == 0:
        board.put("uid", nccl.unique_id())
    code, comm = nccl.init(world, board.get("uid"), rank)
    assert code == 0, nccl.last_error()
    return cuda, nccl, comm


def _data(rank, dtype, count, op):
    """Seeded inputs: small integers (exact products, no overflow surprises), floats near 1 for prod."""
    rng = np.random.default_rng([rank, count, len(op)])
    if dtype.startswith(("int", "uint")):
        lo = 0 if dtype.startswith("u") else -3
        return rng.integers(lo, 4, count).astype(dtype)
    x = rng.uniform(0.5, 1.5, count) if op == "prod" else rng.standard_normal(count) * 4
    return x.astype(np.float32 if dtype == "bfloat16" else dtype)


def _device(cuda, host, dtype, device):
    return fd.DeviceArray.from_numpy(host, device=device, cuda=cuda, dtype=fd.BFLOAT16 if dtype == "bfloat16" else None)


def _reference(inputs, dtype, op, scales=None):
    """Rank-order reduction in the accumulation type, rounded once."""
    if dtype == "bfloat16":
        inputs = [fd.bf16_values(fd.bf16_bits(x)) for x in inputs]
    acc_type = np.dtype(np.float32 if dtype in ("bfloat16", "float16", "float32") else dtype)
    vals = [np.asarray(x).astype(acc_type) for x in inputs]
    if scales is not None:
        vals = [(v * acc_type.type(s)).astype(acc_type) for v, s in zip(vals, scales)]
    acc = vals[0].copy()
    with np.errstate(over="ignore"):
        for v in vals[1:]:
            acc = {"sum": np.add, "avg": np.add, "premul": np.add, "prod": np.multiply, "max": np.maximum,
                   "min": np.minimum}[op](acc, v).astype(acc_type)
    n = len(inputs)
    if op == "avg":
        acc = (acc / acc_type.type(n)).astype(acc_type) if acc_type.kind == "f" else \
            (np.sign(acc) * (np.abs(acc) // n)).astype(acc_type)  # C's division truncates
    if dtype == "bfloat16":
        return fd.bf16_bits(acc)
    return acc.astype(dtype)


def _close(got, want, dtype, n):
    if dtype == "bfloat16":
        got, want = fd.bf16_values(got), fd.bf16_values(want)
    if np.dtype(got.dtype).kind in "iu":
        np.testing.assert_array_equal(got, want)
    else:  # one rounding either way of the same float32/float64 sum
        tol = {"float16": 1e-3, "bfloat16": 8e-3, "float32": 1e-6, "float64": 1e-12}[dtype] * n
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


def _nccl_allreduce_body(rank, world, board, cases):
    cuda, nccl, comm = _nccl_setup(rank, world, board)
    stream = cuda.stream_create()
    dev = rank % cuda.device_count()
    for dtype, op, count in cases:
        inputs = [_data(r, dtype, count, op) for r in range(world)]
        x = _device(cuda, inputs[rank], dtype, dev)
        y = _device(cuda, np.zeros(count, np.float32 if dtype == "bfloat16" else dtype), dtype, dev)
        scales = None
        if op == "premul":
            # exact in every type (NCCL's scalar has the data's type)
            scales = [1 + r if dtype.startswith(("int", "uint")) else 0.5 + 0.25 * r for r in range(world)]
            code = nccl.coll("ncclAllReduce", comm, stream, x, y, count, dtype, nccl.premul(comm, scales[rank], dtype))
        else:
            code = nccl.coll("ncclAllReduce", comm, stream, x, y, count, dtype, NCCL_OPS[op])
        assert code == 0, nccl.last_error()
        cuda.stream_synchronize(stream)
        _close(y.to_numpy(), _reference(inputs, dtype, op, scales), dtype, world)
    assert nccl.async_error(comm) == 0


ALL_CASES = [(t, o, c) for t in NCCL_TYPES for o, c in (("sum", 1001), ("prod", 7), ("max", 33), ("min", 33),
                                                         ("avg", 65), ("premul", 17))]


def test_nccl_allreduce_every_dtype_and_op_three_processes(libs, tmp_path):
    fd.spawn(_nccl_allreduce_body, 3, fd.Board(tmp_path), ALL_CASES, devices=3)


def test_nccl_allreduce_large_and_in_place_four_processes(libs, tmp_path):
    # 300_001 float64 = 2.3 MiB: several staging pieces.
    fd.spawn(_nccl_allreduce_body, 4, fd.Board(tmp_path), [("float64", "sum", 300_001), ("bfloat16", "sum", 5),
                                                     ("int64", "max", 3)], devices=4)


def _nccl_other_collectives_body(rank, world, board):
    cuda, nccl, comm = _nccl_setup(rank, world, board)
    stream, dev = cuda.stream_create(non_blocking=True), rank % cuda.device_count()
    for dtype, count in (("float32", 37), ("int32", 5), ("bfloat16", 9), ("float16", 200_003)):
        zeros = np.zeros(count * world, np.float32 if dtype == "bfloat16" else dtype)
        inputs = [_data(r, dtype, count * world, "sum") for r in range(world)]
        host = lambda a: fd.bf16_bits(a) if dtype == "bfloat16" else a.astype(dtype)  # noqa: E731
        # reduce-scatter: rank r gets block r of the sum
        x, y = _device(cuda, inputs[rank], dtype, dev), _device(cuda, zeros[:count], dtype, dev)
        assert nccl.coll("ncclReduceScatter", comm, stream, x, y, count, dtype, NCCL_OPS["sum"]) == 0
        # all-gather of this rank's first `count` inputs
        g = _device(cuda, zeros, dtype, dev)
        assert nccl.coll("ncclAllGather", comm, stream, x, g, count, dtype) == 0
        # broadcast from the last rank, in place
        b = _device(cuda, inputs[rank], dtype, dev)
        assert nccl.coll("ncclBroadcast", comm, stream, b, b, count * world, dtype, world - 1) == 0
        # reduce (max) to rank 1
        m = _device(cuda, zeros, dtype, dev)
        assert nccl.coll("ncclReduce", comm, stream, x, m, count * world, dtype, NCCL_OPS["max"], 1) == 0
        cuda.stream_synchronize(stream)
        full = _reference(inputs, dtype, "sum")
        _close(y.to_numpy(), full[rank * count:(rank + 1) * count], dtype, world)
        np.testing.assert_array_equal(g.to_numpy(), np.concatenate([host(inputs[r][:count]) for r in range(world)]))
        np.testing.assert_array_equal(b.to_numpy(), host(inputs[world - 1]))
        if rank == 1:
            np.testing.assert_array_equal(m.to_numpy(), _reference(inputs, dtype, "max"))
        else:
            assert not m.to_numpy().any(), "Reduce wrote a non-root output"


def test_nccl_reducescatter_allgather_broadcast_reduce(libs, tmp_path):
    fd.spawn(_nccl_other_collectives_body, 3, fd.Board(tmp_path), devices=3)


def _nccl_p2p_body(rank, world, board):
    cuda, nccl, comm = _nccl_setup(rank, world, board)
    stream, dev = cuda.stream_create(), rank
    right, left = (rank + 1) % world, (rank - 1) % world
    n = 300_001  # 1.2 MiB, more than the fake's ring holds: only a group keeps this from deadlocking
    msgs = [np.random.default_rng([rank, right, k]).standard_normal(n).astype(np.float32) for k in range(2)]
    sends = [_device(cuda, m, "float32", dev) for m in msgs]
    recvs = [_device(cuda, np.zeros(n, np.float32), "float32", dev) for _ in range(2)]
    nccl.check("ncclGroupStart")
    for k in range(2):  # two messages per pair: matched in posting order
        for name, buf, peer in (("ncclSend", sends[k], right), ("ncclRecv", recvs[k], left)):
            nccl.check(name, ctypes.c_void_p(buf.ptr), ctypes.c_size_t(n), ctypes.c_int(7), ctypes.c_int(peer),
                       ctypes.c_void_p(comm), ctypes.c_void_p(stream))
    nccl.check("ncclGroupEnd")
    cuda.stream_synchronize(stream)
    for k in range(2):
        want = np.random.default_rng([left, rank, k]).standard_normal(n).astype(np.float32)
        np.testing.assert_array_equal(recvs[k].to_numpy(), want)
    bad = nccl.lib.ncclSend(ctypes.c_void_p(sends[0].ptr), ctypes.c_size_t(1), ctypes.c_int(7), ctypes.c_int(world),
                            ctypes.c_void_p(comm), ctypes.c_void_p(stream))
    assert bad == INVALID_ARGUMENT and "peer" in nccl.last_error()


def test_nccl_grouped_send_recv_ring(libs, tmp_path):
    fd.spawn(_nccl_p2p_body, 3, fd.Board(tmp_path), devices=3)


def _nccl_duplicate_body(rank, world, board):
    nccl = Nccl()
    if rank == 0:
        board.put("uid", nccl.unique_id())
    code, comm = nccl.init(world, board.get("uid"), rank)
    return code, nccl.last_error()


def test_nccl_refuses_two_ranks_on_one_device(libs, tmp_path):
    for code, text in fd.spawn(_nccl_duplicate_body, 2, fd.Board(tmp_path), devices=1):
        assert code == INVALID_USAGE
        assert "Duplicate GPU detected : rank 0 and rank 1 both on CUDA device 18000" in text, text


def _nccl_mismatch_body(rank, world, board):
    cuda, nccl, comm = _nccl_setup(rank, world, board)
    count = 5 if rank == 0 else 7
    x = _device(cuda, np.ones(count, np.float32), "float32", rank)
    y = _device(cuda, np.full(count, -1.0, np.float32), "float32", rank)
    assert nccl.coll("ncclAllReduce", comm, 0, x, y, count, "float32", 0) == 0
    cuda.stream_synchronize(0)
    assert nccl.async_error(comm) == INVALID_USAGE
    text = nccl.last_error()
    assert "rank 0 called AllReduce(count 5" in text and "rank 1 called AllReduce(count 7" in text, text
    assert (y.to_numpy() == -1).all(), "a mismatched collective wrote its output"
    # The communicator stays failed: later calls say so.
    assert nccl.coll("ncclAllReduce", comm, 0, x, y, 1, "float32", 0) == INVALID_USAGE


def test_nccl_mismatch_is_an_async_error(libs, tmp_path):
    fd.spawn(_nccl_mismatch_body, 2, fd.Board(tmp_path), devices=2)


def _nccl_abort_body(rank, world, board):
    cuda, nccl, comm = _nccl_setup(rank, world, board)
    x = _device(cuda, np.ones(3, np.float32), "float32", rank)
    stream = cuda.stream_create()
    if rank == 1:  # rank 0 never joins this allreduce: abort must unblock it
        board.put("pid", str(os.getpid()).encode())
        assert nccl.coll("ncclAllReduce", comm, stream, x, x, 3, "float32", 0) == 0
        time.sleep(0.2)
        assert not cuda.stream_query(stream)
        nccl.check("ncclCommAbort", ctypes.c_void_p(comm))
        cuda.stream_synchronize(stream)
        board.put("aborted", b"1")
        return os.getpid()
    board.get("aborted")
    time.sleep(0.1)
    board.get("exited")  # the peer's process is gone: this rank's collective fails instead of hanging
    assert nccl.coll("ncclAllReduce", comm, stream, x, x, 3, "float32", 0) == 0
    cuda.stream_synchronize(stream)
    assert nccl.async_error(comm) == REMOTE_ERROR
    assert "rank 1" in nccl.last_error(), nccl.last_error()


def test_nccl_abort_unblocks(libs, tmp_path):
    board = fd.Board(tmp_path)
    watcher = threading.Thread(target=_post_when_rank1_exits, args=(board,), daemon=True)
    watcher.start()
    fd.spawn(_nccl_abort_body, 2, board, devices=2)


def _post_when_rank1_exits(board):
    pid = int(board.get("pid", timeout=30))
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        time.sleep(0.02)
    board.put("exited", b"1")


def _nccl_split_body(rank, world, board):
    cuda, nccl, comm = _nccl_setup(rank, world, board)
    sub = ctypes.c_void_p()
    color = -1 if rank == 4 else rank % 2  # rank 4 opts out (NCCL_SPLIT_NOCOLOR)
    nccl.check("ncclCommSplit", ctypes.c_void_p(comm), ctypes.c_int(color), ctypes.c_int(-rank), ctypes.byref(sub),
               None)
    if color < 0:
        assert sub.value is None
        return None
    x = _device(cuda, np.array([rank], np.int64), "int64", rank)
    g = _device(cuda, np.zeros(2, np.int64), "int64", rank)
    assert nccl.coll("ncclAllGather", sub.value, 0, x, g, 1, "int64") == 0
    cuda.stream_synchronize(0)
    return list(g.to_numpy())


def test_nccl_split_orders_by_key(libs, tmp_path):
    got = fd.spawn(_nccl_split_body, 5, fd.Board(tmp_path), devices=5)
    assert got == [[2, 0], [3, 1], [2, 0], [3, 1], None]  # key -rank: higher ranks first


# ---------------------------------------------------------------- HCCL, through hcomm's HcclComm

def _hccl_comm(rank, world, board):
    from hcomm import _C

    if rank == 0:
        board.put("info", _C.hccl_root_info())
    return _C.HcclComm(rank, world, board.get("info"), rank % 3)


def _hccl_collectives_body(rank, world, board):
    comm = _hccl_comm(rank, world, board)
    keep = []

    def host(values, dtype):  # the bits HCCL sees (bfloat16 as uint16)
        a = fd.bf16_bits(values) if dtype == "bfloat16" else np.array(values, dtype=dtype)  # a copy
        keep.append(a)
        return a

    for dtype, op, count in (("float32", "sum", 1001), ("bfloat16", "sum", 33), ("float16", "max", 17),
                             ("int32", "prod", 9), ("int8", "min", 65), ("float64", "sum", 300_001),
                             ("uint8", "max", 7), ("int64", "sum", 5)):
        inputs = [_data(r, dtype, count, op) for r in range(world)]
        x, y = host(inputs[rank], dtype), host(np.zeros(count, np.float32 if dtype == "bfloat16" else dtype), dtype)
        comm.allreduce(x.ctypes.data, y.ctypes.data, count, dtype, op, 0)
        comm.synchronize()
        _close(y, _reference(inputs, dtype, op), dtype, world)
    count = 11
    inputs = [_data(r, "float32", count * world, "sum") for r in range(world)]
    x = host(inputs[rank], "float32")
    rs, ag = host(np.zeros(count), "float32"), host(np.zeros(count * world), "float32")
    bc = host(inputs[rank], "float32")
    comm.reduce_scatter(x.ctypes.data, rs.ctypes.data, count, "float32", "sum", 0)
    comm.allgather(x.ctypes.data, ag.ctypes.data, count, "float32", 0)
    comm.broadcast(bc.ctypes.data, count * world, "float32", world - 1, 0)
    # A ring that is valid under HCCL's blocking sends: even ranks send first.
    right, left = (rank + 1) % world, (rank - 1) % world
    out, got = host(inputs[rank][:5] * 3, "float32"), host(np.zeros(5), "float32")
    steps = [("send", out, right), ("recv", got, left)]
    for name, buf, peer in steps if rank % 2 == 0 else steps[::-1]:
        getattr(comm, name)(buf.ctypes.data, 5, "float32", peer, 0)
    comm.synchronize()
    _close(rs, _reference(inputs, "float32", "sum")[rank * count:(rank + 1) * count], "float32", world)
    np.testing.assert_array_equal(ag, np.concatenate([inputs[r][:count] for r in range(world)]))
    np.testing.assert_array_equal(bc, inputs[world - 1])
    np.testing.assert_array_equal(got, inputs[left][:5] * 3)


def test_hccl_fake_collectives_through_hcomm_three_processes(libs, tmp_path):
    fd.spawn(_hccl_collectives_body, 3, fd.Board(tmp_path), devices=3)


def _hccl_mismatch_body(rank, world, board):
    import hcomm

    comm = _hccl_comm(rank, world, board)
    count = 5 + rank
    x, y = np.ones(count, np.float32), np.full(count, -1.0, np.float32)
    comm.allreduce(x.ctypes.data, y.ctypes.data, count, "float32", "sum", 0)
    with pytest.raises(hcomm.Error, match="aclrtSynchronizeStream failed with aclError 507899"):
        comm.synchronize()
    assert (y == -1).all(), "a mismatched collective wrote its output"
    with pytest.raises(hcomm.Error, match="HcclAllReduce failed with HcclResult 4"):
        comm.allreduce(x.ctypes.data, y.ctypes.data, 1, "float32", "sum", 0)


def test_hccl_fake_mismatch_fails_the_stream(libs, tmp_path):
    fd.spawn(_hccl_mismatch_body, 2, fd.Board(tmp_path), devices=2)
