"""The torch backend's device routing, checked where torch has no CUDA (its CPU build).

What runs for real here: registration for cpu and cuda, the refusals (meta tensors,
cpu and cuda mixed, two CUDA devices) through torch.distributed and ProcessGroupHcomm,
and that CPU tensors never reach torch.cuda (torch.cuda.current_stream and
torch.cuda.stream are monkeypatched to raise in that one test: routing only).

What is simulated, for ROUTING ONLY: CUDA tensors are torch FakeTensors on "cuda"
(shape, dtype and device without memory, torch's own tracing tensors), the Communicator
is a recorder, and the stream seam (hcomm.torch.streams.caller_stream / new_future) is
monkeypatched, because this torch build cannot make a CUDA stream or a CUDA-aware
future. These tests show which path a CUDA tensor takes and that staging lands on its
device; the device script (scripts/gpu_check.sh: DDP on cuda against nccl) shows the
stream semantics on a GPU.
"""
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode

import hcomm.torch as ht
from hcomm.torch import backend, streams
from hcomm.torch.work import HcommWork

from harness import free_port


def test_registered_for_cpu_and_cuda():
    assert dist.Backend.backend_capability["hcomm"] == ["cpu", "cuda"]
    assert ht.DEVICES == ("cpu", "cuda")


def test_placement_routes_and_refuses():
    cpu = torch.zeros(3)
    assert streams.placement([cpu, torch.ones(2, dtype=torch.int8)], "x") is None
    with FakeTensorMode():
        c0, c0b, c1 = torch.empty(3, device="cuda:0"), torch.empty(5, device="cuda:0"), torch.empty(3, device="cuda:1")
    assert c0.is_cuda and not c0.is_cpu
    assert streams.placement([c0, c0b], "x") == torch.device("cuda:0")
    with pytest.raises(RuntimeError, match=r"hcomm allgather: tensors on cpu and cuda:0 in one call"):
        streams.placement([cpu, c0], "allgather")
    with pytest.raises(RuntimeError, match=r"hcomm scatter: tensors on two devices, cuda:0 and cuda:1"):
        streams.placement([c0, c1], "scatter")
    with pytest.raises(RuntimeError, match=r"hcomm reduce: tensor on meta \(torch.bfloat16\); .*cpu and cuda"):
        streams.placement([torch.empty(2, dtype=torch.bfloat16, device="meta")], "reduce")


def _one_rank(fn):
    """fn() inside a world-size-1 hcomm process group (in this process)."""
    dist.init_process_group("hcomm", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=timedelta(seconds=30))
    try:
        return fn()
    finally:
        dist.destroy_process_group()


def test_refusals_through_torch_distributed_name_the_device():
    def body():
        meta = torch.empty(4, device="meta")
        with pytest.raises(RuntimeError, match="tensor on meta"):
            dist.all_reduce(meta)
        with pytest.raises(RuntimeError, match="tensor on meta"):
            dist.broadcast(meta, src=0)
        with pytest.raises(RuntimeError, match="tensor on meta"):
            dist.all_gather([torch.empty(4)], meta)
        # and the group still works on cpu afterwards
        x = torch.arange(5.0)
        dist.all_reduce(x)
        assert torch.equal(x, torch.arange(5.0))
    _one_rank(body)


def test_cpu_tensors_never_touch_torch_cuda(monkeypatch):
    """A CPU build raises on any torch.cuda stream call; poisoning it shows the CPU path
    (blocking, async, staged) never makes one."""
    def poisoned(*a, **k):
        raise AssertionError("torch.cuda reached for a CPU tensor")
    monkeypatch.setattr(torch.cuda, "current_stream", poisoned)
    monkeypatch.setattr(torch.cuda, "stream", poisoned)

    def body():
        x = torch.arange(6.0)
        dist.all_reduce(x)
        w = dist.all_reduce(x, async_op=True)
        w.wait()
        assert w.get_future().value()[0] is x
        outs = [torch.empty(6)]
        dist.all_gather(outs, x)
        assert torch.equal(outs[0], x)
        t = torch.arange(12.0).view(3, 4).t()  # non-contiguous: staged, copied back at completion
        dist.all_reduce(t, async_op=True).wait()
        assert torch.equal(t, torch.arange(12.0).view(3, 4).t())
    _one_rank(body)


class _Stream:
    """Stands in for a torch.cuda.Stream (the routing tests' seam)."""

    def __init__(self, device):
        self.device = device


class _CoreWork:
    def __init__(self):
        self.callbacks = []

    def add_done_callback(self, fn):
        self.callbacks.append(fn)


class _Recorder:
    """Stands in for hcomm's Communicator: records calls, returns works never completed."""

    rank, size, timeout, closed = 0, 1, 30.0, False

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return _CoreWork() if kwargs.get("async_op") else None
        return call


@pytest.fixture
def routed(monkeypatch):
    """(group over a recorder, recorder, seam calls) with the stream seam patched."""
    seen = []

    def caller_stream(device):
        seen.append(device)
        return None if device is None else _Stream(device)

    monkeypatch.setattr(backend, "caller_stream", caller_stream)
    monkeypatch.setattr(streams, "new_future", lambda stream: torch.futures.Future())
    rec = _Recorder()
    return backend.ProcessGroupHcomm(rec, timedelta(seconds=30)), rec, seen


def test_cuda_tensor_goes_to_the_communicator_as_it_is(routed):
    pg, rec, seen = routed
    with FakeTensorMode():
        t = torch.empty(7, device="cuda:0")
    opts = dist.AllreduceOptions()
    opts.asyncOp = False
    work = pg.allreduce([t], opts)
    name, args, kwargs = rec.calls[-1]
    assert name == "allreduce" and args[0] is t and kwargs["async_op"] is False
    assert seen[-1] == torch.device("cuda:0") and isinstance(work, HcommWork)
    assert work._stream.device == torch.device("cuda:0")
    opts.asyncOp = True
    work = pg.allreduce([t], opts)
    assert rec.calls[-1][2]["async_op"] is True and not work.is_completed()
    assert work._stream.device == torch.device("cuda:0")


def test_staging_lands_on_the_tensors_cuda_device(routed):
    pg, rec, seen = routed
    with FakeTensorMode():
        x = torch.empty(5, dtype=torch.bfloat16, device="cuda:0")
        outs = [torch.empty(5, dtype=torch.bfloat16, device="cuda:0")]
        pg.allgather([outs], [x])
        _, (src, flat, counts), _ = rec.calls[-1]
        assert src.device == flat.device == torch.device("cuda:0") and counts == [10]
        pg.alltoall([torch.empty(3, device="cuda:0")], [torch.empty(3, device="cuda:0")])
        _, (src, flat, send, recv), _ = rec.calls[-1]
        assert src.device == flat.device == torch.device("cuda:0") and send == recv == [12]
    assert seen[-2:] == [torch.device("cuda:0")] * 2


def test_cpu_tensor_takes_the_cpu_path_through_the_same_group(routed):
    pg, rec, seen = routed
    x = torch.arange(4.0)
    pg.allgather([[torch.empty(4)]], [x])
    _, (src, flat, _), _ = rec.calls[-1]
    assert flat.device.type == "cpu" and seen[-1] is None
