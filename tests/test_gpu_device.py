"""Device tests (marked gpu): skipped where no CUDA device exists, which includes the
development and CI machines. Where one does, they check:
- the CUDA kernels against the CPU kernels bit for bit (every dtype and op, odd sizes,
  misaligned and aliased pointers: _C.cuda_self_test) and against numpy through torch;
- NCCL inside hcomm.init()'s Communicator with one process per GPU (up to 4): NCCL's
  collectives (algo="native") and hcomm's ring and tree, against numpy on seeded data,
  and explain() listing NCCL's measured price.
"""
import os
import sys

import numpy as np
import pytest

import hcomm
import hcomm.gpu as gpu
from hcomm import _C

from harness import run_comm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from gpu_check import detect_device  # noqa: E402

pytestmark = pytest.mark.gpu

# Asked of the driver, not of hcomm._C.cuda_report(): loading hcomm's CUDA runtime in the
# pytest process at collection made every rank forked from it later keep the real runtime,
# so tests/test_device_collectives.py's ranks (which need the fake one) failed in `make test`.
DEVICES, _WHY = detect_device()
needs_device = pytest.mark.skipif(DEVICES == 0, reason=f"no CUDA device: {_WHY}")
needs_kernels = pytest.mark.skipif(not hasattr(_C, "cuda_self_test"), reason="built without nvcc")

DTYPES = ["float16", "bfloat16", "float32", "float64", "int8", "uint8", "int32", "int64", "bool"]
OPS = ["sum", "prod", "min", "max"]


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch


@needs_device
@needs_kernels
def test_cuda_kernels_match_cpu_kernels_bitwise():
    assert _C.cuda_self_test() == []


def _random(rng, dtype, n):
    if dtype == "bool":
        return rng.integers(0, 2, n).astype(bool)
    if dtype in ("float16", "float32", "float64", "bfloat16"):
        return rng.uniform(-2, 2, n).astype(np.float32 if dtype == "bfloat16" else dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, n, endpoint=True).astype(dtype)


def _reference(torch, dtype, op, a, b):
    if dtype == "bool":
        return {"sum": a | b, "prod": a & b, "min": a & b, "max": a | b}[op]
    if dtype == "bfloat16":  # f32 arithmetic, rounded to bf16 by torch
        x, y = torch.from_numpy(a), torch.from_numpy(b)
        x, y = x.bfloat16().float(), y.bfloat16().float()
        return {"sum": x + y, "prod": x * y, "min": torch.minimum(x, y), "max": torch.maximum(x, y)}[op].bfloat16()
    wide = np.float32 if dtype == "float16" else a.dtype
    x, y = a.astype(wide), b.astype(wide)
    with np.errstate(over="ignore"):
        r = {"sum": x + y, "prod": x * y, "min": np.minimum(x, y), "max": np.maximum(x, y)}[op]
    return r.astype(dtype)


@needs_device
@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernels_against_numpy(dtype):
    torch = _torch_cuda()
    rng = np.random.default_rng(7)
    for n in (1, 33, 10007):
        a, b = _random(rng, dtype, n), _random(rng, dtype, n)
        for op in OPS:
            ta = torch.from_numpy(a).cuda()
            tb = torch.from_numpy(b).cuda()
            if dtype == "bfloat16":
                ta, tb = ta.bfloat16(), tb.bfloat16()
            out = torch.empty_like(ta)
            stream = torch.cuda.current_stream().cuda_stream
            _C._cuda_reduce(dtype, op, out.data_ptr(), ta.data_ptr(), tb.data_ptr(), n, stream)
            want = _reference(torch, dtype, op, a, b)
            got = out.cpu()
            if dtype == "bfloat16":
                assert torch.equal(got, want), (op, n)
            else:
                np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{dtype} {op} n={n}")


def _rank_data(rank, n, dtype):
    return _random(np.random.default_rng(100 + rank), dtype, n)


def _nccl_body(comm):
    import torch

    rank, size = comm.rank, comm.size
    torch.cuda.set_device(rank)
    n = 10007
    everyone = [_rank_data(r, n, "float32") for r in range(size)]
    for algo in ("native", "ring", "tree"):
        x = torch.from_numpy(everyone[rank].copy()).cuda()
        comm.allreduce(x, algo=algo)
        torch.cuda.synchronize()
        np.testing.assert_allclose(x.cpu().numpy(), np.sum(everyone, axis=0), rtol=1e-5, atol=1e-5 * size,
                                   err_msg=algo)
    assert comm._c.device_engine() == "nccl", comm._c.device_engine()
    assert _C._comm_device_native_calls(comm._c) == 1  # "native" ran on NCCL, ring and tree on hcomm's
    ints = [_rank_data(r, 1001, "int32") for r in range(size)]
    x = torch.from_numpy(ints[rank].copy()).cuda()
    comm.allreduce(x, op="max", algo="ring")
    torch.cuda.synchronize()
    np.testing.assert_array_equal(x.cpu().numpy(), np.max(ints, axis=0))
    x = torch.from_numpy(everyone[rank].copy()).cuda()
    comm.allreduce(x, op="avg", algo="native")
    torch.cuda.synchronize()
    np.testing.assert_allclose(x.cpu().numpy(), np.mean(everyone, axis=0), rtol=1e-5, atol=1e-5)
    b = torch.from_numpy(everyone[rank].copy()).cuda()
    comm.broadcast(b, root=size - 1, algo="native")
    g = torch.empty(n * size, device="cuda")
    comm.allgather(torch.from_numpy(everyone[rank]).cuda(), g, algo="native")
    torch.cuda.synchronize()
    np.testing.assert_array_equal(b.cpu().numpy(), everyone[-1])
    np.testing.assert_array_equal(g.cpu().numpy(), np.concatenate(everyone))
    table = hcomm.explain("allreduce", 64 << 20, comm=comm)  # NCCL's measured price beside hcomm's
    assert "native" in [c.algo for c in table.candidates], table
    return True


@needs_device
def test_nccl_in_the_communicator_end_to_end():
    if not gpu.nccl_library_candidates():
        try:
            gpu.nccl_version()
        except _C.Error as e:
            pytest.skip(str(e))
    _torch_cuda()
    size = min(DEVICES, 4)
    run_comm(_nccl_body, size, mode="process", start_method="spawn", timeout=300)
