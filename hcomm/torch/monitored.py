"""Gloo's monitored barrier on an hcomm Communicator.

Rank 0 collects a token from every other rank within the timeout and names the ranks
that did not arrive (the first one, or all of them with wait_all_ranks); when all
arrived it acknowledges each, so every rank leaves only after all have entered.
A rank whose acknowledgement does not come within the timeout fails too, naming rank 0.
"""
from datetime import timedelta
import time

import torch

# Point-to-point tag reserved for the barrier's tokens, far from tags users pick.
MONITORED_BARRIER_TAG = 2 ** 31 - 101


def _seconds(timeout):
    return timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)


def monitored_barrier(comm, timeout, wait_all_ranks=False):
    seconds = _seconds(timeout)
    if comm.size == 1:
        return None
    if comm.rank != 0:
        return _member(comm, seconds)
    return _monitor(comm, seconds, wait_all_ranks)


def _member(comm, seconds):
    token = torch.zeros(1, dtype=torch.uint8)
    comm.send(token, 0, tag=MONITORED_BARRIER_TAG)
    ack = comm.recv(token, 0, tag=MONITORED_BARRIER_TAG, async_op=True)
    if not ack.wait(seconds):
        raise RuntimeError(f"monitored_barrier: rank {comm.rank} was not released by rank 0 within "
                           f"{seconds:g} s (some other rank did not arrive)")


def _monitor(comm, seconds, wait_all_ranks):
    deadline = time.monotonic() + seconds
    tokens = {r: torch.zeros(1, dtype=torch.uint8) for r in range(1, comm.size)}
    recvs = {r: comm.recv(tokens[r], r, tag=MONITORED_BARRIER_TAG, async_op=True) for r in tokens}
    missing = []
    for r, w in recvs.items():
        if not w.wait(max(0.0, deadline - time.monotonic())):
            missing.append(r)
            if not wait_all_ranks:
                break
    if missing:
        which = f"ranks {missing}" if wait_all_ranks else f"rank {missing[0]}"
        raise RuntimeError(f"monitored_barrier: {which} failed to pass monitored_barrier within {seconds:g} s")
    for r in tokens:
        comm.send(tokens[r], r, tag=MONITORED_BARRIER_TAG)
