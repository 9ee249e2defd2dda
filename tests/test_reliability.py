"""Reliability under faults and abuse (issue 11), each test bounded in time and printing
its figures (run with -s to see them; README "Reliability" quotes them):

- kill: a rank SIGKILLed at a random point of a stream of collectives; every survivor
  raises hcomm.Error within HCOMM_TIMEOUT + 2 s and its process exits on its own.
- fuzz: 10,000 seeded bad calls through the Python API raise a Python exception before
  any byte moves; the communicator still gives numpy-correct results afterwards.
- soak: 20,000 random collectives on 4 processes against numpy, 0 wrong, RSS flat.

Stranger connections and link cuts between simulated hosts: test_reliability_net.py.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import hcomm
import reference
from harness import run_comm

# ----------------------------------------------------------------------------- kill

KILL_TIMEOUT = 5.0   # HCOMM_TIMEOUT in the kill trials
SLACK = 2.0          # the bound: error within timeout + 2 s
EXIT_BOUND = 5.0     # a survivor's process exits on its own within this after its error

# One rank of a kill trial (python -c, so the process ends through a normal interpreter
# exit: a thread stuck at exit would show as a process that does not end). The victim
# SIGKILLs itself from a timer thread at a random moment while its main thread is inside
# the stream, stamping the moment first; survivors loop until hcomm.Error, then close.
KILL_WORKER = r"""
import json, os, random, signal, sys, threading, time
import numpy as np
import hcomm

rank, size, uid, seed, victim, delay, stamp = sys.argv[1:]
rank, size, seed, victim, delay = int(rank), int(size), int(seed), int(victim), float(delay)
threads_before = len(os.listdir("/proc/self/task"))
comm = hcomm.init(rank=rank, size=size, unique_id=uid)
if rank == victim:
    def die():
        with open(stamp, "w") as f:
            f.write(repr(time.monotonic()))
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Timer(delay, die).start()
rng = random.Random(seed)  # every rank draws the same stream
calls, t_err, msg = 0, None, None
try:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        kind = rng.choice(["allreduce", "allreduce", "broadcast", "allgather"])
        n = rng.choice([1, 7, 1000, 4097, 1 << 14, 1 << 17])
        x = np.full(n, rank + 1, np.float32)
        if kind == "allreduce":
            comm.allreduce(x, algo=rng.choice([None, "ring", "tree", "halving_doubling"]))
            assert x[0] == x[-1] == size * (size + 1) / 2, x[:4]
        elif kind == "broadcast":
            root = rng.randrange(size)
            comm.broadcast(x, root=root)
            assert x[0] == x[-1] == root + 1, (root, x[:4])
        else:
            out = np.empty(n * size, np.float32)
            comm.allgather(x, out)
            assert (out[::n] == np.arange(1, size + 1)).all(), out[::n]
        calls += 1
except hcomm.Error as e:
    t_err, msg = time.monotonic(), str(e)
t = time.monotonic()
comm.close()
close_s = time.monotonic() - t
print(json.dumps({"rank": rank, "calls": calls, "t_err": t_err, "msg": msg, "close_s": close_s,
                  "threads_left": len(os.listdir("/proc/self/task")) - threads_before}), flush=True)
"""


def _kill_trial(trial, size, tmp_path, tcp):
    rng = random.Random(1000 + trial)
    victim = rng.randrange(size)
    delay = rng.uniform(0.02, 0.3)
    stamp = str(tmp_path / f"killed{trial}")
    uid = hcomm.get_unique_id(timeout=30)
    procs = []
    for r in range(size):
        env = dict(os.environ, HCOMM_TIMEOUT=str(KILL_TIMEOUT), OMP_NUM_THREADS="1")
        if tcp:  # two simulated hosts, two ranks each: shm inside a host, tcp between them
            env["HCOMM_HOST_ID"] = f"killhost{r * 2 // size}"
        argv = [sys.executable, "-c", KILL_WORKER, str(r), str(size), uid, str(trial), str(victim), str(delay), stamp]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    # Survivors must be done by: the kill (at most ~init + delay) + timeout + slack + exit.
    deadline = time.monotonic() + 10 + KILL_TIMEOUT + SLACK + EXIT_BOUND
    outs = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            outs.append((p.returncode, so, se))
        except subprocess.TimeoutExpired:
            p.kill()
            so, se = p.communicate()
            outs.append(("hung", so, se))
    where = f"trial {trial} ({'tcp+shm' if tcp else 'shm'}, {size} ranks, rank {victim} killed after {delay:.2f} s)"
    assert outs[victim][0] == -signal.SIGKILL, f"{where}: the victim was not killed: {outs[victim]}"
    killed_at = float(open(stamp).read())
    survivors = []
    for r, (rc, so, se) in enumerate(outs):
        if r == victim:
            continue
        assert rc == 0, f"{where}: survivor rank {r} ended with {rc}\n{so}\n{se[-3000:]}"
        rep = json.loads(so.strip().splitlines()[-1])
        assert rep["msg"] is not None, f"{where}: rank {r} never raised ({rep['calls']} calls)"
        survivors.append((r, rep))
    return where, victim, killed_at, survivors


def test_killed_rank_every_survivor_raises_in_time(tmp_path):
    trials, worst, total, worst_close = 50, 0.0, 0, 0.0
    started = time.monotonic()
    for trial in range(trials):
        tcp = trial % 5 == 4  # every fifth trial over tcp between two simulated hosts
        size = 4 if trial % 2 == 0 else 3
        where, victim, killed_at, survivors = _kill_trial(trial, size, tmp_path, tcp)
        for r, rep in survivors:
            elapsed = rep["t_err"] - killed_at
            msg = rep["msg"]
            assert -0.05 < elapsed < KILL_TIMEOUT + SLACK, f"{where}: rank {r} raised after {elapsed:.2f} s: {msg}"
            # names the collective and its sequence number, and a rank it lost
            assert any(f"{op} #" in msg for op in ("allreduce", "broadcast", "allgather")), f"{where}: {msg}"
            assert "rank " in msg and ("has exited" in msg or "timed out" in msg or "failed" in msg), msg
            assert rep["close_s"] < 2.0, f"{where}: rank {r}'s close() took {rep['close_s']:.2f} s"
            assert rep["threads_left"] <= 0, f"{where}: rank {r} left {rep['threads_left']} threads after close"
            worst = max(worst, elapsed)
            worst_close = max(worst_close, rep["close_s"])
            # Every survivor names the killed rank, also one that was waiting on another
            # survivor: a rank that gives up tells its peers why (shm segment, tcp notice).
            assert f"rank {victim} " in msg, f"{where}: rank {r} does not name rank {victim}: {msg}"
            total += 1
    print(f"\n[reliability] kill: {trials} trials (3-4 ranks; {trials // 5} over tcp+shm), HCOMM_TIMEOUT "
          f"{KILL_TIMEOUT:.0f} s: 0 hangs, max time from SIGKILL to hcomm.Error {worst:.2f} s "
          f"(bound {KILL_TIMEOUT + SLACK:.0f} s), max close() {worst_close:.3f} s, every survivor exited 0; "
          f"{total}/{total} survivors named the killed rank; {time.monotonic() - started:.0f} s")


# ----------------------------------------------------------------------------- fuzz

BAD_DTYPES = ["complex64", "complex128", "object", "U3", "S3", "int16", "uint16", "uint32", "uint64",
              "longdouble", "datetime64[s]", ">f4", "f4,i4"]
# (bytes would be a valid read-only input: only refused where hcomm writes, see _readonly)
NOT_ARRAYS = ["abc", None, [1.0, 2.0], 3, 2.5, {}, (1, 2), object()]
BAD_RANKS = [-1, -(2 ** 31), 2, 7, 2 ** 31, 2 ** 63, 2 ** 70, "0", None, 0.0, 1.5, [0]]
BAD_OPS = ["xor", "", "summ", "avg ", 5, None, 3.2, ["sum"], "bor"]
BAD_ALGOS = ["magic", "", "RING", "ring ", 5, ["ring"], "pairwise"]
BAD_TAGS = [-1, -(2 ** 40), 2 ** 31, 2 ** 64, "0", None, 1.5]
BAD_COUNTS = [None, "ab", 7, [1], [1, 2, 3], [-1, 5], [2.5, 1.5], ["2", "2"], [2 ** 62, 2 ** 62], [2 ** 70, 0],
              [None, None]]
# locally consistent for alltoallv (only a mismatch across ranks): bad for the v-collectives
# whose own counts they contradict
BAD_OWN_COUNTS = BAD_COUNTS + [[4, 0], [0, 4]]
BAD_KEYS = ["k", 1.5, [1], 2.0, "0"]
BAD_TIMEOUTS = [-1, 0, float("nan"), float("inf"), "abc", None, [3]]


def _arr(rng, n=None, dtype=None):
    n = rng.choice([1, 2, 3, 4, 8, 17]) if n is None else n
    return np.arange(n, dtype=dtype or rng.choice(["float32", "float64", "int32", "uint8", "int64"]))


def _bad_array(rng, n=None):
    """Something hcomm cannot use as an array, and what is wrong with it."""
    kind = rng.randrange(5)
    n = n or rng.choice([4, 6, 8])
    if kind == 0:
        return rng.choice(NOT_ARRAYS), "not an array"
    if kind == 1:
        dt = rng.choice(BAD_DTYPES)
        return np.zeros(n, dtype=dt), f"dtype {dt}"
    if kind == 2:
        a = np.arange(2 * n, dtype=np.float32)
        return (a[::2] if rng.random() < 0.5 else a.reshape(2, n).T), "non-contiguous"
    if kind == 3:
        t = rng.randrange(3)
        if t == 0:
            return torch.ones(n, n).t(), "non-contiguous tensor"
        if t == 1:
            return torch.ones(n, dtype=torch.complex64), "complex tensor"
        return torch.ones(n, device="meta"), "meta tensor"
    return np.zeros(n, np.float32).tolist(), "list"


def _readonly(n, dtype="float32"):
    a = np.zeros(n, dtype)
    a.setflags(write=False)
    return a


def _fuzz_call(rng, size):
    """(description, fn(comm)) of a call that is wrong on every rank alike."""
    n = rng.choice([2, 4, 6])
    cases = []
    bad, why = _bad_array(rng, n)
    cases += [
        (f"allreduce({why})", lambda c: c.allreduce(bad)),
        (f"allreduce(out={why})", lambda c: c.allreduce(np.zeros(n, np.float32), out=bad if bad is not None else "abc")),
        (f"broadcast({why})", lambda c: c.broadcast(bad, root=0)),
        (f"allgather({why})", lambda c: c.allgather(bad, np.zeros(n * size, np.float32))),
        (f"allgather(out={why})", lambda c: c.allgather(np.zeros(n, np.float32), bad)),
        (f"reduce_scatter(out={why})", lambda c: c.reduce_scatter(np.zeros(n * size, np.float32), bad)),
        (f"alltoall({why})", lambda c: c.alltoall(bad, np.zeros(n, np.float32))),
        (f"send({why})", lambda c: c.send(bad, (c.rank + 1) % c.size)),
        (f"recv({why})", lambda c: c.recv(bad, (c.rank + 1) % c.size)),
        (f"scatter(out={why})", lambda c: c.scatter(np.zeros(n * size, np.float32), bad, root=0)),
        (f"gather({why})", lambda c: c.gather(bad, np.zeros(n * size, np.float32), root=0)),
        (f"reduce({why})", lambda c: c.reduce(bad, root=0)),
    ]
    x = _arr(rng, n)
    d2 = "float64" if x.dtype != np.float64 else "float32"
    m = n + rng.choice([-1, 1, 3])
    cases += [
        ("allreduce(read-only in place)", lambda c: c.allreduce(_readonly(n))),
        ("allreduce(read-only out)", lambda c: c.allreduce(x, out=_readonly(n, x.dtype))),
        ("allreduce(size mismatch)", lambda c: c.allreduce(x, out=np.zeros(m, x.dtype))),
        ("allreduce(dtype mismatch)", lambda c: c.allreduce(x, out=np.zeros(n, d2))),
        ("broadcast(read-only)", lambda c: c.broadcast(_readonly(n), root=0)),
        ("broadcast(read-only out)", lambda c: c.broadcast(x, root=0, out=_readonly(n, x.dtype))),
        ("allgather(size mismatch)", lambda c: c.allgather(x, np.zeros(m * size, x.dtype))),
        ("allgather(dtype mismatch)", lambda c: c.allgather(x, np.zeros(n * size, d2))),
        ("allgather(out None)", lambda c: c.allgather(x, None)),
        ("reduce_scatter(size mismatch)", lambda c: c.reduce_scatter(np.zeros(n * size + 1, x.dtype), np.zeros(n, x.dtype))),
        ("alltoall(indivisible)", lambda c: c.alltoall(np.zeros(size * n + 1), np.zeros(size * n + 1))),
        ("alltoall(size mismatch)", lambda c: c.alltoall(np.zeros(size * n), np.zeros(size * m))),
        ("scatter(read-only out)", lambda c: c.scatter(np.zeros(n * size, np.float32), _readonly(n), root=0)),
        ("recv(read-only)", lambda c: c.recv(_readonly(n), (c.rank + 1) % c.size)),
    ]
    root, op, algo, tag = rng.choice(BAD_RANKS), rng.choice(BAD_OPS), rng.choice(BAD_ALGOS), rng.choice(BAD_TAGS)
    counts, own, timeout = rng.choice(BAD_COUNTS), rng.choice(BAD_OWN_COUNTS), rng.choice(BAD_TIMEOUTS)
    key = rng.choice(BAD_KEYS)
    f32 = lambda k: np.zeros(k, np.float32)  # noqa: E731
    cases += [
        (f"broadcast(root={root!r})", lambda c: c.broadcast(f32(n), root=root)),
        (f"reduce(root={root!r})", lambda c: c.reduce(f32(n), root=root)),
        (f"gather(root={root!r})", lambda c: c.gather(f32(n), f32(n * size), root=root)),
        (f"scatter(root={root!r})", lambda c: c.scatter(f32(n * size), f32(n), root=root)),
        (f"send(peer={root!r})", lambda c: c.send(f32(n), root)),
        (f"recv(peer={root!r})", lambda c: c.recv(f32(n), root if root is not None else size)),
        (f"send(tag={tag!r})", lambda c: c.send(f32(n), (c.rank + 1) % c.size, tag=tag)),
        (f"recv(tag={tag!r})", lambda c: c.recv(f32(n), (c.rank + 1) % c.size, tag=tag)),
        (f"allreduce(op={op!r})", lambda c: c.allreduce(f32(n), op=op)),
        (f"reduce(op={op!r})", lambda c: c.reduce(f32(n), root=0, op=op)),
        (f"reduce_scatter(op={op!r})", lambda c: c.reduce_scatter(f32(n * size), f32(n), op=op)),
        (f"allreduce(algo={algo!r})", lambda c: c.allreduce(f32(n), algo=algo)),
        ("allreduce(bool, avg)", lambda c: c.allreduce(np.ones(n, bool), op="avg")),
        ("allreduce(bool, premul_sum)", lambda c: c.allreduce(np.ones(n, bool), op="premul_sum", factor=2)),
        ("reduce_scatter(bool, avg)", lambda c: c.reduce_scatter(np.ones(n * size, bool), np.ones(n, bool), op="avg")),
        ("allreduce(premul_sum, no factor)", lambda c: c.allreduce(f32(n), op="premul_sum")),
        ("allreduce(factor='abc')", lambda c: c.allreduce(f32(n), op="premul_sum", factor="abc")),
        ("allreduce(async_op='yes')", lambda c: c.allreduce(f32(n), async_op="yes")),
        ("barrier(async_op=[1])", lambda c: c.barrier(async_op=[1])),
        (f"allgatherv(counts={own!r})", lambda c: c.allgatherv(f32(2), f32(2 * size), own)),
        (f"reduce_scatterv(counts={own!r})", lambda c: c.reduce_scatterv(f32(2 * size), f32(2), own)),
        (f"alltoallv(send_counts={counts!r})", lambda c: c.alltoallv(f32(4), f32(4), counts, [2] * size)),
        (f"alltoallv(recv_counts={counts!r})", lambda c: c.alltoallv(f32(4), f32(4), [2] * size, counts)),
        (f"alltoallv(send_displs={own!r})",  # (None: the default displacements, fine)
         lambda c: c.alltoallv(f32(4), f32(4), [2] * size, [2] * size, own if own is not None else "ab")),
        ("alltoallv(counts past the end)", lambda c: c.alltoallv(f32(4), f32(4), [2, 3], [2, 2])),
        (f"split(color={root!r})", lambda c: c.split(root if not isinstance(root, int) else "x")),
        (f"split(key={key!r})", lambda c: c.split(0, key=key)),
        (f"timeout = {timeout!r}", lambda c: setattr(c, "timeout", timeout)),
    ]
    return rng.choice(cases)


ALLOWED = (hcomm.InvalidArgument, TypeError, ValueError)


def _fuzz_body(comm, calls, seed):
    rng = random.Random(seed)  # both ranks make the same calls: a call wrongly accepted still matches
    accepted, kinds = [], set()
    comm.barrier()
    before = comm.flight_record()["entries"][-1]
    for i in range(calls):
        what, call = _fuzz_call(rng, comm.size)
        kinds.add(what.split("(")[0])
        try:
            call(comm)
        except ALLOWED as e:
            if not str(e):
                accepted.append(f"#{i} {what}: {type(e).__name__} without a message")
            continue
        except hcomm.Error as e:  # an error from the core means bytes started moving
            accepted.append(f"#{i} {what}: raised by the core, not refused up front: {e}")
            continue
        accepted.append(f"#{i} {what}: accepted")
    assert comm.timeout > 0
    # nothing reached the core: the last call it recorded is still the barrier above
    last = comm.flight_record()["entries"][-1]
    assert last == before, (accepted[:10], before, last)
    # the communicator is intact: numpy-correct results after all that
    x = np.arange(1000, dtype=np.float64) * (comm.rank + 1)
    comm.allreduce(x)
    np.testing.assert_array_equal(x, np.arange(1000) * sum(range(1, comm.size + 1)))
    out = np.empty(8 * comm.size, np.int32)
    comm.allgather(np.full(8, comm.rank, np.int32), out)
    np.testing.assert_array_equal(out, np.repeat(np.arange(comm.size), 8))
    y = np.full(5, comm.rank, np.int64)
    comm.broadcast(y, root=comm.size - 1)
    np.testing.assert_array_equal(y, np.full(5, comm.size - 1))
    return accepted, len(kinds)


def _closed_body(calls, seed):
    comm = hcomm.init(rank=0, size=1)
    comm.close()
    rng = random.Random(seed)
    wrong = []
    good = [lambda c: c.allreduce(np.ones(4)), lambda c: c.barrier(), lambda c: c.broadcast(np.ones(3), root=0),
            lambda c: c.allgather(np.ones(2), np.ones(2)), lambda c: c.send(np.ones(2), 0),
            lambda c: c.split(0)]
    for i in range(calls):
        if i % 2:
            what, call = "valid call", rng.choice(good)
        else:
            what, call = _fuzz_call(rng, 1)
        try:
            call(comm)
        except ALLOWED:
            continue
        except hcomm.Error as e:
            if "closed" not in str(e):
                wrong.append(f"{what} on a closed communicator: {e}")
            continue
        wrong.append(f"{what} on a closed communicator was accepted")
    return wrong


def test_fuzzed_bad_calls_are_refused_and_nothing_breaks():
    t = time.monotonic()
    calls, closed_calls = 9000, 1000
    results = run_comm(_fuzz_body, 2, args=(calls, 11), timeout=120)
    closed_wrong = _closed_body(closed_calls, 12)
    for accepted, _ in results:
        assert not accepted, f"{len(accepted)} bad calls not refused up front:\n" + "\n".join(accepted[:20])
    assert not closed_wrong, "\n".join(closed_wrong[:20])
    print(f"\n[reliability] fuzz: {calls + closed_calls} bad calls ({calls} on each rank of a 2-rank world, "
          f"{results[0][1]} call kinds; {closed_calls} on a closed communicator): 0 crashes, 0 accepted, "
          f"correct collectives afterwards; {time.monotonic() - t:.1f} s")


# ----------------------------------------------------------------------------- soak

SOAK_DTYPES = ["float32", "float64", "float16", "int32", "int64", "int8", "uint8", "bool"]
SOAK_SIZES = [0, 1, 2, 3, 7, 31, 100, 257, 1000, 4097, 20001]


def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def _soak_step(comm, rng, step):
    """One random collective, drawn identically on every rank, checked against numpy.
    Returns its name."""
    size, rank = comm.size, comm.rank
    kind = rng.choice(["allreduce"] * 4 + ["broadcast", "allgather", "reduce_scatter", "alltoall", "reduce",
                                           "gather", "scatter", "barrier", "sendrecv", "allgatherv"])
    dtype = rng.choice(SOAK_DTYPES)
    n = rng.choice(SOAK_SIZES)
    op = rng.choice(reference.ops_for(dtype))
    root = rng.randrange(size)
    factor = reference.premul(dtype) if op == "premul_sum" else None
    what = f"#{step} {kind}({dtype}, n={n}, op={op}, root={root})"
    mine = lambda r, k=n, o="sum": reference.make(dtype, k, r, step, o)  # noqa: E731

    if kind == "allreduce":
        algo = rng.choice([None, "ring", "tree", "halving_doubling"])
        x = mine(rank, n, op)
        comm.allreduce(x, op=op, algo=algo, factor=factor)
        reference.check(x, reference.reduce_ref([mine(r, n, op) for r in range(size)], op, dtype), dtype, size,
                        f"{what} algo={algo}")
    elif kind == "reduce":
        x = mine(rank, n, op)
        comm.reduce(x, root=root, op=op, factor=factor)
        if rank == root:
            reference.check(x, reference.reduce_ref([mine(r, n, op) for r in range(size)], op, dtype), dtype,
                            size, what)
    elif kind == "reduce_scatter":
        x = mine(rank, n * size, op)
        out = np.empty(n, dtype)
        comm.reduce_scatter(x, out, op=op, factor=factor)
        full = reference.reduce_ref([mine(r, n * size, op) for r in range(size)], op, dtype)
        reference.check(out, full[rank * n:(rank + 1) * n], dtype, size, what)
    elif kind == "broadcast":
        x = mine(rank)
        comm.broadcast(x, root=root)
        np.testing.assert_array_equal(x, mine(root), err_msg=what)
    elif kind == "allgather":
        out = np.empty(n * size, dtype)
        comm.allgather(mine(rank), out)
        np.testing.assert_array_equal(out, np.concatenate([mine(r) for r in range(size)]), err_msg=what)
    elif kind == "allgatherv":
        counts = [rng.choice([0, 1, 5, n]) for _ in range(size)]
        out = np.empty(sum(counts), dtype)
        comm.allgatherv(mine(rank, counts[rank]), out, counts)
        np.testing.assert_array_equal(out, np.concatenate([mine(r, counts[r]) for r in range(size)]), err_msg=what)
    elif kind == "alltoall":
        out = np.empty(n * size, dtype)
        comm.alltoall(mine(rank, n * size), out)
        expect = np.concatenate([mine(r, n * size)[rank * n:(rank + 1) * n] for r in range(size)])
        np.testing.assert_array_equal(out, expect, err_msg=what)
    elif kind == "gather":
        out = np.empty(n * size, dtype) if rank == root else None
        comm.gather(mine(rank), out, root=root)
        if rank == root:
            np.testing.assert_array_equal(out, np.concatenate([mine(r) for r in range(size)]), err_msg=what)
    elif kind == "scatter":
        out = np.empty(n, dtype)
        comm.scatter(mine(root, n * size) if rank == root else None, out, root=root)
        np.testing.assert_array_equal(out, mine(root, n * size)[rank * n:(rank + 1) * n], err_msg=what)
    elif kind == "barrier":
        comm.barrier()
    else:  # one random pair exchanges both ways; the others sit this one out
        a, b = rng.sample(range(size), 2)
        tag = rng.randrange(1 << 20)
        if rank in (a, b):
            peer = b if rank == a else a
            got = np.empty(n, dtype)
            w = comm.recv(got, peer=peer, tag=tag, async_op=True)
            comm.send(mine(rank), peer=peer, tag=tag)
            w.wait()
            np.testing.assert_array_equal(got, mine(peer), err_msg=what)
    return kind


def _soak_body(comm, calls, warmup, seed):
    rng = random.Random(seed)
    counts = {}
    rss_warm = None
    t = time.monotonic()
    for step in range(calls):
        if step == warmup:
            rss_warm = _rss_kib()
        kind = _soak_step(comm, rng, step)
        counts[kind] = counts.get(kind, 0) + 1
    return counts, rss_warm, _rss_kib(), time.monotonic() - t


def test_soak_random_collectives_against_numpy():
    calls = int(os.environ.get("HCOMM_SOAK_CALLS", "20000"))
    warmup = min(2000, calls // 10)
    t = time.monotonic()
    results = run_comm(_soak_body, 4, mode="process", args=(calls, warmup, 2024), timeout=170)
    growth = [(end - warm) / warm * 100 for _, warm, end, _ in results]
    for r, (counts, warm, end, _) in enumerate(results):
        assert sum(counts.values()) == calls
        assert (end - warm) / warm < 0.05, f"rank {r}: VmRSS {warm} KiB after {warmup} calls, {end} KiB at the end"
    counts = results[0][0]
    print(f"\n[reliability] soak: {calls} random collectives on 4 processes, 0 wrong "
          f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); VmRSS growth after a {warmup}-call "
          f"warm-up: max {max(growth):+.2f} % ({results[0][1] / 1024:.0f} MiB per rank); "
          f"{time.monotonic() - t:.0f} s")
