"""close() never strands a peer: what a rank sent before it closed (and exited) reaches a
slower peer, over tcp and shm, with no handshake before the close.

The tcp case that used to break: the closing rank still had unread bytes from its peer
(a message it never asked for), so the kernel answered its close with a reset, and a
reset discards what the closer's kernel had not yet put on the wire. A message big enough
to be partly queued in the closer's socket when its send completed then never arrived:
the slow peer read "Connection reset by peer" halfway through it."""
import json
import time

import numpy as np
import pytest

from harness import run_comm

MiB = 1 << 20


def _late_receiver(comm, n, delay):
    """Rank 0 sends n bytes and closes at once (run_comm closes after the body); rank 1
    first sends rank 0 a message rank 0 never receives, then takes its time."""
    if comm.rank == 1:
        comm.send(np.ones(16, np.uint8), peer=0, tag=9)
        time.sleep(delay)
        buf = np.zeros(n, np.uint8)
        comm.recv(buf, peer=0, tag=5)
        expect = np.arange(n, dtype=np.uint64).astype(np.uint8)
        assert np.array_equal(buf, expect), "payload damaged"
    else:
        comm.send(np.arange(n, dtype=np.uint64).astype(np.uint8), peer=1, tag=5)
    return True


@pytest.fixture
def two_hosts(tmp_path, monkeypatch):
    path = tmp_path / "topo.json"
    path.write_text(json.dumps({"hosts": [{"name": "a", "ranks": [0]}, {"name": "b", "ranks": [1]}]}))
    monkeypatch.setenv("HCOMM_TOPO_FILE", str(path))
    monkeypatch.setenv("HCOMM_PROBE", "0")


# Sizes around what the socket buffers hold (4 MiB each way here): a send that completes
# while part of it is still queued in the sender's kernel is the one a reset destroys.
@pytest.mark.parametrize("n", [6 * MiB, 10 * MiB, 12 * MiB])
def test_tcp_close_delivers_what_was_sent_despite_unread_input(two_hosts, n):
    assert run_comm(_late_receiver, 2, mode="process", args=(n, 0.7), timeout=60) == [True, True]


def test_shm_close_and_exit_delivers(monkeypatch):
    # Streaming through the slots (no cross-memory attach): the last chunks are still in
    # the receiver's queue when the sender has closed; they must be taken, not failed.
    monkeypatch.setenv("HCOMM_SHM_CMA", "0")
    assert run_comm(_late_receiver, 2, mode="process", args=(3 * MiB, 0.3), timeout=60) == [True, True]


def _collectives_then_close(comm, seed):
    rng = np.random.default_rng(seed)
    inputs = [np.random.default_rng([seed, q]).standard_normal(70001).astype(np.float32) for q in range(comm.size)]
    for algo in ("ring", "halving_doubling", "hierarchical"):
        x = inputs[comm.rank].copy()
        comm._c.allreduce(x.ctypes.data, x.ctypes.data, x.size, "float32", "sum", 1.0, algo, False)
        np.testing.assert_allclose(x, np.sum(np.array(inputs, np.float64), axis=0), rtol=1e-4, atol=1e-4)
    time.sleep(rng.random() * 0.05 * comm.rank)  # ranks reach close() at different moments
    return True


def test_mixed_shm_tcp_close_without_handshake(tmp_path, monkeypatch):
    hosts = [{"name": "a", "ranks": [0, 1]}, {"name": "b", "ranks": [2, 3, 4]}]
    path = tmp_path / "topo.json"
    path.write_text(json.dumps({"hosts": hosts}))
    monkeypatch.setenv("HCOMM_TOPO_FILE", str(path))
    monkeypatch.setenv("HCOMM_PROBE", "0")
    for seed in range(3):
        assert all(run_comm(_collectives_then_close, 5, mode="process", args=(seed,), timeout=60))


# Over a shaped link between namespace hosts the same holds for a message far smaller
# than the socket buffers: at 50 Mbit/s most of it is still queued when the send returns.
NETNS_WORKER = r"""
import os, sys, time
import numpy as np
import hcomm
comm = hcomm.init(timeout=60)
n = 1 << 20
if comm.rank == 1:
    comm.send(np.ones(16, np.uint8), peer=0, tag=9)   # never received by rank 0
    time.sleep(0.5)
    buf = np.zeros(n, np.uint8)
    comm.recv(buf, peer=0, tag=5)
    assert np.array_equal(buf, np.arange(n, dtype=np.uint64).astype(np.uint8))
else:
    comm.send(np.arange(n, dtype=np.uint64).astype(np.uint8), peer=1, tag=5)
comm.close()
os._exit(0)  # and leave at once
"""


def test_netns_close_and_exit_delivers_over_a_slow_link():
    import sys

    from hcomm.topology import NetnsCluster, wait_all

    why = NetnsCluster.unavailable()
    if why is not None:
        pytest.skip(f"no namespace cluster: {why}")
    with NetnsCluster(2, rate="50mbit") as cluster:
        results = wait_all(cluster.launch(1, [sys.executable, "-c", NETNS_WORKER]), timeout=90)
    failed = [f"rank {r}: rc {rc}\n{se}" for r, (rc, so, se) in enumerate(results) if rc]
    assert not failed, "\n".join(failed)
