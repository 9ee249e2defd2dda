"""Bad input is refused before any byte moves, with a message naming what is wrong;
faults only visible across ranks end in hcomm.Error within the timeout, never a hang."""
import re
import time

import numpy as np
import pytest
import torch

import hcomm
from harness import run_comm, run_ranks


@pytest.fixture(scope="module")
def solo():
    comm = hcomm.init(rank=0, size=1)
    yield comm
    comm.close()


@pytest.mark.parametrize("call, match", [
    (lambda c: c.allreduce(np.ones((4, 4))[:, 1]), "not C-contiguous"),
    (lambda c: c.allreduce(np.ones(4), out=np.ones(4)[::2]), "not C-contiguous"),
    (lambda c: c.allreduce(np.ones(4), out=np.frombuffer(b"x" * 32, dtype=np.float64)), "read-only"),
    (lambda c: c.allreduce(np.ones(4, dtype=np.complex64)), "not supported"),
    (lambda c: c.allreduce(np.ones(4), out=np.ones(5)), "4 elements, output 5"),
    (lambda c: c.allreduce(np.ones(4), out=np.ones(4, np.float32)), "dtype"),
    (lambda c: c.allreduce(np.ones(4), op="xor"), "unknown reduce op"),
    (lambda c: c.allreduce(np.ones(4, bool), op="avg"), "not defined for bool"),
    (lambda c: c.allreduce(np.ones(4), op="premul_sum"), "factor"),
    (lambda c: c.allreduce(np.ones(4), algo="magic"), "unknown allreduce algorithm"),
    (lambda c: c.allreduce([1, 2, 3]), "expected a numpy array"),
    (lambda c: c.allreduce(torch.ones(4, 4).t()), "not contiguous"),
    (lambda c: c.allreduce(torch.ones(4).to_sparse()), "sparse_coo tensors are not supported"),
    (lambda c: c.broadcast(np.ones(4), root=1), "root 1 is out of range"),
    (lambda c: c.reduce(np.ones(4), root=-1), "root -1 is out of range"),
    (lambda c: c.send(np.ones(4), 3), "peer 3 is out of range"),
    (lambda c: c.send(np.ones(4), 0, tag=-1), "tag must be"),
    (lambda c: c.allgather(np.ones(4), np.ones(5)), "expected size"),
    (lambda c: c.reduce_scatter(np.ones(4), np.ones(3)), "expected size"),
    (lambda c: c.allgatherv(np.ones(4), np.ones(4), [3]), "counts"),
    (lambda c: c.alltoallv(np.ones(4), np.ones(4), [5], [4]), "reach element 5"),
])
def test_bad_input_is_refused(solo, call, match):
    with pytest.raises(hcomm.InvalidArgument, match=match):
        call(solo)
    solo.barrier()  # still usable: nothing moved


def test_errors_are_runtime_and_value_errors():
    assert issubclass(hcomm.Error, RuntimeError)
    assert issubclass(hcomm.InvalidArgument, hcomm.Error) and issubclass(hcomm.InvalidArgument, ValueError)


def test_closed_communicator_raises():
    comm = hcomm.init(rank=0, size=1)
    comm.close()
    with pytest.raises(hcomm.Error, match="closed"):
        comm.allreduce(np.ones(2))


def test_bad_init_arguments():
    with pytest.raises(hcomm.InvalidArgument, match="out of range"):
        hcomm.init(rank=3, size=2, unique_id="x")
    with pytest.raises(hcomm.Error, match="malformed"):
        hcomm.init(rank=0, size=2, unique_id="not-an-id", timeout=2)


@pytest.mark.parametrize("root", [np.int64(0), np.int32(0), np.uint8(0)])
def test_numpy_integer_roots_are_accepted(solo, root):
    x = np.arange(4.0)
    solo.broadcast(x, root=root)
    solo.reduce(x, root=root)
    out = np.zeros(4)
    solo.gather(x, out, root=root)
    solo.scatter(x, out, root=root)
    np.testing.assert_array_equal(out, np.arange(4.0))


@pytest.mark.parametrize("root, match", [
    (np.int64(1), "root 1 is out of range for a communicator of 1 ranks"),
    (np.int64(-1), "root -1 is out of range"),
    (True, "root must be an integer rank, got True"),
    (np.bool_(False), "root: expected an integer, got "),
    (0.0, "root: expected an integer, got 0.0"),
    ("0", "root: expected an integer, got '0'"),
])
def test_bad_roots_are_refused(solo, root, match):
    with pytest.raises(hcomm.InvalidArgument, match=re.escape(match)):
        solo.broadcast(np.ones(4), root=root)
    with pytest.raises(hcomm.InvalidArgument, match=re.escape(match.replace("root", "peer"))):
        solo.send(np.ones(4), root)


@pytest.mark.parametrize("timeout", [0, -1, 0.0, float("nan"), float("inf"), -float("inf"), True, "5", [3], b"1"])
def test_bad_init_timeout_is_refused_first(timeout):
    # named, and refused before the other arguments are looked at or any socket is opened
    why = re.escape(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    with pytest.raises(hcomm.InvalidArgument, match=why):
        hcomm.init(rank=0, size=2, unique_id="not-an-id", timeout=timeout)
    with pytest.raises(hcomm.InvalidArgument, match=why):
        hcomm.init(rank=0, timeout=timeout)


def test_bad_hcomm_timeout_is_named(monkeypatch):
    monkeypatch.setenv("HCOMM_TIMEOUT", "0")
    with pytest.raises(hcomm.InvalidArgument, match="HCOMM_TIMEOUT must be a positive, finite number of seconds, got 0.0"):
        hcomm.init(rank=0, size=1)


@pytest.mark.parametrize("timeout", [7, 2.5, np.float32(7.0), np.int64(3)])
def test_init_timeout_accepts_numbers(timeout):
    with hcomm.init(rank=0, size=1, timeout=timeout) as comm:
        assert comm.timeout == pytest.approx(float(timeout))


def _mismatch_body(comm):
    # Rank 0 sends 1000 elements, rank 1 expects 999: a mismatch only visible across ranks.
    x = np.ones(1000 if comm.rank == 0 else 999, np.float32)
    t = time.monotonic()
    with pytest.raises(hcomm.Error) as e:
        comm.allreduce(x, algo="ring")
    return time.monotonic() - t, str(e.value)


def test_count_mismatch_errors_within_timeout(monkeypatch):
    monkeypatch.setenv("HCOMM_TIMEOUT", "3")
    results = run_comm(_mismatch_body, 2, timeout=30)
    for elapsed, msg in results:
        assert elapsed < 3 + 2, msg
        assert "allreduce #" in msg and "rank" in msg, msg
    assert any("mismatch" in m and "count 1000" in m and "count 999" in m for _, m in results), results


def _missing_rank_body(rank, size, uid):
    comm = hcomm.init(rank=rank, size=size, unique_id=uid, timeout=3)
    if rank == 1:
        comm.close()  # never joins the collective
        return "skipped"
    t = time.monotonic()
    try:
        comm.allreduce(np.ones(10))
    except hcomm.Error as e:
        return time.monotonic() - t, str(e)
    return "no error"


def test_rank_that_never_arrives_names_it():
    out = run_ranks(_missing_rank_body, 2, mode="process", args=(hcomm.get_unique_id(),), timeout=30)
    elapsed, msg = out[0]
    assert elapsed < 3 + 2
    # rank 1's process may be gone by then: either way the error names it
    assert ("timed out" in msg or "has exited" in msg) and "rank 1" in msg, msg


def test_bootstrap_times_out_when_ranks_are_missing():
    uid = hcomm.get_unique_id(timeout=2)
    t = time.monotonic()
    with pytest.raises(hcomm.Error, match="never joined|in time|timed out"):
        hcomm.init(rank=0, size=2, unique_id=uid, timeout=2)
    assert time.monotonic() - t < 6


def _desync_body(comm):
    x = np.ones(1024, np.float32)
    comm.barrier()
    try:  # the broadcast root only sends, so it may finish; the receiving side must raise
        if comm.rank == 0:
            comm.broadcast(x, root=0)
        else:
            comm.allreduce(x, algo="ring")
    except hcomm.Error as e:
        return str(e)
    return ""


def test_desync_names_both_collectives(monkeypatch):
    monkeypatch.setenv("HCOMM_TIMEOUT", "3")
    msgs = run_comm(_desync_body, 2, timeout=30)
    assert msgs[1], "the rank that received a broadcast message inside its allreduce did not raise"
    joined = "\n".join(msgs)
    assert "collective mismatch" in joined, joined
    assert "broadcast(float32, count 1024, root 0)" in joined and "allreduce(float32, sum, count 1024)" in joined, joined
    assert re.search(r"allreduce #\d+ \(", joined), joined  # names the call's sequence number


def _desync_kind_body(comm, kind):
    comm.barrier()
    mine = comm.rank == 0
    try:
        if kind == "dtype":
            comm.allreduce(np.ones(256, np.float32 if mine else np.float64), algo="ring")
        elif kind == "root":
            # With 2 ranks each one is a root and only sends: both calls finish, and the
            # next call finds the other's message that its broadcast never received.
            comm.broadcast(np.ones(256, np.float32), root=0 if mine else 1)
            comm.barrier()
        elif kind == "op":
            comm.allreduce(np.ones(256, np.float32), op="sum" if mine else "max", algo="ring")
        else:  # count
            comm.allgather(np.ones(256 if mine else 255, np.float32), np.ones((256 if mine else 255) * 2, np.float32))
    except hcomm.Error as e:
        return str(e)
    return ""


@pytest.mark.parametrize("kind, words", [
    ("dtype", ["allreduce(float32, sum, count 256)", "allreduce(float64, sum, count 256)"]),
    ("root", ["broadcast(float32, count 256, root 0)", "broadcast(float32, count 256, root 1)"]),
    ("op", ["allreduce(float32, sum, count 256)", "allreduce(float32, max, count 256)"]),
    ("count", ["allgather(float32, count 512)", "allgather(float32, count 510)"]),
])
def test_desync_in_dtype_root_op_and_count_names_both_signatures(monkeypatch, kind, words):
    """Ranks that disagree on one field of the same collective fail at the first exchange
    (well before the timeout) with both signatures."""
    monkeypatch.setenv("HCOMM_TIMEOUT", "20")
    t = time.monotonic()
    msgs = run_comm(_desync_kind_body, 2, args=(kind,), timeout=60)
    assert time.monotonic() - t < 15, msgs
    joined = "\n".join(msgs)
    assert "collective mismatch" in joined, joined
    if kind == "root":  # found at the next call, by whichever rank's queue held the stray message
        assert any(w in joined for w in words) and "finished without receiving" in joined, joined
    else:
        assert all(w in joined for w in words), joined
