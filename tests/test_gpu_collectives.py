"""Every collective on a real GPU, 2 and 4 ranks on ONE device over cuda_ipc (marked gpu).

The bodies are tests/test_device_collectives.py's (every dtype and op, each allreduce
algorithm, odd counts, every root, gathers and scatters, alltoall, send/recv, async
Work), checked against numpy the same way; only the arrays differ: inside each rank
process that module's array helpers (to_dev, from_dev, empty_dev) are replaced by torch
CUDA ones, so the same checks run on real device memory, real kernels and real IPC.
Ranks are spawned processes that all use device 0, as on a one-GPU machine (NCCL would
refuse that; cuda_ipc is how hcomm serves it). Skipped where no CUDA device exists;
scripts/gpu_check.sh runs it on a lent GPU.
"""
import os
import sys

import numpy as np
import pytest

from harness import run_ranks

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from gpu_check import detect_device  # noqa: E402

pytestmark = pytest.mark.gpu

# The driver is asked directly (libcuda through ctypes), not hcomm._C.cuda_report(): that
# would load hcomm's CUDA runtime in the pytest process, and every rank forked from it
# later (tests/test_device_collectives.py's, which need the fake runtime) would inherit it.
DEVICES, WHY = detect_device()
needs_device = pytest.mark.skipif(DEVICES == 0, reason=f"no CUDA device: {WHY}")
# the names this file swaps in test_device_collectives (checked, so a rename there fails loudly here)
SWAPPED = ("to_dev", "from_dev", "empty_dev")
BODIES = ("_check_reductions", "_check_moves", "_check_p2p_async")


def _torch_arrays():
    """to_dev / from_dev / empty_dev with the signatures of test_device_collectives'
    helpers, on torch CUDA tensors of device 0 (the `cuda` argument is unused)."""
    import torch

    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
              "float64": torch.float64, "int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32,
              "int64": torch.int64, "bool": torch.bool}

    def to_dev(cuda, x, dtype):
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        return t.to(device="cuda", dtype=dtypes[dtype])

    def from_dev(arr, dtype):
        host = arr.cpu()  # on the current stream, after the collective's result
        return host.float().numpy() if dtype == "bfloat16" else host.numpy()

    def empty_dev(cuda, dtype, count):
        return torch.empty(count, dtype=dtypes[dtype], device="cuda")

    return {"to_dev": to_dev, "from_dev": from_dev, "empty_dev": empty_dev}


def _rank(rank, size, uid, seed):
    import torch

    import hcomm
    import test_device_collectives as bodies

    for name in SWAPPED + BODIES:
        assert hasattr(bodies, name), f"test_device_collectives no longer has {name}; update {__file__}"
    torch.cuda.set_device(0)
    for name, fn in _torch_arrays().items():
        setattr(bodies, name, fn)  # this rank process only
    comm = hcomm.init(rank=rank, size=size, unique_id=uid, timeout=120)
    try:
        checks = sum(getattr(bodies, name)(comm, None, seed) for name in BODIES)
        torch.cuda.synchronize()
        return checks
    finally:
        comm.close()


@needs_device
@pytest.mark.parametrize("n", [2, 4], ids=["ranks2", "ranks4"])
def test_every_collective_on_one_real_gpu_over_cuda_ipc(n):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    import hcomm

    checks = run_ranks(_rank, n, mode="process", start_method="spawn", args=(hcomm.get_unique_id(), 300 + n),
                       timeout=240)
    assert len(set(checks)) == 1 and checks[0] > 500, checks
