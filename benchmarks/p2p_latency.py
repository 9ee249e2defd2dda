"""Point-to-point latency by posting pattern, through each layer, 2 ranks on shared memory.

    python benchmarks/p2p_latency.py                        # every api and pattern, 8 B .. 4 MiB
    python benchmarks/p2p_latency.py --apis array torch --sizes 8 4K --iters 200 --repeats 5

Patterns (all timed on rank 1, the receiver; one row per api x pattern x size):
  late   rank 0 posts a send, then both ranks pass a barrier; messages from one peer
         arrive in order, so when rank 1 leaves the barrier the message (or, above the
         rendezvous size, its descriptor) is in its inbound queue.  Timed: rank 1 posts the receive and waits for it.  A
         posted receive of an arrived message should cost a copy (microseconds).
  both   both ranks post a send and a receive at once and wait for both (an exchange).
         Timed: the whole exchange; per post = exchange / 2.
  early  ping-pong with every receive posted before the message can arrive (the pipeline
         Exchanger's pattern): rank 1 posts its next receive before it replies.  Timed: a
         round trip; per message = round trip / 2.

APIs:
  array  hcomm's own Communicator.send/recv(async_op=True) + Work.wait()
  torch  torch.distributed isend/irecv on the hcomm backend
  batch  torch.distributed batch_isend_irecv (one P2POp list per exchange; 'both' only)
  pg     ProcessGroup.send/recv straight on the group, as parallel/pipeline's Exchanger posts

Columns: us = median over the repeats of each repeat's median (microseconds), range =
min..max of the repeats' medians; `per` says what one number is (post or message).
The difference between array and torch isolates the torch backend's share.
"""
import argparse
import os
import queue
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PATTERNS = ("late", "both", "early")
APIS = ("array", "torch", "batch", "pg")


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


class ArrayOps:
    """Post/wait through hcomm's array API; `buf` is a numpy byte array."""

    def __init__(self, comm):
        self.comm = comm

    def send(self, buf, peer):
        return self.comm.send(buf, peer, async_op=True)

    def recv(self, buf, peer):
        return self.comm.recv(buf, peer, async_op=True)

    def barrier(self):
        self.comm.barrier()

    def exchange(self, sbuf, rbuf, peer):
        return [self.send(sbuf, peer), self.recv(rbuf, peer)]


class TorchOps:
    """Post/wait through torch.distributed on the hcomm backend (style: isend, batch or pg)."""

    def __init__(self, style):
        self.style = style
        self.pg = dist.group.WORLD

    def send(self, buf, peer):
        if self.style == "pg":
            return self.pg.send([buf], peer, 0)
        return dist.isend(buf, peer)

    def recv(self, buf, peer):
        if self.style == "pg":
            return self.pg.recv([buf], peer, 0)
        return dist.irecv(buf, peer)

    def barrier(self):
        dist.barrier()

    def exchange(self, sbuf, rbuf, peer):
        if self.style == "batch":
            ops = [dist.P2POp(dist.isend, sbuf, peer), dist.P2POp(dist.irecv, rbuf, peer)]
            return dist.batch_isend_irecv(ops)
        return [self.send(sbuf, peer), self.recv(rbuf, peer)]


def wait_all(works):
    for w in works:
        w.wait()


def time_late(ops, rank, sbuf, rbuf, iters):
    out = []
    for _ in range(iters):
        if rank == 0:
            w = ops.send(sbuf, 1)  # not waited yet: above the rendezvous size it waits for the receive
            ops.barrier()
            w.wait()
        else:
            ops.barrier()  # the message is in rank 1's queue once the barrier is passed
            t0 = time.perf_counter()
            ops.recv(rbuf, 0).wait()
            out.append(time.perf_counter() - t0)
    return out


def time_both(ops, rank, sbuf, rbuf, iters):
    out = []
    peer = 1 - rank
    for _ in range(iters):
        t0 = time.perf_counter()
        wait_all(ops.exchange(sbuf, rbuf, peer))
        out.append((time.perf_counter() - t0) / 2)  # two posts a rank
    return out


def time_early(ops, rank, sbuf, rbuf, iters):
    out = []
    peer = 1 - rank
    pending = ops.recv(rbuf, peer)  # posted before the first message can come
    ops.barrier()
    for i in range(iters):
        t0 = time.perf_counter()
        if rank == 0:
            ops.send(sbuf, peer).wait()
            pending.wait()
            if i + 1 < iters:
                pending = ops.recv(rbuf, peer)
        else:
            pending.wait()
            if i + 1 < iters:
                pending = ops.recv(rbuf, peer)  # the next ping's receive, before the pong
            ops.send(sbuf, peer).wait()
        out.append((time.perf_counter() - t0) / 2)  # a round trip is two messages
    return out


TIMERS = {"late": time_late, "both": time_both, "early": time_early}


def buffers(api, nbytes):
    if api == "array":
        import numpy as np

        return np.ones(nbytes, np.uint8), np.zeros(nbytes, np.uint8)
    return torch.ones(nbytes, dtype=torch.uint8), torch.zeros(nbytes, dtype=torch.uint8)


def rank_main(rank, args, port, uid, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import hcomm
    import hcomm.torch  # noqa: F401 - registers the backend

    dist.init_process_group("hcomm", rank=rank, world_size=2)
    comm = hcomm.init(rank, 2, uid)
    rows = []
    for api in args.apis:
        ops = ArrayOps(comm) if api == "array" else TorchOps({"torch": "isend"}.get(api, api))
        for pattern in args.patterns:
            if api == "batch" and pattern != "both":
                continue
            for nbytes in args.sizes:
                sbuf, rbuf = buffers(api, nbytes)
                TIMERS[pattern](ops, rank, sbuf, rbuf, max(2, args.iters // 10))  # warm-up
                meds = []
                for _ in range(args.repeats):
                    ops.barrier()
                    t = TIMERS[pattern](ops, rank, sbuf, rbuf, args.iters)
                    if t:
                        meds.append(statistics.median(t))
                if rank == 1:
                    rows.append((api, pattern, nbytes, meds))
    comm.close()
    dist.destroy_process_group()
    if rank == 1:
        results.put(rows)


def human(n):
    for unit, div in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def print_table(rows):
    per = {"late": "post", "both": "post", "early": "message"}
    print(f"{'api':<6} {'pattern':<7} {'bytes':>6} {'per':<8} {'us':>9}  range (us)")
    for api, pattern, nbytes, meds in rows:
        us = [m * 1e6 for m in meds]
        print(f"{api:<6} {pattern:<7} {human(nbytes):>6} {per[pattern]:<8} {statistics.median(us):9.1f}  "
              f"{min(us):.1f}..{max(us):.1f}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apis", nargs="+", choices=APIS, default=list(APIS))
    ap.add_argument("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS))
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=[8, 4 << 10, 64 << 10, 1 << 20, 4 << 20],
                    help="message sizes in bytes (suffix K or M)")
    ap.add_argument("--iters", type=int, default=100, help="timed messages per repeat")
    ap.add_argument("--repeats", type=int, default=5, help="repeats; the range is over their medians")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.repeats < 1:
        ap.error("--iters and --repeats must be >= 1")
    import hcomm

    uid = hcomm.get_unique_id()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=rank_main, args=(r, args, port, uid, results)) for r in range(2)]
    for p in procs:
        p.start()
    rows = None
    while rows is None:
        try:
            rows = results.get(timeout=5)
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                sys.exit(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
    for p in procs:
        p.join(60)
    print(f"# {' '.join(sys.argv)}  (load {os.getloadavg()[0]:.1f})")
    print_table(rows)


if __name__ == "__main__":
    main()
