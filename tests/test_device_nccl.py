"""NCCL inside hcomm.init()'s Communicator, on the fake GPU and fake NCCL (tests/fake_cuda).

When every rank of a communicator has a GPU of its own and NCCL loads, the first device
collective sets up an NCCL communicator through hcomm's own bootstrap (bus ids gathered,
the unique id broadcast over the host transports), and device collectives run on NCCL:
forced with algo="native" / HCOMM_ALGO=native, or by default when the call makes no
choice of its own (not under HCOMM_DETERMINISTIC). Ranks sharing a GPU keep hcomm's
algorithms over cuda_ipc and say why. Results against numpy for every NCCL collective.
"""
import numpy as np
import pytest

import fake_device
import reference as ref
from harness import run_comm


def _own_gpus(comm, forced):
    cuda = fake_device.FakeCuda()
    n, me = comm.size, comm.rank
    dev = lambda x, dtype="float32": (fake_device.DeviceArray.from_numpy(x.float().numpy(), cuda=cuda, device=me,
                                                                         dtype=fake_device.BFLOAT16)
                                      if dtype == "bfloat16" else
                                      fake_device.DeviceArray.from_numpy(x, cuda=cuda, device=me))
    algo = "native" if forced else None
    for dtype in ("float32", "bfloat16", "int32", "float64"):
        for op in ("sum", "max", "avg", "premul_sum"):
            if dtype == "int32" and op in ("avg", "premul_sum"):
                continue
            factor = ref.premul(dtype) if op == "premul_sum" else None
            inputs = [ref.make(dtype, 1003, r, 11, op) for r in range(n)]
            want = ref.reduce_ref(inputs, op, dtype)
            x = dev(inputs[me], dtype)
            comm.allreduce(x, op=op, algo=algo, factor=factor)
            got = x.to_numpy()
            ref.check(fake_device.bf16_values(got) if dtype == "bfloat16" else got, want, dtype, n,
                      f"allreduce {dtype} {op}")
    assert comm._c.device_engine() == "nccl", comm._c.device_engine()
    inputs = [ref.make("float32", 999, r, 12) for r in range(n)]
    out = fake_device.DeviceArray(cuda, (999,), np.float32, device=me)
    comm.reduce(dev(inputs[me]), out=out, root=1, algo=algo)
    if me == 1:
        ref.check(out.to_numpy(), ref.reduce_ref(inputs, "sum", "float32"), "float32", n, "reduce")
    for root in range(n):
        x = dev(inputs[me] if me == root else np.zeros(999, np.float32))
        comm.broadcast(x, root=root, algo=algo)
        np.testing.assert_array_equal(x.to_numpy(), inputs[root])
    out = fake_device.DeviceArray(cuda, (999 * n,), np.float32, device=me)
    comm.allgather(dev(inputs[me]), out, algo=algo)
    np.testing.assert_array_equal(out.to_numpy(), np.concatenate(inputs))
    rs = fake_device.DeviceArray(cuda, (333,), np.float32, device=me)
    comm.reduce_scatter(dev(inputs[me]), rs)
    ref.check(rs.to_numpy(), ref.reduce_ref(inputs, "sum", "float32")[me * 333:(me + 1) * 333], "float32", n,
              "reduce_scatter")
    w = comm.allreduce(dev(inputs[me]), async_op=True, algo=algo)
    w.wait()
    w.synchronize()
    return comm._c.device_engine()


@pytest.mark.parametrize("forced", [False, True])
def test_nccl_runs_device_collectives_when_each_rank_has_a_gpu(forced):
    env = fake_device.child_env(devices=3)
    engines = run_comm(_own_gpus, 3, mode="process", start_method="spawn", args=(forced,), env=env, timeout=120)
    assert engines == ["nccl"] * 3


def _world_of_one(comm):
    cuda = fake_device.FakeCuda()
    x = fake_device.DeviceArray.from_numpy(np.arange(7, dtype=np.float32), cuda=cuda)
    comm.allreduce(x, algo="native")
    np.testing.assert_array_equal(x.to_numpy(), np.arange(7, dtype=np.float32))
    return comm._c.device_engine()


def test_nccl_at_world_size_one_through_the_communicator():
    assert run_comm(_world_of_one, 1, mode="process", start_method="spawn", env=fake_device.child_env(devices=1)) == ["nccl"]


def _shared_gpu(comm):
    import hcomm

    cuda = fake_device.FakeCuda()
    x = fake_device.DeviceArray.from_numpy(np.ones(5, np.float32), cuda=cuda)
    comm.allreduce(x)  # hcomm's algorithms over cuda_ipc
    np.testing.assert_array_equal(x.to_numpy(), np.full(5, comm.size, np.float32))
    engine = comm._c.device_engine()
    with pytest.raises(hcomm.Error, match="'native' on device buffers needs NCCL: two ranks share GPU"):
        comm.allreduce(x, algo="native")
    return engine


def test_ranks_sharing_a_gpu_keep_hcomm_and_native_is_refused_with_the_reason():
    engines = run_comm(_shared_gpu, 2, mode="process", start_method="spawn", env=fake_device.child_env(devices=1), timeout=120)
    assert all(e.startswith("hcomm: two ranks share GPU") for e in engines), engines
