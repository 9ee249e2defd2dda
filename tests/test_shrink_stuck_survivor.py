"""Issue 22's intermittent hang of the elastic example, one mechanism per test, each put
in place deterministically: a survivor of a SIGKILL must leave every wait of the old
world through an error that names the cause, never through its timeout.

1. The arrival-order fold (the "direct" reduce-scatter and 16-bit folds without
   HCOMM_DETERMINISTIC) only probes for messages, so a dead peer or an aborted world
   never reached it: it waited the whole timeout, and each call queued behind it one
   timeout more (the survivors sat in queued ZeRO reduce-scatters).
2. shrink_world() aborted only the default group's world; a survivor blocked in another
   group's collective with a rank that had gone to shrink kept waiting, and the
   agreement waited for it (pp=2: a gradient-norm all_reduce over the pipeline group).
3. torch gave each group its own 30-minute default, so HCOMM_TIMEOUT bounded nothing
   in the example's groups.
4. A receive from any source (blocking and async) only probes too: with every other
   rank dead, or the world aborted by another thread or call, it waited the timeout.

Each test gives the ranks a timeout far longer than the work needs and checks WHAT ended
the wait (its error text), not how long it took."""
import json
from datetime import timedelta

import pytest

from harness import launch_scripts, run_comm

TIMEOUT = 40  # every rank's HCOMM_TIMEOUT: what a wait that misses the death would last

FOLD = r"""
import json, os, signal, sys
import numpy as np
import hcomm
comm = hcomm.init()
r, n = comm.rank, comm.size
count = 1237                                    # odd: blocks of unequal bytes across pieces
rng = [np.random.default_rng([22, q]) for q in range(n)]
inputs = [g.standard_normal(count * n).astype(np.float32) for g in rng]
out = np.zeros(count, np.float32)
comm.reduce_scatter(inputs[r].copy(), out, algo="direct")   # healthy: against numpy
want = np.sum(np.array(inputs, np.float64), axis=0)[r * count:(r + 1) * count]
ok = bool(np.allclose(out, want, rtol=1e-5, atol=1e-5))
comm.barrier()
if r == n - 1:
    os.kill(os.getpid(), signal.SIGKILL)
# Rank n-1 is gone: three queued calls, each folding in arrival order and waiting on it.
works = [comm.reduce_scatter(inputs[r].copy(), np.zeros(count, np.float32), algo="direct", async_op=True)
         for _ in range(3)]
errors = []
for w in works:
    try:
        w.wait()
        errors.append(None)
    except hcomm.Error as e:
        errors.append(str(e))
print(json.dumps({"rank": r, "correct_before": ok, "errors": errors}), flush=True)
"""

REGROUP = r"""
import json, os, signal
import numpy as np
import torch, torch.distributed as dist
import hcomm, hcomm.torch
dist.init_process_group("hcomm")
rank = dist.get_rank()
pair = dist.new_group([0, 1])           # every rank calls new_group; 2 is not a member
dist.barrier()
if rank == 2:
    os.kill(os.getpid(), signal.SIGKILL)
error = None
try:
    if rank == 0:
        dist.recv(torch.zeros(3), src=2)    # sees rank 2 die, then goes to shrink
    else:
        dist.all_reduce(torch.ones(3), group=pair)   # rank 0 never comes: only an abort ends it
except (RuntimeError, hcomm.Error) as e:
    error = str(e)
new_rank, size, old_ranks = hcomm.torch.shrink_world()
x = torch.full((5,), float(rank + 1))
dist.all_reduce(x)
print(json.dumps({"rank": rank, "error": error, "new": [new_rank, size, old_ranks], "sum": x.tolist()}), flush=True)
dist.destroy_process_group()
"""


ANY_DEAD = r"""
import json, os, signal
import numpy as np
import hcomm
comm = hcomm.init()
r, mode = comm.rank, os.environ["ANY_MODE"]
sent = np.random.default_rng(22).standard_normal(1237).astype(np.float32)   # odd size, eager


def recv_any(buf):
    if mode == "blocking":
        return comm.recv(buf, tag=5)
    w = comm.recv(buf, tag=5, async_op=True)
    w.wait()
    return w.source


if r == 1:
    comm.send(sent, 0, tag=5)          # sent before its death: must still be delivered
comm.barrier()
if r == 1:
    os._exit(0)
if r == 2:
    os.kill(os.getpid(), signal.SIGKILL)
got = np.zeros_like(sent)
source = recv_any(got)
error = None
try:
    recv_any(np.zeros_like(sent))      # nobody is left to send it
except hcomm.Error as e:
    error = str(e)
print(json.dumps({"source": source, "delivered": bool(np.array_equal(got, sent)), "error": error}), flush=True)
"""

ANY_ABORT = r"""
import json, os, threading
import numpy as np
import hcomm
comm = hcomm.init()
r, mode = comm.rank, os.environ["ANY_MODE"]
why = "the test aborts the world"
comm.barrier()
error = None
try:
    if r != 0:
        comm.recv(np.zeros(5, np.float32), 0, tag=6)    # ended by rank 0's abort notice
    elif mode == "blocking":   # another thread aborts while this one waits
        threading.Timer(1.0, comm.abort, args=(why,)).start()
        comm.recv(np.zeros(5, np.float32), tag=5)
    else:                      # another call aborts after the receive was posted
        w = comm.recv(np.zeros(5, np.float32), tag=5, async_op=True)
        comm.abort(why)
        w.wait()
except hcomm.Error as e:
    error = str(e)
print(json.dumps({"rank": r, "error": error}), flush=True)
"""

# The launch limit of the any-source tests: well inside TIMEOUT, so a wait that misses
# the death or the abort fails the test by hanging past it.
ANY_LIMIT = 30


def _launch(n, code, env_extra=None, timeout=3 * TIMEOUT):
    return launch_scripts(n, code, dict(HCOMM_TIMEOUT=str(TIMEOUT), **(env_extra or {})), timeout)


def _rows(results, victim):
    rows = {}
    for r, (rc, out, err) in enumerate(results):
        if r == victim:
            assert rc == -9, f"victim rc {rc}\n{err[-2000:]}"
            continue
        assert rc == 0, f"rank {r} rc {rc}\n{err[-3000:]}"
        rows[r] = json.loads(out.strip().splitlines()[-1])
    return rows


@pytest.mark.parametrize("hosts", [None, [[0, 1], [2, 3]]], ids=["shm", "tcp+shm"])
def test_arrival_order_fold_fails_on_a_dead_peer_not_at_the_timeout(hosts, tmp_path):
    env = {}
    if hosts:  # simulated hosts: ranks 0, 1 reach the victim (3) over tcp, rank 2 over shm
        path = tmp_path / "topo.json"
        path.write_text(json.dumps({"hosts": [{"name": f"h{i}", "ranks": rs} for i, rs in enumerate(hosts)]}))
        env["HCOMM_TOPO_FILE"] = str(path)
    rows = _rows(_launch(4, FOLD, env), victim=3)
    for r, row in rows.items():
        assert row["correct_before"], row
        first, *queued = row["errors"]
        assert first and "rank 3" in first and "timed out" not in first, row
        assert "has exited" in first or "connection to rank 3 failed" in first or "gave up" in first, row
        for e in queued:   # behind the failed call: ended by the abort, not each by its own timeout
            assert e and "timed out" not in e, row


def test_shrink_world_releases_a_survivor_blocked_in_another_group():
    rows = _rows(_launch(3, REGROUP), victim=2)
    assert "rank 2" in rows[0]["error"], rows[0]
    stuck = rows[1]["error"]
    assert stuck and "aborted for shrink_world() on global rank 0" in stuck and "timed out" not in stuck, rows[1]
    for r, row in rows.items():
        assert row["new"] == [r, 2, [0, 1]], row
        assert row["sum"] == [3.0] * 5, row   # (0 + 1) + (1 + 1) on the shrunk world


def test_hcomm_timeout_replaces_a_torch_groups_default(monkeypatch):
    """HCOMM_TIMEOUT stands in for torch's 30-minute default (what DeviceMesh's groups
    get); a timeout the caller passed, shorter or longer, is kept."""
    import torch.distributed as dist

    from hcomm.torch.backend import create_hcomm

    monkeypatch.setenv("HCOMM_TIMEOUT", "7")
    pg = create_hcomm(dist.HashStore(), 0, 1, timedelta(minutes=30))  # torch's default for a group
    assert pg.comm.timeout == 7 and pg._timeout == timedelta(seconds=7)
    shorter = create_hcomm(dist.HashStore(), 0, 1, timedelta(seconds=3))  # the caller's own: kept
    longer = create_hcomm(dist.HashStore(), 0, 1, timedelta(minutes=45))
    assert shorter.comm.timeout == 3 and longer.comm.timeout == 2700
    monkeypatch.delenv("HCOMM_TIMEOUT")
    unset = create_hcomm(dist.HashStore(), 0, 1, timedelta(minutes=30))
    assert unset.comm.timeout == 1800
    for g in (pg, shorter, longer, unset):
        g.shutdown()


def _only_survivor(results):
    for r, (rc, out, err) in enumerate(results[1:], start=1):
        assert rc in (0, -9), f"victim rank {r} rc {rc}\n{err[-2000:]}"
    rc, out, err = results[0]
    assert rc == 0, f"rank 0 rc {rc}\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["blocking", "async"])
@pytest.mark.parametrize("hosts", [None, [[0, 2], [1]]], ids=["shm", "tcp+shm"])
def test_any_source_receive_fails_once_every_sender_is_dead(mode, hosts, tmp_path):
    env = {"ANY_MODE": mode}
    if hosts:  # rank 1 (the one that sent) reaches rank 0 over tcp, rank 2 over shm
        path = tmp_path / "topo.json"
        path.write_text(json.dumps({"hosts": [{"name": f"h{i}", "ranks": rs} for i, rs in enumerate(hosts)]}))
        env["HCOMM_TOPO_FILE"] = str(path)
    row = _only_survivor(_launch(3, ANY_DEAD, env, timeout=ANY_LIMIT))
    assert row["source"] == 1 and row["delivered"], row   # what came before the death first
    error = row["error"]
    assert error and "any" in error and "timed out" not in error, row
    assert "rank 1" in error and "rank 2" in error, row


@pytest.mark.parametrize("mode", ["blocking", "async"])
def test_any_source_receive_fails_once_the_world_is_aborted(mode):
    results = _launch(3, ANY_ABORT, {"ANY_MODE": mode}, timeout=ANY_LIMIT)
    for r, (rc, out, err) in enumerate(results):
        assert rc == 0, f"rank {r} rc {rc}\n{err[-3000:]}"
        row = json.loads(out.strip().splitlines()[-1])
        assert row["error"] and "the test aborts the world" in row["error"], row
        assert "timed out" not in row["error"], row
        if r == 0:  # ended inside the wait, not refused before it by the abort
            assert "receive from any rank failed" in row["error"], row


def _late_sender_body(comm, mode):
    """Rank 0 waits from any source across several failure checks (one every 100 ms)
    while the others are alive and send late: the check must not end a live wait."""
    import time

    import numpy as np

    import hcomm

    payload = [np.random.default_rng([22, q]).standard_normal(1237).astype(np.float32) for q in range(comm.size)]
    if comm.rank != 0:
        time.sleep(0.4 * comm.rank)   # several 100 ms failure checks pass on rank 0 meanwhile
        comm.send(payload[comm.rank], 0, tag=5)
        return True
    seen = set()
    for _ in range(comm.size - 1):
        buf = np.zeros(1237, np.float32)
        if mode == "blocking":
            src = comm.recv(buf, tag=5)
        else:
            w = comm.recv(buf, tag=5, async_op=True)
            assert w.wait()
            src = w.source
        np.testing.assert_array_equal(buf, payload[src])
        seen.add(src)
    assert seen == set(range(1, comm.size)), seen
    if comm.size == 1:  # alone: only an abort can end the wait
        w = comm.recv(np.zeros(3, np.float32), tag=5, async_op=True)
        comm.abort("the test aborts a world of one")
        with pytest.raises(hcomm.Error, match="a world of one"):
            w.wait()
    return True


@pytest.mark.parametrize("mode", ["blocking", "async"])
@pytest.mark.parametrize("world", [1, 3])
def test_any_source_receive_outlasts_failure_checks_while_senders_live(world, mode):
    assert all(run_comm(_late_sender_body, world, mode="process", args=(mode,), timeout=ANY_LIMIT))
