"""The NCCL transport's own logic, run on a machine with no GPU.

tests/fake_cuda/ holds host-memory stand-ins for libcudart and libnccl (streams are
worker threads, events count, send/recv match in order per pair; fake_device.py builds
them). hcomm loads them through HCOMM_CUDART_LIB / HCOMM_NCCL_LIB, so the real transport
code runs: the pair
communicators made by ncclCommSplit, the header + payload protocol, messages that
arrive before their receive (staged), zero-byte messages, size mismatches, timeouts and
abort. What it cannot check: real kernels, real NCCL timing, device memory.
"""
import os
import subprocess
import sys
import textwrap

import fake_device


# Ranks are threads of one subprocess, each on its own fake device (hcomm keeps the first
# NCCL it loads for the life of the process; the fakes' multi-process side is covered by
# tests/test_fake_cuda.py).
_SCRIPT = r"""
import os, sys, threading
import numpy as np
import hcomm
from hcomm import _C
sys.path.insert(0, os.environ["TESTS_DIR"])
import fake_device as fd

cuda = fd.FakeCuda()  # HCOMM_CUDART_LIB: the runtime hcomm loads, one copy

def dev(host, rank):  # fake device memory on the rank's own device, as NCCL needs
    return fd.DeviceArray.from_numpy(np.asarray(host, dtype=np.float32), device=rank, cuda=cuda)

SIZE = 3
uid = _C.nccl_unique_id([])
errors = []

def payload(src, dst, tag, n):
    return np.random.default_rng(1000 * src + 10 * dst + tag).standard_normal(n).astype(np.float32)

def body(rank):
    comm = _C.NcclComm(rank, SIZE, uid, rank, 3.0, [])
    right, left = (rank + 1) % SIZE, (rank - 1) % SIZE
    sends = [(1, 1001), (2, 17), (3, 0)]   # (tag, elements): large, odd, empty
    keep = []

    def sender():
        for tag, n in sends:
            x = dev(payload(rank, right, tag, n), rank)
            keep.append(x)
            comm.send(x.ptr, x.nbytes, right, tag)

    t = threading.Thread(target=sender)
    t.start()
    # Receive in the reverse order: tags 1 and 2 arrive first and wait staged.
    for tag, n in reversed(sends):
        got = dev(np.full(n, np.nan), rank)
        comm.recv(got.ptr, got.nbytes, left, tag)
        np.testing.assert_array_equal(got.to_numpy(), payload(left, rank, tag, n), err_msg=f"rank {rank} tag {tag}")
    t.join()

    # Every pair, both directions, once more (all 2(n-1) pair communicators).
    for peer in range(SIZE):
        if peer == rank:
            continue
        x = dev(payload(rank, peer, 5, 33), rank)
        th = threading.Thread(target=comm.send, args=(x.ptr, x.nbytes, peer, 5))
        th.start()
        got = dev(np.zeros(33), rank)
        comm.recv(got.ptr, got.nbytes, peer, 5)
        th.join()
        np.testing.assert_array_equal(got.to_numpy(), payload(peer, rank, 5, 33))

    # A size mismatch fails the receive with both sizes named; the link stays usable.
    if rank == 0:
        x = dev(np.zeros(2), rank)
        comm.send(x.ptr, 8, 1, 9)
        comm.send(x.ptr, 8, 1, 10)
    if rank == 1:
        buf = dev(np.zeros(4), rank)
        try:
            comm.recv(buf.ptr, 16, 0, 9)
        except hcomm.Error as e:
            assert "message size mismatch" in str(e) and "8 bytes" in str(e) and "16 bytes" in str(e), str(e)
        else:
            raise AssertionError("no size mismatch error")
        comm.recv(buf.ptr, 8, 0, 10)

    # Peers are checked before any byte moves.
    for bad in (rank, SIZE, -1):
        try:
            comm.send(keep[0].ptr, 4, bad, 0)
        except hcomm.Error as e:
            assert "not a peer" in str(e), str(e)
        else:
            raise AssertionError(f"no error for peer {bad}")

    # Nobody sends: the receive times out, the transport aborts, later calls say so.
    if rank == 2:
        buf = dev(np.zeros(1), rank)
        try:
            comm.recv(buf.ptr, 4, 0, 77)
        except hcomm.Error as e:
            assert "timed out" in str(e) and "rank 0" in str(e), str(e)
        else:
            raise AssertionError("no timeout")
        try:
            comm.send(buf.ptr, 4, 1, 78)
        except hcomm.Error as e:
            assert "timed out" in str(e), str(e)
        else:
            raise AssertionError("send after abort did not fail")

def run(rank):
    try:
        body(rank)
    except BaseException as e:
        import traceback
        errors.append(f"rank {rank}: " + traceback.format_exc())

threads = [threading.Thread(target=run, args=(r,)) for r in range(SIZE)]
for t in threads: t.start()
for t in threads: t.join(60)
assert not any(t.is_alive() for t in threads), "a rank hung"
assert not errors, "\n".join(errors)
print("OK")
"""


def test_nccl_transport_protocol_on_the_fake():
    env = fake_device.child_env(devices=3, TESTS_DIR=os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_SCRIPT)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
