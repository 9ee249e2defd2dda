"""Contract tests of the GPU test doubles in tests/fake_cuda/ (built by fake_device.py).

hcomm's GPU code is tested on these fakes, so the fakes must behave as the real
libraries do where that code relies on it: CUDA IPC memory and events across processes,
stream order, event waits, error codes for misuse. Ranks are spawned processes (never
forked: the runtime runs worker threads); they swap IPC handles through files.
"""
import ctypes
import os
import threading
import time

import numpy as np
import pytest

import fake_device as fd
from harness import run_ranks

NOT_READY, INVALID_VALUE, INVALID_DEVICE, INVALID_CONTEXT = 600, 1, 101, 201
MAP_FAILED, INVALID_HANDLE, INVALID_DIRECTION = 205, 400, 21


@pytest.fixture(scope="module")
def libs():
    return fd.libraries()


class Board:
    """A file per key: what one rank posts another reads (spawned ranks share no memory)."""

    def __init__(self, folder):
        self.folder = str(folder)

    def put(self, key, data):
        tmp = os.path.join(self.folder, f".{key}.{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(self.folder, key))

    def get(self, key, timeout=15):
        path, end = os.path.join(self.folder, key), time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > end:
                raise TimeoutError(f"nobody posted {key!r}")
            time.sleep(0.005)
        with open(path, "rb") as f:
            return f.read()


def spawn(fn, n, *args, devices=1, timeout=30):
    env = fd.child_env(devices=devices, base={})
    return run_ranks(fn, n, mode="process", start_method="spawn", timeout=timeout, args=args, env=env)


def expect_code(code, call, *args):
    with pytest.raises(fd.CudaError) as info:
        call(*args)
    assert info.value.code == code, str(info.value)
    return info.value


# ---------------------------------------------------------------- devices and pointers

def _devices_body(rank, world, board):
    cuda = fd.FakeCuda()
    assert cuda.device_count() == 3
    ids = [cuda.pci_bus_id(d) for d in range(3)]
    assert len(set(ids)) == 3 and all(len(i) == 12 and i.startswith("0000:") for i in ids), ids
    expect_code(INVALID_DEVICE, cuda.set_device, 3)
    expect_code(INVALID_DEVICE, cuda.pci_bus_id, -1)
    cuda.set_device(2)
    seen = []
    t = threading.Thread(target=lambda: seen.append(cuda.get_device()))  # a new thread starts on device 0
    t.start()
    t.join()
    assert seen == [0] and cuda.get_device() == 2
    return ids


def test_devices_bus_ids_and_current_device_per_thread(libs, tmp_path):
    a, b = spawn(_devices_body, 2, Board(tmp_path), devices=3)
    assert a == b, "the same device must have the same PCI bus id in every process"


def _pointer_body(rank, world):
    cuda = fd.FakeCuda()
    dev = cuda.malloc(1000, device=1)
    assert cuda.get_device() == 0, "malloc(device=) restores the current device"
    for p in (dev, dev + 1, dev + 999):
        assert cuda.pointer_attributes(p) == ("device", 1)
    pinned = cuda.host_alloc(64)
    assert cuda.pointer_attributes(pinned + 10) == ("host", 0)
    host = np.zeros(8)
    assert cuda.pointer_attributes(host.ctypes.data) == ("unregistered", -2)
    assert cuda.pointer_attributes(dev + 4096 * 4)[0] == "unregistered"
    # Copies check the device side; the error names itself.
    err = expect_code(INVALID_VALUE, cuda.memcpy, host.ctypes.data, host.ctypes.data, 8, fd.D2H)
    assert "cudaErrorInvalidValue" in str(err) and "invalid argument" in str(err)
    expect_code(INVALID_VALUE, cuda.memcpy, dev + 996, host.ctypes.data, 8, fd.H2D)  # past the end
    expect_code(INVALID_DIRECTION, cuda.memcpy, dev, host.ctypes.data, 8, 7)
    expect_code(INVALID_VALUE, cuda.free, host.ctypes.data)
    expect_code(INVALID_VALUE, cuda.free_host, dev)
    cuda.memcpy(pinned, dev, 64, fd.D2D)  # pinned memory is device-accessible
    assert cuda.malloc(0) == 0
    cuda.free(dev)
    cuda.free_host(pinned)
    assert cuda.pointer_attributes(dev)[0] == "unregistered"


def test_pointer_attributes_and_copy_checks(libs):
    spawn(_pointer_body, 1, devices=2)


# ---------------------------------------------------------------- IPC memory

def _ipc_memory_body(rank, world, board):
    cuda = fd.FakeCuda()
    data = np.random.default_rng(7).standard_normal(1001).astype(np.float32)
    if rank == 0:
        buf = fd.DeviceArray.from_numpy(data, device=1, cuda=cuda)
        handle = cuda.ipc_get_mem_handle(buf.ptr + 40)  # an interior pointer names the allocation
        expect_code(INVALID_CONTEXT, cuda.ipc_open_mem_handle, handle)  # CUDA refuses its own process
        gone = cuda.malloc(256)
        gone_handle = cuda.ipc_get_mem_handle(gone)
        cuda.free(gone)
        board.put("handle", handle)
        board.put("gone", gone_handle)
        board.get("written")
        got = buf.to_numpy()
        np.testing.assert_array_equal(got[:500], data[:500])
        np.testing.assert_array_equal(got[500:], -data[500:])
        expect_code(INVALID_VALUE, cuda.ipc_get_mem_handle, data.ctypes.data)
        return
    handle = board.get("handle")
    ptr = cuda.ipc_open_mem_handle(handle)
    assert cuda.ipc_open_mem_handle(handle) == ptr, "a second open returns the same mapping"
    assert cuda.pointer_attributes(ptr + 4 * 1000) == ("device", 1)
    got = np.empty(1001, np.float32)
    cuda.memcpy_dtoh(got, ptr)
    np.testing.assert_array_equal(got, data)
    cuda.memcpy_htod(ptr + 4 * 500, -data[500:])  # the exporter sees the same pages
    expect_code(INVALID_VALUE, cuda.free, ptr)  # imports are closed, not freed
    cuda.ipc_close_mem_handle(ptr)
    cuda.ipc_close_mem_handle(ptr)
    expect_code(INVALID_VALUE, cuda.ipc_close_mem_handle, ptr)
    expect_code(INVALID_HANDLE, cuda.ipc_open_mem_handle, bytes(range(64)))
    expect_code(MAP_FAILED, cuda.ipc_open_mem_handle, board.get("gone"))
    board.put("written", b"1")


def test_ipc_memory_across_processes(libs, tmp_path):
    spawn(_ipc_memory_body, 2, Board(tmp_path), devices=2)


# ---------------------------------------------------------------- streams and events

def _gate(cuda, stream):
    """Blocks `stream` until the returned threading.Event is set."""
    gate = threading.Event()
    cuda.launch_host_func(stream, lambda: gate.wait(20))
    return gate


def _ipc_event_body(rank, world, board):
    cuda = fd.FakeCuda()
    if rank == 0:
        expect_code(INVALID_VALUE, cuda.event_create, True, False)  # interprocess needs DisableTiming
        plain = cuda.event_create()
        expect_code(INVALID_HANDLE, cuda.ipc_get_event_handle, plain)
        ev, stream = cuda.event_create(interprocess=True), cuda.stream_create()
        gate = _gate(cuda, stream)
        cuda.event_record(ev, stream)
        board.put("event", cuda.ipc_get_event_handle(ev))
        board.get("waiting")
        assert not cuda.event_query(ev)
        gate.set()
        cuda.event_synchronize(ev)
        board.get("done")
        cuda.event_record(ev, stream)  # a second record is seen by the importer too
        cuda.stream_synchronize(stream)
        board.put("second", b"1")
        board.get("done2")
        return
    ev = cuda.ipc_open_event_handle(board.get("event"))
    assert not cuda.event_query(ev), "the exporter's record is still pending"
    stream, ran = cuda.stream_create(), []
    dev = cuda.malloc(8)
    src = np.arange(2, dtype=np.float32)
    cuda.stream_wait_event(stream, ev)
    cuda.memcpy_async(dev, src.ctypes.data, 8, fd.H2D, stream)
    cuda.launch_host_func(stream, lambda: ran.append("after"))
    time.sleep(0.2)
    assert ran == [] and not cuda.stream_query(stream), "work after the wait ran before the record completed"
    board.put("waiting", b"1")
    cuda.stream_synchronize(stream)
    assert ran == ["after"] and cuda.event_query(ev)
    board.put("done", b"1")
    board.get("second")
    cuda.event_synchronize(ev)
    assert cuda.event_query(ev)
    expect_code(INVALID_VALUE, cuda.ipc_open_event_handle, b"\0" * 64)
    board.put("done2", b"1")


def test_ipc_events_across_processes(libs, tmp_path):
    spawn(_ipc_event_body, 2, Board(tmp_path))


def _stream_order_body(rank, world):
    cuda = fd.FakeCuda()
    a, b, order = cuda.stream_create(), cuda.stream_create(), []
    ev = cuda.event_create()
    assert cuda.event_query(ev), "a never-recorded event counts as complete"
    cuda.stream_wait_event(b, ev)  # ... and waiting on it is a no-op
    gate = _gate(cuda, a)
    for i in range(3):
        cuda.launch_host_func(a, lambda i=i: order.append(f"a{i}"))
    cuda.event_record(ev, a)
    cuda.launch_host_func(a, lambda: time.sleep(0.05) or order.append("a-late"))
    host = np.arange(16, dtype=np.float32)
    dev = cuda.malloc(host.nbytes)
    cuda.stream_wait_event(b, ev)
    cuda.memcpy_async(dev, host.ctypes.data, host.nbytes, fd.H2D, b)
    cuda.launch_host_func(b, lambda: order.append("b"))
    cuda.event_record(ev, b)  # a later record does not move b's wait
    time.sleep(0.2)
    assert order == [] and not cuda.stream_query(a) and not cuda.stream_query(b) and not cuda.event_query(ev)
    gate.set()
    cuda.stream_synchronize(b)
    assert order[:4] == ["a0", "a1", "a2", "b"], order
    cuda.stream_synchronize(a)
    got = np.empty_like(host)
    cuda.memcpy_dtoh(got, dev)
    np.testing.assert_array_equal(got, host)

    # The legacy default stream waits for blocking streams, not for non-blocking ones.
    for non_blocking, expect in ((False, ["s", "legacy"]), (True, ["legacy", "s"])):
        s, order = cuda.stream_create(non_blocking=non_blocking), []
        gate = _gate(cuda, s)
        cuda.launch_host_func(s, lambda: order.append("s"))
        cuda.launch_host_func(0, lambda: order.append("legacy"))
        time.sleep(0.1)
        gate.set()
        cuda.stream_synchronize(0)
        cuda.stream_synchronize(s)
        assert order == expect, (non_blocking, order)
        cuda.stream_destroy(s)
    expect_code(INVALID_HANDLE, cuda.stream_destroy, a + 1)


def test_stream_order_and_event_waits(libs):
    spawn(_stream_order_body, 1)


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
    spawn(_nccl_allreduce_body, 3, Board(tmp_path), ALL_CASES, devices=3)


def test_nccl_allreduce_large_and_in_place_four_processes(libs, tmp_path):
    # 300_001 float64 = 2.3 MiB: several staging pieces.
    spawn(_nccl_allreduce_body, 4, Board(tmp_path), [("float64", "sum", 300_001), ("bfloat16", "sum", 5),
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
    spawn(_nccl_other_collectives_body, 3, Board(tmp_path), devices=3)


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
    spawn(_nccl_p2p_body, 3, Board(tmp_path), devices=3)


def _nccl_duplicate_body(rank, world, board):
    nccl = Nccl()
    if rank == 0:
        board.put("uid", nccl.unique_id())
    code, comm = nccl.init(world, board.get("uid"), rank)
    return code, nccl.last_error()


def test_nccl_refuses_two_ranks_on_one_device(libs, tmp_path):
    for code, text in spawn(_nccl_duplicate_body, 2, Board(tmp_path), devices=1):
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
    spawn(_nccl_mismatch_body, 2, Board(tmp_path), devices=2)


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
    board = Board(tmp_path)
    watcher = threading.Thread(target=_post_when_rank1_exits, args=(board,), daemon=True)
    watcher.start()
    spawn(_nccl_abort_body, 2, board, devices=2)


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
    got = spawn(_nccl_split_body, 5, Board(tmp_path), devices=5)
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
    spawn(_hccl_collectives_body, 3, Board(tmp_path), devices=3)


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
    spawn(_hccl_mismatch_body, 2, Board(tmp_path), devices=2)
