"""HCOMM_TRANSPORT: one preference order of transports per level (this host / other
hosts), routes chosen per peer by the transports' canConnect (csrc/comm/world.h).

Unknown words raise naming the known ones, before anything connects; a level whose
transports reach no peer raises at init naming the rank; old settings keep their routes;
a new combination (tcp between the ranks of one host) runs collectives correctly.
Device-memory orders (cuda_ipc, staging, CUDA-aware MPI) are in test_mpi_device.py and
test_device_collectives.py.
"""
import json

import numpy as np
import pytest

import reference as ref
from harness import run_comm, run_ranks

KNOWN = "shm, tcp, mpi, cuda_ipc, staging"


@pytest.mark.parametrize("setting, why", [
    ("inter:carrier-pigeon", "unknown transport 'carrier-pigeon'"),
    ("pigeon", "unknown transport 'pigeon'"),
    ("warp:shm", "unknown level 'warp'"),
    ("intra:shm+shm", "'shm' named twice"),
    ("intra:shm,", None),  # a trailing comma is no item: accepted
    (",intra:shm", "no transport named in ''"),
    ("inter:", "no transport named"),
])
def test_bad_words_are_refused_with_the_known_list(monkeypatch, setting, why):
    import hcomm

    monkeypatch.setenv("HCOMM_MPI", "0")
    monkeypatch.setenv("HCOMM_TRANSPORT", setting)
    if why is None:
        hcomm.init(rank=0, size=1).close()
        return
    with pytest.raises(hcomm.Error) as e:
        hcomm.init(rank=0, size=1)
    msg = str(e.value)
    assert "HCOMM_TRANSPORT" in msg and why in msg and KNOWN in msg, msg


def _topo(tmp_path, sizes):
    hosts, r = [], 0
    for h, n in enumerate(sizes):
        hosts.append({"name": f"host{h}", "ranks": list(range(r, r + n))})
        r += n
    path = tmp_path / "topo.json"
    path.write_text(json.dumps({"hosts": hosts}))
    return str(path)


def _collectives(comm, seed):
    """allreduce (every flat algorithm), broadcast, allgather, alltoall against numpy."""
    n, me = comm.size, comm.rank
    for algo in ("ring", "tree", "halving_doubling"):
        inputs = [ref.make("float32", 3001, r, seed) for r in range(n)]
        x = inputs[me].copy()
        comm.allreduce(x, algo=algo)
        ref.check(x, ref.reduce_ref(inputs, "sum", "float32"), "float32", n, algo)
    x = ref.make("int32", 1001, n - 1, seed) if me == n - 1 else ref.zeros("int32", 1001)
    comm.broadcast(x, root=n - 1)
    np.testing.assert_array_equal(x, ref.make("int32", 1001, n - 1, seed))
    out = np.empty(7 * n, np.float64)
    comm.allgather(ref.make("float64", 7, me, seed), out)
    np.testing.assert_array_equal(out, np.concatenate([ref.make("float64", 7, r, seed) for r in range(n)]))
    blocks = [ref.make("int64", 5 * n, r, seed + 1) for r in range(n)]
    got = np.empty(5 * n, np.int64)
    comm.alltoall(blocks[me], got)
    np.testing.assert_array_equal(got, np.concatenate([b[me * 5:(me + 1) * 5] for b in blocks]))
    return comm.transports()


def test_tcp_inside_one_host(monkeypatch):
    """intra:tcp: the ranks of one host talk loopback tcp (the old fixed fields could not
    say this); a rank's route to itself stays shm."""
    monkeypatch.setenv("HCOMM_TRANSPORT", "intra:tcp")
    names = run_comm(_collectives, 3, args=(5,))
    assert names == [["shm" if q == r else "tcp" for q in range(3)] for r in range(3)], names


def test_old_settings_keep_their_routes(monkeypatch, tmp_path):
    """intra:shm,inter:tcp (and auto) on 2 + 3 ranks of two simulated hosts."""
    monkeypatch.setenv("HCOMM_TOPO_FILE", _topo(tmp_path, [2, 3]))
    host = [0, 0, 1, 1, 1]
    for setting in ("intra:shm,inter:tcp", "auto"):
        monkeypatch.setenv("HCOMM_TRANSPORT", setting)
        names = run_comm(_collectives, 5, args=(6,))
        assert names == [["shm" if host[q] == host[r] else "tcp" for q in range(5)] for r in range(5)], names


def _init_fails(rank, size, uid):
    import hcomm

    try:
        hcomm.init(rank=rank, size=size, unique_id=uid).close()
    except hcomm.Error as e:
        return str(e)
    return "no error"


def test_a_level_that_reaches_no_peer_raises_at_init(monkeypatch, tmp_path):
    """inter:shm: shared memory cannot reach the other host; both ranks raise naming the
    other and the order, before any collective."""
    import hcomm

    monkeypatch.setenv("HCOMM_TOPO_FILE", _topo(tmp_path, [1, 1]))
    monkeypatch.setenv("HCOMM_TRANSPORT", "inter:shm")
    msgs = run_ranks(_init_fails, 2, args=(hcomm.get_unique_id(),), timeout=60)
    for r, msg in enumerate(msgs):
        assert f"rank {1 - r} cannot be reached" in msg and "inter-host transports [shm, staging]" in msg, msg
