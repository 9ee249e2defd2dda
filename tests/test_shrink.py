"""Communicator.shrink(): survivors of a SIGKILL agree on who is left and go on; a planned
exclusion; split communicators; a rank that is alive but silent is named, never waited
for forever; abort() reaches the peers. Results are checked against numpy on the new
communicator. The kill trials come from benchmarks/shrink_reliability.py (the same code
that gives README's figures, there with 50 trials)."""
import json
import os
import sys
import time

import numpy as np
import pytest

import hcomm
from harness import run_comm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from shrink_reliability import run_trial  # noqa: E402


def _check_trial(v, n, victims=1):
    assert not v["hung"], f"ranks {v['hung']} hung: {v}"
    assert len(v["victims"]) == victims
    assert v["shrunk"] == v["survivors"] == n - victims, v
    assert v["same_membership"] and v["membership_is_survivors"], v
    assert v["correct"], v


@pytest.mark.parametrize("n,seed", [(4, 1), (5, 2)])
def test_survivors_of_a_sigkill_shrink_and_allreduce(n, seed):
    _check_trial(run_trial(n, seed, timeout=20), n)


def test_survivors_over_tcp_between_simulated_hosts():
    # ranks 0,1 on host a and 2,3,4 on host b: the victim's peers see it die over tcp and shm
    hosts = [{"name": "a", "ranks": [0, 1]}, {"name": "b", "ranks": [2, 3, 4]}]
    _check_trial(run_trial(5, 3, timeout=20, hosts=hosts), 5)


def test_second_kill_during_shrink_never_hangs():
    v = run_trial(5, 4, timeout=15, second_kill=True)
    assert not v["hung"], str(v)  # whole: pytest shortens a dict
    # Where the second death lands decides whether the survivors finish (3 members; 4 when
    # the second victim had finished the shrink before its kill landed) or raise naming
    # it; they must agree either way, and never wait past the timeout.
    assert v["same_membership"] and v["correct"], str(v)
    if v["shrunk"]:
        assert v["shrunk"] == 3 and v["membership_is_survivors"], str(v)
        assert len(v["membership"]) == (4 if v["second_finished_first"] else 3), str(v)
    else:
        assert all(v["errors"]), str(v)


# ---------------------------------------------------------------- planned exclusion (threads)

def _exclude_body(comm, exclude):
    out = None
    if comm.rank not in exclude:
        new = comm.shrink(exclude=exclude)
        members = np.zeros(new.size, np.int64)
        new.allgather(np.array([comm.rank], np.int64), members)
        inputs = [np.random.default_rng([5, q]).standard_normal(1001).astype(np.float32) for q in range(new.size)]
        x = inputs[new.rank].copy()
        new.allreduce(x)
        np.testing.assert_allclose(x, np.sum(np.array(inputs, np.float64), axis=0), rtol=1e-5, atol=1e-5)
        out = (new.rank, new.size, members.tolist())
        new.close()
    # the old communicator was healthy and stays usable, excluded ranks included
    y = np.ones(3, np.float32)
    comm.allreduce(y)
    return out, float(y[0])


@pytest.mark.parametrize("size,exclude", [(5, [2]), (4, [0, 3]), (3, [1]), (7, [6, 1, 4])])
def test_exclude_renumbers_densely(size, exclude):
    results = run_comm(_exclude_body, size, args=(exclude,), timeout=60)
    keep = [r for r in range(size) if r not in exclude]
    for r in range(size):
        expect = None if r in exclude else (keep.index(r), len(keep), keep)
        assert results[r] == (expect, float(size))


def _split_body(comm):
    # 5 ranks: evens [0,2,4] and odds [1,3]; the evens drop their middle rank (2)
    sub = comm.split(comm.rank % 2)
    out = None
    if comm.rank % 2 == 0 and sub.rank != 1:
        new = sub.shrink(exclude=[1])
        x = np.full(4, float(comm.rank), np.float32)
        new.allreduce(x)
        out = (new.size, float(x[0]))
        new.close()
    x = np.ones(2, np.float32)
    sub.allreduce(x)
    sub.close()
    return out, float(x[0])


def test_split_communicator_shrinks_too():
    results = run_comm(_split_body, 5, timeout=60)
    assert results[0] == ((2, 4.0), 3.0) and results[4] == ((2, 4.0), 3.0)
    assert results[2] == (None, 3.0)
    assert results[1] == (None, 2.0) and results[3] == (None, 2.0)


def _topo_body(comm):
    new = comm.shrink(exclude=[1]) if comm.rank != 1 else None
    if new is None:
        return None
    inputs = [np.random.default_rng([8, q]).standard_normal(5003).astype(np.float32) for q in range(new.size)]
    x = inputs[new.rank].copy()
    new._c.allreduce(x.ctypes.data, x.ctypes.data, x.size, "float32", "sum", 1.0, "hierarchical", False)
    np.testing.assert_allclose(x, np.sum(np.array(inputs, np.float64), axis=0), rtol=1e-5, atol=1e-5)
    topo = hcomm.topology.topology(new)
    out = new.transports(), len(topo["hosts"])
    new.close()
    return out


def test_new_communicator_has_its_own_topology(tmp_path, monkeypatch):
    # hosts a = {0, 1}, b = {2, 3}; without rank 1: new rank 0 alone on a, 1 and 2 on b
    path = tmp_path / "topo.json"
    path.write_text(json.dumps({"hosts": [{"name": "a", "ranks": [0, 1]}, {"name": "b", "ranks": [2, 3]}]}))
    monkeypatch.setenv("HCOMM_TOPO_FILE", str(path))
    monkeypatch.setenv("HCOMM_PROBE", "0")
    results = run_comm(_topo_body, 4, timeout=60)
    assert results[0] == (["shm", "tcp", "tcp"], 2)
    assert results[2] == (["tcp", "shm", "shm"], 2) and results[3] == (["tcp", "shm", "shm"], 2)


# ---------------------------------------------------------------- never hangs, clear errors

def _silent_body(comm):
    if comm.rank == 3:  # alive, but never calls shrink
        time.sleep(4)
        return "silent"
    comm.timeout = 2
    t0 = time.monotonic()
    with pytest.raises(hcomm.Error, match=r"could not hear from ranks \[3\]"):
        comm.shrink()
    return time.monotonic() - t0


def test_alive_but_silent_rank_is_named_within_the_timeout():
    results = run_comm(_silent_body, 4, timeout=60)
    assert results[3] == "silent"
    assert all(t < 2 + 3 for t in results[:3]), results


def _bad_body(comm):
    with pytest.raises(hcomm.InvalidArgument, match="out of range"):
        comm.shrink(exclude=[comm.size])
    with pytest.raises(hcomm.InvalidArgument, match="excluded ranks do not call"):
        comm.shrink(exclude=[comm.rank])
    x = np.ones(2, np.float32)
    comm.allreduce(x)  # nothing moved: the communicator is still fine
    return float(x[0])


def test_bad_exclude_is_refused_before_anything_moves():
    assert run_comm(_bad_body, 3) == [3.0, 3.0, 3.0]


def _abort_body(comm):
    if comm.rank == 0:
        time.sleep(0.3)
        comm.abort("operator pulled the plug")
    else:
        t0 = time.monotonic()
        with pytest.raises(hcomm.Error, match="operator pulled the plug"):
            comm.recv(np.zeros(4, np.float32), peer=0)
        assert time.monotonic() - t0 < 5
    with pytest.raises(hcomm.Error, match="aborted"):
        comm.allreduce(np.ones(2, np.float32))
    new = comm.shrink()  # aborted, and still able to go on
    x = np.ones(2, np.float32)
    new.allreduce(x)
    new.close()
    return float(x[0])


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_abort_fails_peers_at_once_and_shrink_still_works(mode, tmp_path, monkeypatch):
    if mode == "process":  # rank 2 on another simulated host: the notice travels over tcp
        path = tmp_path / "topo.json"
        path.write_text(json.dumps({"hosts": [{"name": "a", "ranks": [0, 1]}, {"name": "b", "ranks": [2]}]}))
        monkeypatch.setenv("HCOMM_TOPO_FILE", str(path))
        monkeypatch.setenv("HCOMM_PROBE", "0")
    comm_timeout = {"HCOMM_TIMEOUT": "30"}
    monkeypatch.setenv("HCOMM_TIMEOUT", comm_timeout["HCOMM_TIMEOUT"])
    assert run_comm(_abort_body, 3, mode=mode, timeout=60) == [3.0, 3.0, 3.0]
