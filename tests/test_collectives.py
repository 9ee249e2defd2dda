"""Every collective against a numpy reference: world sizes 1-8, every dtype and op,
counts 0, 1, odd and above a pipeline segment, every root, in place and out of place.
Ranks run as threads here (fast); test_processes.py repeats the core over processes,
where large messages take the cross-process single-copy path."""
import numpy as np
import pytest
import torch

from harness import run_comm
from reference import (DTYPES, check, copy, empty_like, make, ops_for, premul, reduce_ref, zeros)

WORLDS = [1, 2, 3, 4, 5, 6, 7, 8]
ALGOS = ["ring", "tree", "halving_doubling"]
BIG = 20011  # > the small segments set below, and odd


@pytest.fixture(autouse=True)
def small_segments(monkeypatch):
    # Small pipeline segments so that modest counts cross many segment boundaries.
    monkeypatch.setenv("HCOMM_RING_SEGMENT_BYTES", "4096")
    monkeypatch.setenv("HCOMM_TREE_SEGMENT_BYTES", "4096")


def _allreduce_cases():
    for algo in ALGOS:
        for dtype in DTYPES:
            for op in ops_for(dtype):
                yield algo, dtype, op, 1001
        for count in (0, 1, 7, BIG):
            for dtype, op in (("float32", "sum"), ("int64", "max"), ("bfloat16", "sum"), ("int8", "prod")):
                yield algo, dtype, op, count


def _allreduce_body(comm, seed):
    n, r = comm.size, comm.rank
    for i, (algo, dtype, op, count) in enumerate(_allreduce_cases()):
        inputs = [make(dtype, count, q, seed + i, op) for q in range(n)]
        expected = reduce_ref(inputs, op, dtype)
        x = copy(inputs[r])
        factor = premul(dtype) if op == "premul_sum" else None
        what = f"allreduce {algo} {dtype} {op} count={count} rank {r}/{n}"
        if i % 2:
            comm.allreduce(x, op=op, algo=algo, factor=factor)
            check(x, expected, dtype, n, what + " in place")
        else:
            out = empty_like(x)
            comm.allreduce(x, out, op=op, algo=algo, factor=factor)
            check(out, expected, dtype, n, what)
            check(x, reduce_ref([inputs[r]], "max", dtype) if dtype != "bfloat16" else inputs[r].double().numpy(),
                  dtype, 1, what + ": input modified")


@pytest.mark.parametrize("world", WORLDS)
def test_allreduce(world):
    run_comm(_allreduce_body, world, args=(world * 1000,))


def _rooted_body(comm, seed):
    n, r = comm.size, comm.rank
    for i, (dtype, count) in enumerate([("float32", 1001), ("int32", BIG), ("bfloat16", 7), ("uint8", 0),
                                        ("float64", 1)]):
        for root in range(n):
            s = seed + 100 * i + root
            inputs = [make(dtype, count, q, s) for q in range(n)]
            # reduce (sum and max)
            for op in ("sum", "max"):
                x = copy(inputs[r])
                out = zeros(dtype, count)
                comm.reduce(x, out, root=root, op=op)
                if r == root:
                    check(out, reduce_ref(inputs, op, dtype), dtype, n, f"reduce {dtype} {op} root {root}")
            # broadcast in place and out of place
            x = copy(inputs[r])
            comm.broadcast(x, root=root)
            check(x, reduce_ref([inputs[root]], "max", dtype) if dtype != "bfloat16" else inputs[root].double().numpy(),
                  dtype, 1, f"broadcast {dtype} root {root}")
            out = zeros(dtype, count)
            comm.broadcast(inputs[r], root=root, out=out)
            check(out, reduce_ref([inputs[root]], "max", dtype) if dtype != "bfloat16" else inputs[root].double().numpy(),
                  dtype, 1, f"broadcast out-of-place {dtype} root {root}")
            # gather / scatter
            if dtype != "bfloat16":
                g = np.zeros(count * n, dtype=dtype) if r == root else None
                comm.gather(inputs[r], g, root=root)
                if r == root:
                    assert np.array_equal(g, np.concatenate(inputs)), f"gather {dtype} root {root}"
                full = np.concatenate(inputs)
                part = np.zeros(count, dtype=dtype)
                comm.scatter(full if r == root else None, part, root=root)
                assert np.array_equal(part, inputs[root][:0] if False else full[r * count:(r + 1) * count]), \
                    f"scatter {dtype} root {root}"


def _many_chunks_body(comm, seed):
    n, r = comm.size, comm.rank
    for k in range(60):
        rng = np.random.default_rng([seed, k])
        xs = [rng.integers(-1000, 1000, size=20011) for _ in range(n)]
        x = xs[r].copy()
        comm.allreduce(x, op="max", algo="ring")
        assert np.array_equal(x, np.maximum.reduce(xs)), f"ring max call {k} rank {r}/{n}"
        ys = [rng.standard_normal(4099).astype(np.float32) for _ in range(n)]
        y = ys[r].copy()
        comm.allreduce(y, algo="ring")
        np.testing.assert_allclose(y, np.sum(np.stack(ys).astype(np.float64), axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("world", [3, 4])
def test_ring_with_many_chunks_in_flight_never_stalls(world, monkeypatch):
    # Hundreds of chunks per call, four on the road at once: a chunk whose new step was
    # complete the moment it was posted (an eager send, a message already waiting) used
    # to sit out the wait for another chunk's message, and with a neighbour doing the
    # same the ring stopped until the timeout (about one call in twenty here; before the
    # fix this test hung on most runs). Correctness against numpy on every call.
    monkeypatch.setenv("HCOMM_RING_SEGMENT_BYTES", "64")
    monkeypatch.setenv("HCOMM_TIMEOUT", "30")
    run_comm(_many_chunks_body, world, args=(world,), timeout=120)


@pytest.mark.parametrize("world", WORLDS)
def test_rooted(world):
    run_comm(_rooted_body, world, args=(world * 7,))


def _gather_scatter_body(comm, seed):
    n, r = comm.size, comm.rank
    for i, (dtype, count) in enumerate([("float32", 1001), ("int64", BIG // 4), ("float16", 1), ("int8", 0)]):
        inputs = [make(dtype, count, q, seed + i) for q in range(n)]
        # allgather, out of place and in place
        out = np.zeros(count * n, dtype=dtype)
        comm.allgather(inputs[r], out)
        assert np.array_equal(out, np.concatenate(inputs)), f"allgather {dtype} {count}"
        out = np.zeros(count * n, dtype=dtype)
        out[r * count:(r + 1) * count] = inputs[r]
        comm.allgather(out[r * count:(r + 1) * count], out)
        assert np.array_equal(out, np.concatenate(inputs)), f"allgather in place {dtype} {count}"
        # reduce_scatter (sum and min), out of place and in place
        big = [make(dtype, count * n, q, seed + 50 + i) for q in range(n)]
        for op in ("sum", "min", "avg"):
            expected = reduce_ref(big, op, dtype)[r * count:(r + 1) * count]
            out = np.zeros(count, dtype=dtype)
            comm.reduce_scatter(copy(big[r]), out, op=op)
            check(out, expected, dtype, n, f"reduce_scatter {dtype} {op} {count}")
            x = copy(big[r])
            comm.reduce_scatter(x, x[r * count:(r + 1) * count], op=op)
            check(x[r * count:(r + 1) * count], expected, dtype, n, f"reduce_scatter in place {dtype} {op}")
        # v variants: uneven counts including zero
        counts = [(count + 3 * q) % 11 for q in range(n)]
        vin = [make(dtype, counts[q], q, seed + 70 + i) for q in range(n)]
        out = np.zeros(sum(counts), dtype=dtype)
        comm.allgatherv(vin[r], out, counts)
        assert np.array_equal(out, np.concatenate(vin)), f"allgatherv {dtype} {counts}"
        vbig = [make(dtype, sum(counts), q, seed + 90 + i) for q in range(n)]
        out = np.zeros(counts[r], dtype=dtype)
        comm.reduce_scatterv(vbig[r], out, counts, op="sum")
        start = sum(counts[:r])
        check(out, reduce_ref(vbig, "sum", dtype)[start:start + counts[r]], dtype, n, f"reduce_scatterv {counts}")


@pytest.mark.parametrize("world", WORLDS)
def test_gather_scatter_family(world):
    run_comm(_gather_scatter_body, world, args=(world * 13,))


def _alltoall_body(comm, seed):
    n, r = comm.size, comm.rank
    for count in (0, 1, 5, 4099):
        blocks = [[make("int32", count, 1000 * q + d, seed) for d in range(n)] for q in range(n)]
        x = np.concatenate(blocks[r]) if count else np.zeros(0, np.int32)
        out = np.zeros(count * n, dtype=np.int32)
        comm.alltoall(x, out)
        expected = np.concatenate([blocks[q][r] for q in range(n)]) if count else out
        assert np.array_equal(out, expected), f"alltoall count {count}"
        comm.alltoall(x, x)  # in place
        assert np.array_equal(x, expected), f"alltoall in place count {count}"
    # alltoallv: rank q sends (q + d) % 4 elements to rank d
    send_counts = [(r + d) % 4 for d in range(n)]
    recv_counts = [(q + r) % 4 for q in range(n)]
    chunks = [np.full((r + d) % 4, 100 * r + d, np.int64) for d in range(n)]
    out = np.zeros(sum(recv_counts), np.int64)
    comm.alltoallv(np.concatenate(chunks), out, send_counts, recv_counts)
    expected = np.concatenate([np.full((q + r) % 4, 100 * q + r, np.int64) for q in range(n)])
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("world", WORLDS)
def test_alltoall(world):
    run_comm(_alltoall_body, world, args=(world,))


def _barrier_body(comm):
    for _ in range(20):
        comm.barrier()
    return True


@pytest.mark.parametrize("world", [1, 2, 5, 8])
def test_barrier(world):
    assert all(run_comm(_barrier_body, world))


def test_torch_tensors_all_dtypes():
    def body(comm):
        n = comm.size
        for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.uint8,
                   torch.int32, torch.int64):
            x = torch.arange(11, dtype=torch.int64).to(dt) + comm.rank
            comm.allreduce(x)
            expected = (torch.arange(11, dtype=torch.float64) * n + sum(range(n))).to(dt)
            assert torch.equal(x, expected), (dt, x, expected)
        s = torch.tensor(3.0) * (comm.rank + 1)  # 0-dim tensors reach backends too
        comm.allreduce(s)
        assert s.item() == 3.0 * n * (n + 1) / 2
    run_comm(body, 3)


def _fast_path_body(comm):
    """Blocking numpy allreduce with a plain op runs through the core's array fast path;
    everything it does not take falls back to the Python path and its errors."""
    import hcomm

    done = 0
    for dtype in ("float16", "float32", "float64", "int8", "uint8", "int32", "int64", "bool"):
        for op in ops_for(dtype):
            if op == "premul_sum":
                continue
            for count in (0, 1, 1001):
                inputs = [make(dtype, count, q, 17, op) for q in range(comm.size)]
                want = reduce_ref(inputs, op, dtype)
                x = copy(inputs[comm.rank])
                comm.allreduce(x, op=op)
                check(x, want, dtype, comm.size, f"in place {dtype} {op}")
                out = np.empty_like(x)
                comm.allreduce(copy(inputs[comm.rank]), out=out, op=op)
                check(out, want, dtype, comm.size, f"out of place {dtype} {op}")
                done += 1
    bad = [
        (lambda: comm.allreduce(np.ones(4, np.float32)[::2]), "not C-contiguous"),
        (lambda: comm.allreduce(np.ones(4, ">f4")), "not supported"),
        (lambda: comm.allreduce(np.ones(4), out=np.ones(4, np.float32)), "differs"),
        (lambda: comm.allreduce(np.ones(4), out=np.ones(5)), "elements"),
        (lambda: comm.allreduce(np.ones(4, bool), op="avg"), "bool"),
        (lambda: comm.allreduce(np.ones(4), op="xor"), "unknown reduce op"),
    ]
    ro = np.ones(4)
    ro.flags.writeable = False
    bad.append((lambda: comm.allreduce(ro), "read-only"))
    for call, words in bad:
        with pytest.raises(hcomm.InvalidArgument, match=words):
            call()
    return done


@pytest.mark.parametrize("world", [1, 3])
def test_numpy_fast_path_matches_reference(world):
    counts = run_comm(_fast_path_body, world)
    assert len(set(counts)) == 1 and counts[0] > 0


# ------------------------------------------------ every collective's other algorithms
# reduce_scatter "direct", reduce "reduce_scatter_gather" and allgather "bruck", forced
# through HCOMM_ALGO (read at every call), against numpy: every dtype and op, uneven and
# zero counts, every root.

def _more_algorithms_body(comm, seed):
    n, r = comm.size, comm.rank
    for i, dtype in enumerate(DTYPES):
        for op in ops_for(dtype):
            factor = premul(dtype) if op == "premul_sum" else None
            for count in (1, 7, 1001):
                s = seed + 1000 * i + 10 * count + len(op)
                counts = [(count + 3 * q) % 11 + (count if q == n - 1 else 0) for q in range(n)]
                vbig = [make(dtype, sum(counts), q, s, op) for q in range(n)]
                out = zeros(dtype, counts[r])
                comm.reduce_scatterv(copy(vbig[r]), out, counts, op=op, factor=factor)
                lo = sum(counts[:r])
                want = reduce_ref(vbig, op, dtype)
                check(out, want[lo:lo + counts[r]], dtype, n, f"reduce_scatterv direct {dtype} {op} {counts}")
                if n > 1:
                    assert comm._c.last_algorithm() == "direct"
                for root in range(n):
                    inputs = [make(dtype, count, q, s + root, op) for q in range(n)]
                    out = zeros(dtype, count)
                    comm.reduce(copy(inputs[r]), out, root=root, op=op, factor=factor)
                    if r == root:
                        check(out, reduce_ref(inputs, op, dtype), dtype, n, f"reduce rsg {dtype} {op} root {root}")
        if dtype == "bfloat16":
            continue  # allgather moves bytes: the numpy dtypes cover it
        counts = [(7 + 5 * q) % 13 for q in range(n)]  # uneven, one may be zero
        parts = [make(dtype, counts[q], q, seed + i) for q in range(n)]
        out = np.zeros(sum(counts), dtype=dtype)
        comm.allgatherv(parts[r], out, counts)
        assert np.array_equal(out, np.concatenate(parts)), f"allgatherv bruck {dtype} {counts}"


@pytest.mark.parametrize("world", [1, 2, 3, 5, 6, 8])
def test_reduce_scatter_direct_reduce_rsg_allgather_bruck(world, monkeypatch):
    monkeypatch.setenv("HCOMM_ALGO", "reduce_scatter:direct;reduce:reduce_scatter_gather;allgather:bruck")
    run_comm(_more_algorithms_body, world, args=(world * 13,))


def _unknown_algo_body(comm):
    import hcomm

    x = np.ones(5, np.float32)
    try:
        comm.allreduce(x)
    except hcomm.Error as e:
        return str(e)
    return ""


@pytest.mark.parametrize("spec, words", [
    ("rign", "HCOMM_ALGO: unknown algorithm 'rign' (ring, tree, halving_doubling"),
    ("allreduce:binomial", "unknown allreduce algorithm 'binomial' (ring, tree, halving_doubling, hierarchical, native"),
    ("allreduc:ring", "unknown collective 'allreduc'"),
])
def test_unknown_hcomm_algo_is_refused_with_the_list(spec, words, monkeypatch):
    monkeypatch.setenv("HCOMM_ALGO", spec)
    assert all(words in m for m in run_comm(_unknown_algo_body, 2)), words


def _binomial_gather_scatter_body(comm, seed):
    n, r = comm.size, comm.rank
    for i, (dtype, count) in enumerate([("float32", 1001), ("int8", 1), ("float64", 4099), ("uint8", 0)]):
        inputs = [make(dtype, count, q, seed + i) for q in range(n)]
        for root in range(n):
            g = np.zeros(count * n, dtype=dtype) if r == root else None
            comm.gather(inputs[r], g, root=root)
            if r == root:
                assert np.array_equal(g, np.concatenate(inputs)), f"gather {dtype} root {root}"
            full = np.concatenate(inputs)
            part = np.zeros(count, dtype=dtype)
            comm.scatter(full if r == root else None, part, root=root)
            assert np.array_equal(part, full[r * count:(r + 1) * count]), f"scatter {dtype} root {root}"
            if count and n > 1:
                assert comm._c.last_algorithm() == "binomial"


@pytest.mark.parametrize("world", [1, 2, 3, 5, 7, 8])
def test_binomial_gather_and_scatter(world, monkeypatch):
    monkeypatch.setenv("HCOMM_ALGO", "gather:binomial;scatter:binomial")
    run_comm(_binomial_gather_scatter_body, world, args=(world,))
