"""Flight recorder, dumps on error and on SIGUSR1, dead peers, HCOMM_DEBUG logging."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import hcomm
from harness import run_comm, run_ranks


def _record_body(comm):
    comm.allreduce(np.ones(100, np.float32), algo="ring")
    comm.broadcast(np.ones(7, np.int64), root=comm.size - 1)
    w = comm.allreduce(np.ones(3), algo="halving_doubling", async_op=True)
    w.wait()
    return comm.flight_record()


def test_flight_record_lists_calls_in_order():
    rec = run_comm(_record_body, 3)[1]
    entries = rec["entries"]
    assert rec["rank"] == 1 and rec["size"] == 3
    ops = [(e["op"], e["dtype"], e["count"], e["root"], e["algo"], e["state"]) for e in entries]
    assert ops[-3:] == [("allreduce", "float32", 100, -1, "ring", "completed"),
                        ("broadcast", "int64", 7, 2, "binomial", "completed"),
                        ("allreduce", "float64", 3, -1, "halving_doubling", "completed")]
    # What ran: the algorithm over the transport that links the ranks (threads of one process: shm).
    assert [e["ran"] for e in entries[-3:]] == ["ring over shm", "binomial over shm", "halving_doubling over shm"]
    assert all(e["device"] == "host" for e in entries)
    seqs = [e["seq"] for e in entries if e["op"] not in ("send", "recv")]  # point to point has no seq
    assert seqs == sorted(seqs)
    assert all(e["ended"] >= e["started"] >= e["queued"] for e in entries)


def test_flight_recorder_is_bounded(monkeypatch):
    monkeypatch.setenv("HCOMM_FLIGHT_RECORDER_SIZE", "5")
    comm = hcomm.init(rank=0, size=1)
    for _ in range(20):
        comm.barrier()
    entries = comm.flight_record()["entries"]
    comm.close()
    assert len(entries) == 5 and entries[-1]["seq"] == 20


def _dump_on_error_body(rank, size, uid, directory):
    os.environ["HCOMM_DEBUG_DUMP_DIR"] = directory
    comm = hcomm.init(rank=rank, size=size, unique_id=uid, timeout=2)
    comm.allreduce(np.ones(4))
    if rank == 0:
        os.kill(os.getpid(), signal.SIGUSR1)  # dump on demand
        time.sleep(0.2)
        try:
            comm.allreduce(np.ones(4))  # rank 1 never comes: times out
        except hcomm.Error as e:
            return str(e)
    else:
        time.sleep(4)
    return ""


def test_dump_on_error_and_on_sigusr1(tmp_path):
    out = run_ranks(_dump_on_error_body, 2, mode="process", args=(hcomm.get_unique_id(), str(tmp_path)), timeout=60)
    assert "flight record:" in out[0] and "timed out" in out[0], out[0]
    files = sorted(os.listdir(tmp_path))
    assert files == ["hcomm_flight_1_rank0.json"], files
    rec = json.loads((tmp_path / files[0]).read_text())
    assert rec["entries"][-1]["state"] == "failed" and "timed out" in rec["entries"][-1]["error"]
    # The error and the record name what ran (a one-host pair: shm), not the plan alone.
    ran = rec["entries"][-1]["ran"]
    assert ran.endswith(" over shm") and f"{ran}) on communicator" in out[0], (ran, out[0])


def _dead_peer_body(rank, size, uid):
    comm = hcomm.init(rank=rank, size=size, unique_id=uid, timeout=60)
    comm.barrier()
    if rank == 1:
        return "exits"  # the process ends here, in the middle of rank 0's allreduce
    t = time.monotonic()
    try:
        comm.allreduce(np.ones(1 << 16), algo="ring")
    except hcomm.Error as e:
        return time.monotonic() - t, str(e)
    return None


@pytest.mark.parametrize("transport_env", [None, "tcp"])
def test_dead_peer_is_named_long_before_the_timeout(transport_env):
    env = [{"HCOMM_HOST_ID": f"h{r}"} for r in range(2)] if transport_env == "tcp" else None
    out = run_ranks(_dead_peer_body, 2, mode="process", args=(hcomm.get_unique_id(),), env=env, timeout=60)
    elapsed, msg = out[0]
    assert elapsed < 5, (elapsed, msg)
    assert "rank 1" in msg, msg


def test_debug_logging_prefixes_rank():
    code = ("import hcomm, numpy as np; c = hcomm.init(rank=0, size=1); c.allreduce(np.ones(2)); c.close()")
    env = dict(os.environ, HCOMM_DEBUG="TRACE")
    err = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stderr
    assert "[hcomm rank 0] init: 1 ranks" in err, err
    assert "[hcomm rank 0] start allreduce #1" in err and "[hcomm rank 0] end allreduce #1" in err, err


def _straggler_body(rank, size, uid, straggler_waits_in_hcomm=False, transports=None):
    """The last rank skips the third call: busy outside hcomm (sleeping), or inside hcomm
    in another call, where it can still answer progress queries."""
    comm = hcomm.init(rank=rank, size=size, unique_id=uid, timeout=2)
    if transports is not None:
        assert set(comm.transports()) == transports
    comm.allreduce(np.ones(8))
    comm.broadcast(np.ones(8), root=1)
    last = comm.flight_record()["entries"][-1]["seq"]
    if rank == size - 1:
        if straggler_waits_in_hcomm:
            comm.timeout = 6
            try:
                comm.recv(np.zeros(1), peer=0, tag=5)
            except hcomm.Error:
                pass
        else:
            time.sleep(4)  # never joins the allreduce the others start
        return last, ""
    try:
        comm.allreduce(np.ones(8))
    except hcomm.Error as e:
        return last, str(e)
    return last, "no error"


def test_timeout_says_which_rank_did_not_reach_which_call():
    """On a timeout the ranks compare progress: the error names the rank that never
    entered the call, the call it did finish last, and the ranks waiting beside it."""
    out = run_ranks(_straggler_body, 4, mode="process", args=(hcomm.get_unique_id(),), timeout=60)
    last = out[0][0]
    assert all(o[0] == last for o in out)
    want = f"rank 3 did not reach #{last + 1} (its last was broadcast #{last}, finished)"
    for rank in range(3):
        msg = out[rank][1]
        assert "timed out" in msg and want in msg, msg
        _reached_too(msg, rank, last + 1)


def _reached_too(msg, rank, seq):
    """A rank that timed out itself lists the others that reached the call; one that a
    faster rank's abort reached first carries that rank's report instead."""
    if "gave up after an error" not in msg:
        others = ",".join(str(r) for r in range(3) if r != rank)
        assert f"ranks {others} reached #{seq} too" in msg, msg


@pytest.mark.parametrize("straggler_waits_in_hcomm", [True, False])
def test_timeout_progress_reaches_ranks_on_other_hosts(straggler_waits_in_hcomm):
    """Over tcp the ranks that are inside hcomm answer a progress query after a timeout;
    one that is not is named as not answering."""
    envs = [{"HCOMM_HOST_ID": f"progress-host{r}"} for r in range(4)]
    out = run_ranks(_straggler_body, 4, mode="process", env=envs,  # every other rank on another host
                    args=(hcomm.get_unique_id(), straggler_waits_in_hcomm, {"tcp", "shm"}), timeout=60)
    last = out[0][0]
    for rank in range(3):
        msg = out[rank][1]
        assert "timed out" in msg, msg
        if straggler_waits_in_hcomm:
            assert f"rank 3 did not reach #{last + 1} (its last was broadcast #{last}, finished)" in msg, msg
        else:
            assert "rank 3 on other hosts did not answer (not inside an hcomm call)" in msg, msg
        _reached_too(msg, rank, last + 1)


def _unmatched_body(comm, done):
    comm.timeout = 1
    if comm.rank == 1:
        comm.send(np.ones(3), peer=0, tag=7)  # eager: lands in rank 0's queue, unmatched
        done.wait(30)  # stays connected until rank 0 has timed out (tcp reports a close first)
        return ""
    try:
        comm.recv(np.zeros(3), peer=1, tag=5)
    except hcomm.Error as e:
        return str(e)
    finally:
        done.set()
    return "no error"


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_timeout_says_what_the_transport_holds_for_the_peer(transport, monkeypatch):
    """A receive that times out while the peer's message sits unmatched (another tag)
    says so: the receive posted, and the message that arrived and was never received, so
    a lost message can be told apart from a mismatch or a peer that never sent."""
    monkeypatch.setenv("HCOMM_TRANSPORT", f"intra:{transport}")
    msg = run_comm(_unmatched_body, 2, args=(threading.Event(),))[0]  # ranks are threads here
    assert msg.startswith("recv from rank 1, tag 5 (24 bytes, over ")  # p2p calls are named by peer and tag
    assert "timed out waiting for receive from rank 1" in msg, msg
    m = re.search(r"\{" + transport + r" to rank 1: .*receives posted \[(\d+)\], unreceived \[(\d+)\]\}", msg)
    assert m and m.group(1) != m.group(2), msg
