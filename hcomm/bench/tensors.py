"""torch views of the sweep's numpy buffers: on the host (bfloat16 bits as torch.bfloat16)
and on a GPU (--device cuda: device tensors that mirror the numpy pair).

The sweep keeps its buffers, inputs and references in numpy. A runner that hands its
library torch tensors gets them here: `host_tensor` shares the numpy memory; a
`Mirror` copies the pair to a device once per bind, keeping the aliasing nccl-tests'
in-place layouts rely on (allgather's input is a block of its output, reduce_scatter's
output a block of its input), and copies the results back for the check.
"""
import os

import numpy as np

from .data import BF16


def host_tensor(a):
    """A torch tensor sharing `a`'s memory; BF16 bits become torch.bfloat16."""
    import torch

    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def local_device_index(rank):
    """The GPU of this rank: its local rank (launcher's, else its rank) modulo the GPUs."""
    import torch

    local = os.environ.get("LOCAL_RANK") or os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK") or \
        os.environ.get("SLURM_LOCALID") or rank
    return int(local) % torch.cuda.device_count()


def _inside(inner, outer):
    """Element offset of `inner` within `outer` (same dtype), or None when it is not inside."""
    lo, hi = outer.ctypes.data, outer.ctypes.data + outer.nbytes
    start = inner.ctypes.data
    if lo <= start and start + inner.nbytes <= hi:
        return (start - lo) // outer.itemsize
    return None


class Mirror:
    """Device tensors `send` and `recv` mirroring a numpy (send, recv) pair on `device`."""

    def __init__(self, send, recv, device):
        self._pairs = []  # (numpy base, device tensor): what download() copies back
        if send is recv:
            self.send = self.recv = self._upload(recv, device)
        elif (off := _inside(send, recv)) is not None:
            self.recv = self._upload(recv, device)
            self.send = self.recv[off:off + send.size]
        elif (off := _inside(recv, send)) is not None:
            self.send = self._upload(send, device)
            self.recv = self.send[off:off + recv.size]
        else:
            self.send, self.recv = self._upload(send, device), self._upload(recv, device)

    def _upload(self, a, device):
        t = host_tensor(a).to(device, copy=True)  # a copy, also where device is the cpu (tests)
        self._pairs.append((a, t))
        return t

    def download(self):
        """Copy every device buffer back into its numpy array (waits for the device)."""
        import torch

        for a, t in self._pairs:
            host = t.cpu()
            if a.dtype == BF16:
                host = host.view(torch.int16)
            a[...] = host.numpy().view(a.dtype)
