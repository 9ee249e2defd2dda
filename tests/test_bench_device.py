"""hcomm-bench's GPU-facing flags and bfloat16, on this CPU-only machine.

Runs for real here: the flags (-t as nccl-tests' threads per process, --device,
-d bfloat16, --compare nccl), bfloat16 inputs / references / #wrong, a bfloat16 sweep of
hcomm beside gloo on host buffers, the device Mirror's copies and aliasing (with the cpu
as its "device": the logic does not depend on where the copy lives), and the reasons
given where no GPU exists. The timed device sweep itself runs in scripts/gpu_check.sh.
"""
import json

import numpy as np
import pytest
import torch

from hcomm.bench import cli, data
from hcomm.bench.sweep import Buffers
from hcomm.bench.factors import layout
from hcomm.bench.tensors import Mirror, host_tensor

from test_bench_cli import FAST, bench, check_rows, load, needs_hcomm


def test_gpu_flags_parse_and_reach_the_workers():
    args = cli.parse_args(["allreduce", "-t", "1", "--device", "cuda", "-d", "bf16", "--compare", "nccl"])
    assert (args.nthreads, args.device, args.datatype, args.compare) == (1, "cuda", "bfloat16", ["nccl"])
    spec = cli.make_spec(args)
    assert (spec.device, spec.dtype) == ("cuda", "bfloat16")
    child = cli.parse_args(cli.worker_args(args, "nccl", "/tmp/r.json", progress=False))
    assert cli.make_spec(child) == spec and child.impl == "nccl"
    assert cli.parse_args(["--collective", "broadcast"]).collective == "broadcast"
    assert cli.parse_args([]).device == "cpu"


def test_bf16_inputs_reference_and_wrong_count():
    bf = data.np_dtype("bfloat16")
    assert bf == data.BF16 and bf.itemsize == 2
    for op in data.OPS:
        blocks = [data.block_input(9, r, 0, 101, bf, op) for r in range(5)]
        values = np.stack([data.from_bf16(b).astype(np.float64) for b in blocks])
        assert np.array_equal(values, np.round(values))  # small integers, exact in bfloat16
        want = {"sum": values.sum(0), "prod": values.prod(0), "min": values.min(0), "max": values.max(0),
                "avg": values.sum(0) / 5}[op]
        got = data.reduce_blocks(blocks, op, bf)
        assert got.dtype == bf
        np.testing.assert_allclose(data.from_bf16(got), want, rtol=2.0 ** -8)
        assert data.count_wrong(got, got.copy(), bf, op) == 0
    exp = data.block_input(3, 0, 0, 1003, bf, "sum")
    res = exp.copy()
    res[[1, 400]] = data.to_bf16(data.from_bf16(res[[1, 400]]) + 1)
    res[7] = data.to_bf16([np.nan])[0]
    assert data.count_wrong(res, exp, bf, "sum") == 3
    third = data.to_bf16(np.array([1 / 3], np.float32))
    assert data.count_wrong(data.to_bf16(data.from_bf16(third) * (1 + 2 ** -9)), third, bf, "avg") == 0
    assert data.count_wrong(data.to_bf16(data.from_bf16(third) * 1.05), third, bf, "avg") == 1


def test_bf16_rounding_is_nearest_even():
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, 0.0], np.float32)
    assert np.array_equal(data.from_bf16(data.to_bf16(x)), [1.0, 1.0, 1.0 + 2 ** -6, -2.5, 0.0])
    t = torch.from_numpy(x).bfloat16()
    assert np.array_equal(data.to_bf16(x).view(np.int16), t.view(torch.int16).numpy())
    assert host_tensor(data.to_bf16(x)).dtype == torch.bfloat16


@pytest.mark.parametrize("collective,in_place", [("allreduce", False), ("allreduce", True), ("allgather", True),
                                                 ("reduce_scatter", True), ("alltoall", False)])
def test_mirror_copies_and_keeps_in_place_aliasing(collective, in_place):
    lay = layout(collective, 3 * 4 * 5, 4, 3)
    bufs = Buffers(lay, 1, in_place, np.dtype(np.float32))
    bufs.reset(np.arange(lay.send, dtype=np.float32))
    m = Mirror(bufs.send, bufs.recv, torch.device("cpu"))
    assert np.array_equal(m.send.numpy(), bufs.send)
    assert m.send.data_ptr() != bufs.send.ctypes.data  # a copy, not the host memory
    if in_place:  # the same aliasing as the numpy pair
        m.send.fill_(-7)
        assert torch.all(m.recv[:bufs.recv.size] == -7) if collective != "allgather" else \
            torch.all(m.recv[lay.count:2 * lay.count] == -7)
    m.recv.copy_(torch.arange(m.recv.numel(), dtype=torch.float32) + 0.5)
    m.download()
    assert np.array_equal(bufs.recv, np.arange(bufs.recv.size, dtype=np.float32) + 0.5)


@needs_hcomm
def test_bf16_sweep_hcomm_beside_gloo(tmp_path):
    out = str(tmp_path / "r.json")
    proc = bench("allreduce", "-d", "bfloat16", "--ranks", "3", "-b", "6", "-e", "60000", "-f", "100", *FAST,
                 "--compare", "gloo", "--json", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = load(out, proc)
    for name in ("hcomm", "gloo"):
        check_rows(doc["implementations"][name], "allreduce", 3, [6, 600, 60000])
        assert doc["implementations"][name]["rows"][0]["type"] == "bfloat16"


@needs_hcomm
@pytest.mark.parametrize("collective", ["reduce_scatter", "allgather", "broadcast"])
def test_bf16_other_collectives(collective, tmp_path):
    out = str(tmp_path / "r.json")
    proc = bench(collective, "-d", "bf16", "--ranks", "2", "-b", "12", "-e", "12000", "-f", "1000", *FAST,
                 "--json", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check_rows(load(out, proc)["implementations"]["hcomm"], collective, 2, [12, 12000])


@needs_hcomm
def test_without_a_gpu_device_runs_say_why(tmp_path):
    out = str(tmp_path / "r.json")
    proc = bench("allreduce", "--device", "cuda", "--ranks", "2", "-b", "8", "-e", "8", *FAST,
                 "--compare", "nccl,gloo", "--json", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the primary did not run
    impls = load(out, proc)["implementations"]
    assert impls["hcomm"]["status"] == "skipped" and "sees no CUDA device" in impls["hcomm"]["note"]
    assert impls["nccl"]["status"] == "skipped" and "no CUDA device or no NCCL" in impls["nccl"]["note"]
    assert impls["gloo"]["status"] == "skipped" and "compare with nccl" in impls["gloo"]["note"]
    proc = bench("allreduce", "--ranks", "2", "-b", "8", "-e", "8", *FAST, "--compare", "nccl", "--json", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.load(open(out))
    assert doc["device"] == "cpu" and "--device cuda" in doc["implementations"]["nccl"]["note"]
