"""The core over real processes: large messages take the cross-process single-copy
path (process_vm_readv) on one host, and ranks given different host identities
(HCOMM_HOST_ID) talk over the TCP transport on loopback."""
import numpy as np
import pytest

from harness import run_ranks
from reference import check, copy, make, reduce_ref

BIG = 300_007  # float32: 1.2 MB, far above the rendezvous threshold


def _body(rank, size, uid, expect_transport):
    import hcomm

    comm = hcomm.init(rank=rank, size=size, unique_id=uid, timeout=60)
    try:
        assert set(comm.transports()) - {"shm"} == ({"tcp"} if expect_transport == "tcp" else set()), \
            comm.transports()
        for algo in ("ring", "tree", "halving_doubling"):
            for dtype, count in (("float32", BIG), ("int32", 4097), ("bfloat16", 70_001)):
                inputs = [make(dtype, count, q, 5) for q in range(size)]
                x = copy(inputs[rank])
                comm.allreduce(x, algo=algo)
                check(x, reduce_ref(inputs, "sum", dtype), dtype, size, f"{algo} {dtype}")
        inputs = [make("float64", BIG // 2, q, 9) for q in range(size)]
        out = np.zeros(BIG // 2 * size)
        comm.allgather(inputs[rank], out)
        assert np.array_equal(out, np.concatenate(inputs))
        big = [make("float32", BIG // 3 * size, q, 11) for q in range(size)]
        part = np.zeros(BIG // 3, np.float32)
        comm.reduce_scatter(big[rank], part)
        check(part, reduce_ref(big, "sum", "float32")[rank * (BIG // 3):(rank + 1) * (BIG // 3)], "float32", size)
        for root in range(size):
            x = inputs[rank].copy()
            comm.broadcast(x, root=root)
            assert np.array_equal(x, inputs[root])
        comm.barrier()
        return True
    finally:
        comm.close()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shared_memory_processes(world):
    import hcomm

    assert all(run_ranks(_body, world, mode="process", args=(hcomm.get_unique_id(), "shm")))


@pytest.mark.parametrize("world", [2, 3])
def test_tcp_between_simulated_hosts(world):
    import hcomm

    envs = [{"HCOMM_HOST_ID": f"host{r}"} for r in range(world)]
    assert all(run_ranks(_body, world, mode="process", args=(hcomm.get_unique_id(), "tcp"), env=envs))


def test_mixed_hosts_shm_inside_tcp_between():
    import hcomm

    envs = [{"HCOMM_HOST_ID": f"host{r // 2}"} for r in range(4)]  # two hosts of two ranks
    assert all(run_ranks(_body, 4, mode="process", args=(hcomm.get_unique_id(), "tcp"), env=envs))


def _no_cma_body(rank, size, uid):
    import hcomm

    comm = hcomm.init(rank=rank, size=size, unique_id=uid)
    x = np.full(BIG, rank + 1.0, np.float32)
    comm.allreduce(x, algo="ring")
    comm.close()
    return float(x[0]), float(x[-1])


def test_shm_without_cross_memory_attach():
    import hcomm

    envs = [{"HCOMM_SHM_CMA": "0"}] * 2  # every byte streams through the shared slots
    results = run_ranks(_no_cma_body, 2, mode="process", args=(hcomm.get_unique_id(),), env=envs)
    assert results == [(3.0, 3.0), (3.0, 3.0)]
