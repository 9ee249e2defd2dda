"""Stream semantics and refusals of device calls, on the fake GPU (tests/fake_cuda).

Ordering as NCCL users expect: a collective sees what was queued on the caller's stream
before it (the producer here is a host function on that stream that sleeps, then
writes the input: without hcomm's event on the caller's stream the collective would
read the old values), and work queued on the stream after Work.wait() sees the result
(the consumer reads it in stream order; wait() itself does not block the host).
Bad input is refused with hcomm.InvalidArgument before any byte moves.
"""
import ctypes
import time

import numpy as np
import pytest

import fake_device
from harness import run_comm

COUNT = 5003


def _producer_consumer(comm):
    import hcomm

    cuda = fake_device.FakeCuda()
    me, n = comm.rank, comm.size
    values = np.full(COUNT, me + 1.0, dtype=np.float32)
    want = np.full(COUNT, n * (n + 1) / 2, dtype=np.float32)
    stream = cuda.stream_create(non_blocking=True)

    def produce(x):
        def write():
            time.sleep(0.3)  # long after the call was made
            ctypes.memmove(x.ptr, values.ctypes.data, values.nbytes)
        cuda.launch_host_func(stream, write)

    # Blocking call: its result includes what the stream produced before it.
    x = fake_device.DeviceArray.from_numpy(np.zeros(COUNT, np.float32), cuda=cuda)
    produce(x)
    comm.allreduce(x, stream=stream)
    np.testing.assert_array_equal(x.to_numpy(), want, err_msg="blocking call missed the producer")

    # Async call: wait() orders the stream; a consumer queued after it sees the result.
    y = fake_device.DeviceArray.from_numpy(np.zeros(COUNT, np.float32), cuda=cuda)
    produce(y)
    work = comm.allreduce(y, async_op=True, stream=stream)
    assert work.wait() is True
    seen = np.zeros(COUNT, np.float32)
    cuda.launch_host_func(stream, lambda: ctypes.memmove(seen.ctypes.data, y.ptr, seen.nbytes))
    cuda.stream_synchronize(stream)
    np.testing.assert_array_equal(seen, want, err_msg="a consumer queued after wait() missed the result")
    work.synchronize()

    # Out of place with a torch-style explicit stream object (anything with cuda_stream).
    class TorchLikeStream:
        cuda_stream = stream

    src = fake_device.DeviceArray.from_numpy(values, cuda=cuda)
    out = fake_device.DeviceArray(cuda, (COUNT,), np.float32)
    comm.allreduce(src, out=out, stream=TorchLikeStream())
    np.testing.assert_array_equal(out.to_numpy(), want)
    assert comm.flight_record()["entries"][-1]["stream"] == stream
    return hcomm.__name__


def test_stream_order_producer_and_consumer():
    run_comm(_producer_consumer, 2, mode="process", start_method="spawn", env=fake_device.child_env(devices=1), timeout=120)


def _refusals(comm):
    import hcomm

    cuda = fake_device.FakeCuda()
    dev = fake_device.DeviceArray.from_numpy(np.ones(8, np.float32), cuda=cuda)
    host = np.ones(8, np.float32)
    with pytest.raises(hcomm.InvalidArgument, match="two kinds of memory"):
        comm.allreduce(dev, out=host)
    with pytest.raises(hcomm.InvalidArgument, match="two kinds of memory"):
        comm.allgather(host, fake_device.DeviceArray(cuda, (8 * comm.size,), np.float32))
    with pytest.raises(hcomm.InvalidArgument, match="not C-contiguous"):
        comm.allreduce(fake_device.DeviceArray.from_numpy(np.ones((4, 6), np.float32), cuda=cuda)[:, ::2])
    other = fake_device.DeviceArray.from_numpy(np.ones(8, np.float32), cuda=cuda, device=1)
    with pytest.raises(hcomm.InvalidArgument, match="two devices.*cuda:0 and cuda:1"):
        comm.allreduce(dev, out=other)
    with pytest.raises(hcomm.InvalidArgument, match="stream= was given but the buffers are host memory"):
        comm.allreduce(host, stream=0)
    with pytest.raises(hcomm.InvalidArgument, match="typestr"):
        comm.allreduce(fake_device.DeviceArray.from_numpy(np.ones(3, np.complex64), cuda=cuda))
    comm.allreduce(dev)  # binds this rank to cuda:0
    assert comm._c.device == 0
    with pytest.raises(hcomm.InvalidArgument, match="cuda:1, but this rank's device is cuda:0"):
        comm.allreduce(other)
    np.testing.assert_array_equal(dev.to_numpy(), np.full(8, comm.size, np.float32))  # nothing else moved
    comm.close()
    with pytest.raises(hcomm.Error, match="closed"):
        comm.allreduce(dev)
    return True


def test_bad_device_input_is_refused_before_any_byte_moves():
    run_comm(_refusals, 2, mode="process", start_method="spawn", env=fake_device.child_env(devices=2), timeout=120)
