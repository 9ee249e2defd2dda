"""A receive posted after its message arrived completes while it is posted.

Over shared memory such a receive is a copy (or, above the rendezvous size, one
process_vm_readv of the sender's buffer) done inside the post. It used to be queued for
the progress thread anyway, and in the torch backend handed on to a completion thread:
two or three thread wake-ups, 1.6-1.8 ms a receive on a loaded 2-core machine
(benchmarks/p2p_latency.py, pattern `late`). These tests assert the structure, not a
time: the Work is complete when the post returns, and the bytes are right.

How "the message has arrived" is known without sleeping: rank 0 posts every message,
then sends a marker; messages from one peer are delivered in order, so once rank 1 has
received the marker, every earlier message is in its queue.
"""
import numpy as np
import pytest

from harness import run_comm, run_torch

# empty, tiny, odd, above a 128 KiB slot, above the rendezvous size (64 KiB by default)
SIZES = [0, 1, 13, 4099, 131_075, 1_000_003]
MARKER_TAG = 99


def _payload(i, n):
    return np.random.default_rng(1000 + i).integers(0, 256, n, dtype=np.uint8)


def _array_body(comm):
    if comm.rank == 0:
        works = [comm.send(_payload(i, n), peer, tag=i, async_op=True)
                 for peer in range(1, comm.size) for i, n in enumerate(SIZES)]
        for peer in range(1, comm.size):
            comm.send(np.zeros(1, np.uint8), peer, tag=MARKER_TAG)
        for w in works:  # rendezvous sends finish when their receive pulls them
            assert w.wait(timeout=60)
        return True
    comm.recv(np.zeros(1, np.uint8), 0, tag=MARKER_TAG)
    for i, n in reversed(list(enumerate(SIZES))):  # any order: tags keep them apart
        buf = np.full(n, 7, np.uint8)
        w = comm.recv(buf, 0, tag=i, async_op=True)
        assert w.is_completed(), f"a {n}-byte receive of an arrived message was left to the progress thread"
        assert w.wait(timeout=60) and w.source == 0
        np.testing.assert_array_equal(buf, _payload(i, n), err_msg=f"{n}-byte message {i}")
    return True


@pytest.mark.parametrize("world", [2, 3])
def test_array_receive_of_arrived_message_completes_when_posted(world):
    assert all(run_comm(_array_body, world, mode="process"))


def _torch_body(rank, world):
    import torch
    import torch.distributed as dist

    if rank == 0:
        works = [dist.isend(torch.from_numpy(_payload(i, n)), 1, tag=i) for i, n in enumerate(SIZES)]
        dist.send(torch.zeros(1, dtype=torch.uint8), 1, tag=MARKER_TAG)
        for w in works:
            w.wait()
        return True
    dist.recv(torch.zeros(1, dtype=torch.uint8), 0, tag=MARKER_TAG)
    for i, n in reversed(list(enumerate(SIZES))):
        buf = torch.full((n,), 7, dtype=torch.uint8)
        w = dist.irecv(buf, 0, tag=i)
        # Complete means its future is set: nothing is left for another thread to do.
        assert w.is_completed(), f"a {n}-byte irecv of an arrived message was handed to another thread"
        assert w.get_future().value() is not None
        w.wait()
        np.testing.assert_array_equal(buf.numpy(), _payload(i, n), err_msg=f"{n}-byte message {i}")
    return True


def test_torch_irecv_of_arrived_message_completes_when_posted():
    assert all(run_torch(_torch_body, 2, backend="hcomm"))


def _torch_wait_body(rank, world):
    """Receives posted before their messages (the pipeline's pattern), waited while the
    progress thread and the completion pool may be completing the same Work: each future
    must complete exactly once with the right bytes, and an attached callback run once."""
    import torch
    import torch.distributed as dist

    peer = 1 - rank
    rounds = 60
    ran = []
    for k in range(rounds):
        n = SIZES[k % len(SIZES)]
        got = torch.full((n,), 7, dtype=torch.uint8)
        r = dist.irecv(got, peer, tag=k)
        fut = r.get_future().then(lambda f, k=k: ran.append(k))
        s = dist.isend(torch.from_numpy(_payload(k * 2 + rank, n)), peer, tag=k)
        r.wait()
        s.wait()
        fut.wait()
        np.testing.assert_array_equal(got.numpy(), _payload(k * 2 + peer, n), err_msg=f"round {k}, {n} bytes")
    assert ran == list(range(rounds)), "a completion callback ran twice or not at all"
    return True


def test_torch_wait_completes_each_future_once():
    assert all(run_torch(_torch_wait_body, 2, backend="hcomm"))


# Waits that sleep at once and for long: a sleeper not woken when its request completes
# would stay asleep for HCOMM_SLEEP_US (20 s a time), and the test would run past the
# harness timeout instead of finishing in a second.
LONG_SLEEPS = {"HCOMM_SPIN_ITERS": "0", "HCOMM_YIELD_ITERS": "0", "HCOMM_SLEEP_US": "20000000"}


def _two_threads_body(comm):
    """Rank 1's progress thread drives an async receive while its own thread sleeps in a
    blocking receive on the same transport: whichever thread drains the queue completes
    the other's request and must wake it (peers' rings wake it only when they write)."""
    rounds, n = 3000, 4099
    rng = np.random.default_rng(7)
    if comm.rank == 0:
        for k in range(rounds):
            comm.send(_payload(2 * k, n), 1, tag=2 * k)
            if rng.random() < 0.5:  # vary which message lands while rank 1 sleeps
                np.linalg.norm(rng.random(2000))
            comm.send(_payload(2 * k + 1, n), 1, tag=2 * k + 1)
        return True
    for k in range(rounds):
        a, b = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
        w = comm.recv(a, 0, tag=2 * k, async_op=True)
        comm.recv(b, 0, tag=2 * k + 1)
        assert w.wait(timeout=60)
        np.testing.assert_array_equal(a, _payload(2 * k, n), err_msg=f"round {k}, async")
        np.testing.assert_array_equal(b, _payload(2 * k + 1, n), err_msg=f"round {k}, blocking")
    return True


def test_a_thread_that_completes_anothers_request_wakes_it():
    assert all(run_comm(_two_threads_body, 2, mode="process", env=LONG_SLEEPS, timeout=60))
