"""The core over real processes: large messages take the cross-process single-copy
path (process_vm_readv) on one host, and ranks given different host identities
(HCOMM_HOST_ID) talk over the TCP transport on loopback."""
import numpy as np
import pytest

from harness import run_ranks
from reference import check, copy, empty_like, make, reduce_ref

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


# ---------------------------------------------------------------- large, repeated buffers
# Sizes where halving-doubling's first reduced block (half the buffer) is at least
# HCOMM_STREAM_BYTES (8 MiB), so written with streaming stores out of place: the float32
# and int64 cases (the plain and the blocked kernel); bfloat16 stays below, plain stores.
LARGE = 4_718_609  # float32: 18.9 MB, odd


def _large_body(rank, size, uid):
    import hcomm

    comm = hcomm.init(rank=rank, size=size, unique_id=uid, timeout=60)
    try:
        for dtype, op, count in (("float32", "sum", LARGE), ("int64", "max", LARGE // 2 + 3),
                                 ("bfloat16", "sum", LARGE + 1)):
            inputs = [make(dtype, count, q, 21, op) for q in range(size)]
            expected = reduce_ref(inputs, op, dtype)
            out = empty_like(inputs[rank])
            comm.allreduce(inputs[rank], out, op=op, algo="halving_doubling")
            check(out, expected, dtype, size, f"{dtype} {op} out of place")
            x = copy(inputs[rank])
            comm.allreduce(x, op=op, algo="halving_doubling")
            check(x, expected, dtype, size, f"{dtype} {op} in place")
        return True
    finally:
        comm.close()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_large_out_of_place_streamed(world):
    import hcomm

    assert all(run_ranks(_large_body, world, mode="process", args=(hcomm.get_unique_id(),)))


def _anon_huge_kb(addr, nbytes):
    """AnonHugePages of the mappings that overlap [addr, addr + nbytes) (/proc/self/smaps;
    a buffer on the heap may straddle two of them)."""
    total, inside, found = 0, False, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo < addr + nbytes and addr < hi
                found |= inside
            elif inside and head == "AnonHugePages:":
                total += int(line.split()[1])
    assert found, f"no mapping holds {addr:#x}"
    return total


def _repeated_torch_body(rank, size, uid):
    """A tensor on 4 KiB pages (as torch's allocator leaves large tensors; here a fresh
    private mapping, so that nothing inherited is huge already) sent again is collapsed
    into huge pages (csrc/transport/hugepages.h). A tensor in shared memory, which the
    kernel will not collapse, comes first: it must not stop the advice for the private
    one. Data stays exact throughout."""
    import mmap

    import torch

    import hcomm

    comm = hcomm.init(rank=rank, size=size, unique_id=uid, timeout=60)
    try:
        private = mmap.mmap(-1, LARGE * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        shared, x = torch.empty(LARGE).share_memory_(), torch.frombuffer(private, dtype=torch.float32)
        before = _anon_huge_kb(x.data_ptr(), LARGE * 4)
        for step in range(8):
            buf = shared if step < 3 else x
            inputs = [torch.from_numpy(make("float32", LARGE, q, 30 + step)) for q in range(size)]
            buf.copy_(inputs[rank])
            comm.allreduce(buf, algo="halving_doubling")
            check(buf, reduce_ref(inputs, "sum", "float32"), "float32", size, f"step {step}")
        return before, _anon_huge_kb(x.data_ptr(), LARGE * 4)
    finally:
        comm.close()


def _collapse_supported():
    """Whether this kernel can collapse anonymous memory into huge pages on request."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    m = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = (ctypes.c_char * len(m)).from_buffer(m)
    start = (ctypes.addressof(buf) + (2 << 20) - 1) & ~((2 << 20) - 1)
    ctypes.memset(start, 1, 2 << 20)
    ok = libc.madvise(start, 2 << 20, 25) == 0  # MADV_COLLAPSE
    del buf
    m.close()
    return ok


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "never"


def test_repeated_send_buffer_collapsed_into_huge_pages():
    import hcomm

    if _thp_mode() == "never" or not _collapse_supported():
        pytest.skip("this kernel cannot collapse memory into huge pages (MADV_COLLAPSE, Linux 6.1+)")
    results = run_ranks(_repeated_torch_body, 2, mode="process", args=(hcomm.get_unique_id(),))
    for before, after in results:
        assert before == 0 or _thp_mode() == "always", before  # torch's memory starts on 4 KiB pages
        assert after >= 2048, f"{after} kB of huge pages after five sends of the same 19 MB tensor"


def test_huge_page_advice_can_be_turned_off():
    import hcomm

    if _thp_mode() != "madvise":
        pytest.skip(f"transparent huge pages are {_thp_mode()!r}: the control needs 'madvise'")
    envs = [{"HCOMM_SHM_HUGEPAGE_BYTES": "0"}] * 2
    results = run_ranks(_repeated_torch_body, 2, mode="process", args=(hcomm.get_unique_id(),), env=envs)
    assert [after for _, after in results] == [0, 0]
