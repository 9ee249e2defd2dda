"""Detect the job's machines: hcomm's topology (probe + fitted links) plus two numbers the
tuner's alpha-beta model does not hold, measured on the ranks themselves.

    together_s  one piece of compute on each rank while every rank computes at once: the
             cost model scales the profile's times by together_s over the same piece
             timed alone during the profile (time-sharing of cores and whatever else
             loads the machine, measured as it is now); share = together / alone now
    sync_s   what one blocking collective costs beyond the tuner's price when the ranks
             reach it straight from compute: on a machine with more ranks than cores a
             rank that finished early has gone to sleep, and the last one to arrive may
             be waiting for a core; this wake-up is the dominant cost of a small
             collective there (measured: ms, where the tuner prices tens of us). It
             grows with the compute before the collective (the ranks drift apart while
             they time-share), so it is measured after a long (~2 ms) and a short
             (~0.1 ms) piece, and Cluster.sync_after() interpolates between the two.

Measured with a numpy matmul loop on one thread per rank, in three phases: rank 0 alone
(the others sleep), every rank at once, every rank at once with an 8-byte allreduce
after each piece of compute; three samples of the three, medians throughout (the machine
may be shared). share = phase 2 / phase 1 per piece; sync_s = (phase 3 - phase 2) per
piece - the tuner's price of that allreduce, at least 0.

    python -m hcomm.parallel.plan.calibrate --np 4 --out cluster.json   # 4 local ranks
    torchrun ... python -m hcomm.parallel.plan.calibrate --out cluster.json   # the job's ranks
The output is a topology file (hcomm's dump format) with a "planner" section that
Cluster.from_file reads.
"""
import argparse
import json
import os
import statistics
import sys
import time

PIECE_REPS = 200     # matmuls in one piece of compute (about 2 ms on one core here)
SHORT_REPS = 10      # a short piece (about 0.1 ms): the wake-up after little compute
ROUNDS = 15
ALONE_WINDOW_S = 0.3  # what the other ranks sleep while rank 0 computes alone


def _compute(n):
    import numpy as np

    a = np.ones((96, 96), np.float32)
    for _ in range(n):
        a = (a @ a) * 1e-3
    return a


def piece_seconds(rounds=ROUNDS):
    """One piece alone, median: the profile records it too, so that profile times taken
    on a differently loaded machine can be rescaled to now (cost.py)."""
    return _timed(lambda: _compute(PIECE_REPS), rounds)


def _timed(fn, rounds, pick=statistics.median):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return pick(times)


def _phases(comm, reps, tiny):
    """One (alone, together, synced) sample, each the median seconds of a piece."""
    import numpy as np

    comm.barrier()
    if comm.rank == 0:
        alone = _timed(lambda: _compute(reps), ROUNDS)
    else:                      # sleep, not a collective: a waiting rank spins at first
        time.sleep(ALONE_WINDOW_S)
        alone = 0.0
    comm.barrier()
    together = _timed(lambda: _compute(reps), ROUNDS)
    comm.barrier()

    def piece_and_allreduce():
        _compute(reps)
        comm.allreduce(tiny)
    synced = _timed(piece_and_allreduce, ROUNDS)
    out = np.array([alone, together, synced])
    comm.allreduce(out, op="max")
    return out


def measure(comm, samples=3):
    """Every rank calls; returns the medians of `samples` rounds of the three phases, the
    slowest rank's view, for a long and a short piece of compute:
    {"share", "sync_s", "piece_s", "together_s", "sync_short_s", "together_short_s"}."""
    import numpy as np

    from hcomm.topology import explain

    tiny = np.zeros(2, np.float32)
    predicted = explain("allreduce", 8, comm=comm)
    price = predicted.candidate(predicted.chosen).seconds
    out = {}
    for reps, suffix in ((PIECE_REPS, ""), (SHORT_REPS, "_short")):
        rows = np.array([_phases(comm, reps, tiny) for _ in range(samples)])
        alone, together, synced = np.median(rows, axis=0)
        out["sync" + suffix + "_s"] = max(0.0, float(synced - together) - price)
        out["together" + suffix + "_s"] = float(together)
        if not suffix:
            out["share"], out["piece_s"] = max(1.0, float(together / alone)), float(alone)
    return out


def _report(comm):
    from hcomm.topology import topology

    topo = topology(comm)
    cal = measure(comm)
    comm.barrier()
    if comm.rank == 0:
        topo["planner"] = dict(cal, cores=os.cpu_count() or 1)
        return topo
    return None


def _local_rank(rank, size, uid, out):
    import hcomm

    comm = hcomm.init(rank=rank, size=size, unique_id=uid)
    try:
        topo = _report(comm)
    finally:
        comm.close()
    if topo is not None:
        out.put(json.dumps(topo))


def run_local(np_):
    """Start np_ ranks on this machine; the topology dict with its "planner" section."""
    import multiprocessing as mp

    import hcomm

    uid = hcomm.get_unique_id()
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_local_rank, args=(r, np_, uid, out)) for r in range(np_)]
    for p in procs:
        p.start()
    text = out.get(timeout=300)
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"calibration ranks failed with exit codes {[p.exitcode for p in procs]}")
    return json.loads(text)


def main(argv=None):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ap = argparse.ArgumentParser(prog="python -m hcomm.parallel.plan.calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--np", type=int, default=1, help="local ranks (ignored under a launcher)")
    ap.add_argument("--out", help="write the topology file here (default: print it)")
    args = ap.parse_args(argv)
    from hcomm.launch import detect_rank_size

    _, size = detect_rank_size()
    if size > 1:
        import hcomm

        comm = hcomm.init()
        try:
            topo = _report(comm)
        finally:
            comm.close()
    else:
        if args.np < 1:
            raise SystemExit(f"--np must be >= 1, got {args.np}")
        topo = run_local(args.np)
    if topo is None:
        return 0
    text = json.dumps(topo, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
