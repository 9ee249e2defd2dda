"""Contract tests of the fake CUDA runtime in tests/fake_cuda/ (built by fake_device.py;
the NCCL and HCCL fakes are tested in test_fake_collectives.py).

hcomm's GPU code is tested on these fakes, so the fakes must behave as the real
libraries do where that code relies on it: CUDA IPC memory and events across processes,
stream order, event waits, error codes for misuse. Ranks are spawned processes (never
forked: the runtime runs worker threads); they swap IPC handles through files.
"""
import threading
import time

import numpy as np
import pytest

import fake_device as fd

NOT_READY, INVALID_VALUE, INVALID_DEVICE, INVALID_CONTEXT = 600, 1, 101, 201
MAP_FAILED, INVALID_HANDLE, INVALID_DIRECTION = 205, 400, 21


@pytest.fixture(scope="module")
def libs():
    return fd.libraries()


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
    a, b = fd.spawn(_devices_body, 2, fd.Board(tmp_path), devices=3)
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
    fd.spawn(_pointer_body, 1, devices=2)


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
    fd.spawn(_ipc_memory_body, 2, fd.Board(tmp_path), devices=2)


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
    fd.spawn(_ipc_event_body, 2, fd.Board(tmp_path))


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
    fd.spawn(_stream_order_body, 1)
