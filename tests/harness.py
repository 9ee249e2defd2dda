"""Run one function on N ranks, as threads (fast) or processes (isolation, failures).

Every rank's traceback travels back to the test; a skip on any rank skips the test;
a rank that does not finish within `timeout` fails the test naming it.

    results = run_ranks(fn, 4)                  # fn(rank, world_size, *args) on 4 threads
    results = run_ranks(fn, 3, mode="process")  # forked processes
    run_comm(fn, 5)                             # fn(comm, *args) with an hcomm Communicator
    run_torch(fn, 2)                            # fn(rank, world_size, *args) after init_process_group("hcomm")
"""
import multiprocessing as mp
import os
import queue
import socket
import subprocess
import sys
import threading
import traceback

import pytest

DEFAULT_TIMEOUT = float(os.environ.get("HCOMM_TEST_TIMEOUT", "120"))


class RankFailure(AssertionError):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_scripts(n, code, env, timeout, argv=None, what=""):
    """`python -c code` (or `python *argv` when argv is given) as n ranks the way torchrun
    starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), with the test's own
    HCOMM_/SLURM_/OMPI_ settings left out and `env` added. Returns (returncode, stdout,
    stderr) per rank; a rank still running after `timeout` seconds kills them all and fails
    the test with `what` and every rank's last stderr lines (where each one stopped)."""
    port = free_port()
    cmd = [sys.executable, *argv] if argv is not None else [sys.executable, "-c", code]
    procs = []
    for r in range(n):
        full = {k: v for k, v in os.environ.items() if not k.startswith(("HCOMM_", "SLURM_", "OMPI_"))}
        full.update(RANK=str(r), WORLD_SIZE=str(n), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port), OMP_NUM_THREADS="1", **env)
        procs.append(subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            tails = [q.communicate()[1][-800:] for q in procs]
            pytest.fail(f"a rank hung (no exit within {timeout} s) {what}\n" +
                        "\n".join(f"rank {r}: ...{t}" for r, t in enumerate(tails)))
        results.append((p.returncode, out, err))
    return results


def _call(fn, rank, world_size, args, kwargs, out):
    try:
        out.put((rank, "ok", fn(rank, world_size, *args, **kwargs)))
    except pytest.skip.Exception as e:
        out.put((rank, "skip", str(e)))
    except BaseException:  # noqa: BLE001 - relayed to the test
        out.put((rank, "error", traceback.format_exc()))


def _proc_entry(fn, rank, world_size, args, kwargs, out, env):
    os.environ.update(env or {})
    _call(fn, rank, world_size, args, kwargs, out)


def _collect(out, world_size, timeout, alive):
    """Gather one report per rank; fail naming the ranks that never reported."""
    reports = {}
    deadline = timeout
    import time

    end = time.monotonic() + deadline
    while len(reports) < world_size:
        left = end - time.monotonic()
        if left <= 0:
            break
        try:
            rank, status, value = out.get(timeout=min(left, 0.5))
            reports[rank] = (status, value)
        except queue.Empty:
            dead = [r for r in range(world_size) if r not in reports and not alive(r)]
            if dead and all(r in reports or not alive(r) for r in range(world_size)):
                break
    return reports


def _judge(reports, world_size, timeout):
    errors = [f"--- rank {r} ---\n{v}" for r, (s, v) in sorted(reports.items()) if s == "error"]
    missing = [r for r in range(world_size) if r not in reports]
    if errors:
        raise RankFailure("\n".join(errors) + (f"\nranks that never finished: {missing}" if missing else ""))
    if missing:
        raise RankFailure(f"ranks {missing} did not finish within {timeout:.0f} s")
    skips = [v for s, v in reports.values() if s == "skip"]
    if skips:
        pytest.skip(skips[0])
    return [reports[r][1] for r in range(world_size)]


def run_ranks(fn, world_size, *, mode="thread", timeout=DEFAULT_TIMEOUT, args=(), kwargs=None,
              env=None, start_method="fork"):
    kwargs = kwargs or {}
    if mode == "thread":
        out = queue.Queue()
        threads = [threading.Thread(target=_call, args=(fn, r, world_size, args, kwargs, out), daemon=True)
                   for r in range(world_size)]
        for t in threads:
            t.start()
        reports = _collect(out, world_size, timeout, lambda r: threads[r].is_alive())
        return _judge(reports, world_size, timeout)
    if mode != "process":
        raise ValueError(f"mode must be 'thread' or 'process', got {mode!r}")
    ctx = mp.get_context(start_method)
    out = ctx.Queue()
    envs = env if isinstance(env, list) else [env] * world_size
    procs = [ctx.Process(target=_proc_entry, args=(fn, r, world_size, args, kwargs, out, envs[r]), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    try:
        reports = _collect(out, world_size, timeout, lambda r: procs[r].is_alive())
        for r, p in enumerate(procs):
            if r not in reports and not p.is_alive() and p.exitcode:
                reports[r] = ("error", f"process exited with code {p.exitcode}")
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return _judge(reports, world_size, timeout)


def _comm_body(rank, world_size, fn, uid, args, kwargs):
    import hcomm

    comm = hcomm.init(rank=rank, size=world_size, unique_id=uid)
    try:
        return fn(comm, *args, **kwargs)
    finally:
        comm.close()


def run_comm(fn, world_size, *, mode="thread", timeout=DEFAULT_TIMEOUT, args=(), kwargs=None, env=None,
             start_method="fork"):
    """Run fn(comm, *args) on world_size ranks, each with an initialised hcomm Communicator.
    start_method="spawn" for ranks that must not inherit this process's loaded libraries
    (a CUDA runtime chosen once per process, e.g. the fake GPU's)."""
    import hcomm

    uid = hcomm.get_unique_id()
    return run_ranks(_comm_body, world_size, mode=mode, timeout=timeout,
                     args=(fn, uid, args, kwargs or {}), env=env, start_method=start_method)


def _torch_body(rank, world_size, fn, backend, port, args, kwargs):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    if backend == "hcomm":
        import hcomm.torch  # noqa: F401 - registers the backend
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        return fn(rank, world_size, *args, **kwargs)
    finally:
        dist.destroy_process_group()


def torch_test_backend():
    """Backend for torch.distributed tests: HCOMM_TEST_BACKEND, else hcomm (the backend shipped here;
    tests that prove backend independence name "gloo" explicitly)."""
    return os.environ.get("HCOMM_TEST_BACKEND", "hcomm")


def run_torch(fn, world_size, *, backend=None, timeout=DEFAULT_TIMEOUT, args=(), kwargs=None):
    """Run fn(rank, world_size, *args) in spawned processes after init_process_group(backend)."""
    backend = backend or torch_test_backend()
    return run_ranks(_torch_body, world_size, mode="process", timeout=timeout, start_method="spawn",
                     args=(fn, backend, free_port(), args, kwargs or {}))
