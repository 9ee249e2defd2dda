"""The CUDA seam of the torch backend: where a call's tensors live, and stream order.

A c10d call's tensors are all on the CPU or all on one CUDA device; anything else is
refused with an error naming the devices, before any byte moves. CUDA tensors go to
hcomm's Communicator as they are: it orders the collective after the work already
queued on the caller's current stream (an event, no host wait). On top of that this
module gives c10d what ProcessGroupNCCL gives:

- the Work's future is CUDA-aware (`torch.futures.Future(devices=[device])`): whoever
  waits on it (work.wait(), DDP's reducer, .then() callbacks) has its current stream
  ordered after the result, with no host synchronisation;
- the completion runs with the caller's stream S (current at the call) current: S is
  made to wait on the collective (hcomm's Work.wait on device buffers), the copy-outs
  (staging, unpacking) are queued on S, then the future is completed, which records
  its event on S.

Where this differs from ProcessGroupNCCL: the completion comes once hcomm's host-driven
part is done (cuda_ipc and staging are driven by hcomm's progress thread), so an async
work's wait() blocks the host until then; and S, not a side stream, carries the
copy-outs, so S waits for the collective from the point the completion is queued.
Only this module touches torch.cuda, and only for CUDA tensors.
"""
import contextlib

import torch


def placement(tensors, what):
    """None when every tensor is on the CPU; the torch.device when all are on one CUDA
    device. Anything else (another device type, cpu and cuda mixed, two CUDA devices) is
    refused with a RuntimeError that names the devices."""
    cuda = None
    cpu = False
    for t in tensors:
        dev = t.device
        if dev.type == "cpu":
            cpu = True
        elif dev.type == "cuda":
            if cuda is not None and dev != cuda:
                raise RuntimeError(f"hcomm {what}: tensors on two devices, {cuda} and {dev}; "
                                   "a call's tensors must share one device")
            cuda = dev
        else:
            raise RuntimeError(f"hcomm {what}: tensor on {dev} ({t.dtype}); the hcomm backend moves cpu and "
                               "cuda tensors")
    if cpu and cuda is not None:
        raise RuntimeError(f"hcomm {what}: tensors on cpu and {cuda} in one call; pass them all on one device")
    return cuda


def caller_stream(device):
    """The caller's current stream on `device` (a CUDA torch.device), or None for the CPU."""
    return None if device is None else torch.cuda.current_stream(device)


def new_future(stream):
    """A future for a work whose caller stream is `stream` (CUDA-aware when not None)."""
    return torch.futures.Future() if stream is None else torch.futures.Future(devices=[stream.device])


def completing(stream):
    """The context a completion runs in: `stream` current on its device (CUDA), else nothing."""
    return contextlib.nullcontext() if stream is None else torch.cuda.stream(stream)


def order_after(core_works, stream):
    """Make `stream` (current, inside completing()) wait on the device result of hcomm's
    works; nothing for the CPU. The works' host part is done when this runs."""
    if stream is None:
        return
    for w in core_works:
        w.wait()  # hcomm.Work on device buffers: the current stream waits on the result
