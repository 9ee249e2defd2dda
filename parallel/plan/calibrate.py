"""Detect the job's machines: hcomm's topology (probe + fitted links) plus what the
tuner's alpha-beta model does not hold, measured on the ranks themselves.

A training step on a rank alternates compute with collectives. When a machine has more
ranks than cores (or other jobs), what a rank's compute costs depends on how many ranks
compute at the same time, and every collective call costs more than the tuner's price
(threads to wake, ranks to be scheduled). Both are measured on the job's ranks.

The compute, in the alternating pattern a step has, for k = 1 .. ranks-per-machine ranks
active at once (the others wait in a barrier, asleep):

    a round = one piece of compute (a numpy matmul loop of n repetitions, one thread),
              then an 8-byte allreduce among the k active ranks

    rep_s[k]       seconds per repetition with k active: the slope of the round time
                   between a short (SHORT_REPS) and a long (PIECE_REPS) piece. The cost
                   model scales the profile's compute by rep_s[k] / (the profile's own
                   seconds per repetition, timed alone while it ran): the time-sharing
                   of cores, the CPU that waiting ranks burn, and whatever else loads
                   the machine steadily.

Medians of ROUNDS rounds, the slowest active rank's view. Also kept for the summary:
"share" (rep_s[k] / rep_s[1] at the largest k).

Every measurement below is made PASSES times, the passes interleaved (the raw passes are
kept in the output as "passes"); of a rank's own work (compute, optimizer, posting) the
least of each figure is kept, of what waits for partners (calls, messages) the median
(combine_passes): another job's load only adds time, and a calibration taken in a burst
priced every plan high (accuracy run 12, case a: f(2) read 2.30 on 2 cores, the runs
then ran faster).

The calls, directly (torch_call_overheads), with every rank of the job running:

    call_s[g]        one blocking tiny collective in groups of g ranks, beyond the tuner's
                     price: the time inside the call, each after a short piece of
                     compute, mean over the group's ranks and BURST_CALLS calls, median
                     of BURSTS bursts.
    call_async_s[g]  the same issued async and waited for (ZeRO's bucketed and per-unit
                     collectives, the pipeline's messages).
    post_s           posting one send or receive, before any wait (the pipeline's messages
                     are a control block and then the tensors, each one post), with the
                     next receive posted ahead as the pipeline's Exchanger keeps it.
    message_s        a pipeline message's one-way time to a rank waiting for it, beyond
                     the tuner's price (pairs ping-pong a control block).

The optimizer's update, memory-bound where the piece above is not (optimizer_seconds):

    opt_elem_s       wall seconds per element of an AdamW step with every rank of the job
                     stepping at once, as at a step's end; the cost model divides it by the
                     profile's per-element time alone (same code, one process).

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

PIECE_REPS = 200     # matmuls in a long piece of compute (about 2 ms on one core here)
SHORT_REPS = 20      # a short piece (about 0.2 ms)
ROUNDS = 11
PASSES = 3           # every measurement is repeated, interleaved (combine_passes)
BURST_CALLS = 20     # calls per burst (call and p2p posting overheads)
BURSTS = 7           # bursts per group size; the median is kept
POST_REPS = 100      # compute between a receive being posted and its message's send
P2P_BLOCK_BYTES = 64 * 8     # the pipeline's control block (p2p.py header_words int64)
OPT_ELEMENTS = 1 << 20       # the AdamW step's tensor: 16 MiB with its state and gradient, past L2


def _compute(n):
    import numpy as np

    a = np.ones((96, 96), np.float32)
    for _ in range(n):
        a = (a @ a) * 1e-3
    return a


def piece_seconds(rounds=15):
    """One long piece alone, its least CPU time (as the profile times layers): the profile
    records it, and the calibration's wall times with k ranks active are divided by it
    (cost.py)."""
    return _timed(lambda: _compute(PIECE_REPS), rounds, min, clock=time.thread_time)


def _timed(fn, rounds, pick=statistics.median, clock=time.perf_counter):
    times = []
    for _ in range(rounds):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return pick(times)


def _rounds(sub, reps, tiny):
    """Median round time: `reps` of compute, then the allreduce."""
    def one():
        _compute(reps)
        sub.allreduce(tiny)
    sub.barrier()
    return _timed(one, ROUNDS)


def _machine_peers(comm, topo):
    """This rank's index among the ranks of its machine, and their count (by the probe's
    hostname, so network-namespace hosts on one machine count together)."""
    records = {r["rank"]: r.get("hostname", "") for r in topo.get("ranks", [])}
    names = [records.get(r, "") for r in range(comm.size)]
    peers = [r for r, n in enumerate(names) if n == names[comm.rank]]
    return peers.index(comm.rank), len(peers)


def measure(comm, topo):
    """Every rank calls. One pass of the compute sweep: {"round_s": {k: [short, long]},
    "ranks_per_machine"}, per k ranks active at once on each machine the median round
    time with a short and with a long piece, the slowest machine's and rank's view (the
    seconds per repetition are taken from the passes together: least_slope)."""
    import numpy as np

    tiny = np.zeros(2, np.float32)
    local, per_machine = _machine_peers(comm, topo)
    round_s = {}
    for k in range(1, per_machine + 1):
        active = local < k
        sub = comm.split(0 if active else -1)      # the others opt out and wait below
        row = np.zeros(2)
        if active:
            row[:] = _rounds(sub, SHORT_REPS, tiny), _rounds(sub, PIECE_REPS, tiny)
            sub.close()
        comm.allreduce(row, op="max")        # the slowest machine's and rank's view
        round_s[k] = [float(row[0]), float(row[1])]
        comm.barrier()
    return {"round_s": round_s, "ranks_per_machine": per_machine}


def least_slope(pairs, span):
    """Seconds per unit from (short, long) round times of several passes: the least short
    and the least long round over the passes, then their slope over `span` units (>= 0).

    Another job's load only ever adds time, so the least of each is the one a burst
    spared. The slope of each pass and then a middle value (the rule before) is not: a
    burst in a pass's long rounds raises its slope, one in its short rounds lowers it,
    and two passes of three in a burst move the median (case a of accuracy run 12 priced
    every plan high from one such calibration: f(2) read 2.30 on 2 cores)."""
    short = min(p[0] for p in pairs)
    long_ = min(p[1] for p in pairs)
    return max(0.0, (long_ - short) / span)


def _torch_group(comm):
    """torch.distributed on the hcomm backend over the same ranks (a TCPStore that rank 0
    opens on MASTER_ADDR, default 127.0.0.1, its port sent over `comm`)."""
    from datetime import timedelta

    import numpy as np
    import torch.distributed as dist

    import hcomm.torch  # noqa: F401  registers the backend

    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = np.zeros(1, np.int64)
    store = None
    if comm.rank == 0:
        store = dist.TCPStore(host, 0, comm.size, True, timedelta(seconds=120), wait_for_workers=False)
        port[0] = store.port
    comm.broadcast(port, root=0)
    if store is None:
        store = dist.TCPStore(host, int(port[0]), comm.size, False, timedelta(seconds=120))
    dist.init_process_group("hcomm", store=dist.PrefixStore("calibrate", store), rank=comm.rank,
                            world_size=comm.size)


def _group_sizes(size):
    """The group sizes a plan's collectives run on: dp, tp and pp each divide the world."""
    return [g for g in range(1, size + 1) if size % g == 0]


def _inside(fn, calls=BURST_CALLS, bursts=BURSTS, untimed=lambda: None):
    """Seconds inside each call of fn, as an array (bursts, calls); each call right after
    a short piece of compute, as a step issues them (in a tight loop two 2-rank groups on
    2 cores fell into lockstep and read 0.008 ms a call in one calibration, 0.3-1.8 ms in
    five others). `untimed` runs before each piece of compute."""
    import numpy as np

    out = []
    for _ in range(bursts * calls):
        untimed()
        _compute(SHORT_REPS)
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return np.array(out).reshape(bursts, calls)


def _group_means(comm, mine, blocks):
    """Per group, the overhead of its calls from every rank's in-call times: per call the
    mean over the group's ranks, the mean over a burst (a step pays the sum, tail
    included), the median of the bursts; the slowest group's. Only calls are timed, so
    nothing is subtracted (the old residual inherited the compute slope's noise). The
    group's mean, not its last arriver's time alone: on 4 ranks and 2 cores at load 5, a
    dp1 tp2 pp2 step's 2-rank allreduces spent 1.9 ms a call inside on average
    (planner_breakdown), the calibration's group mean read 1.8-2.2 ms, its last arriver
    0.13-0.23 ms and its first 3.5-4.2 ms: a partner off its core is a wait per call,
    which the compute factor (a slope per repetition) does not price."""
    import numpy as np

    every = np.zeros((comm.size,) + mine.shape)
    every[comm.rank] = mine
    comm.allreduce(every)
    return max(float(np.median(every[b].mean(axis=0).mean(axis=1))) for b in blocks)


def torch_call_overheads(comm, topo):
    """Per-call costs through torch.distributed on the hcomm backend, the path a training
    job's collectives take (the c10d call, Work and its future, the completion pool: each
    a thread to wake on a loaded machine), measured directly rather than as a residual
    after subtracting compute (that residual inherited the compute slope's noise: 0.86,
    2.13 and 0 ms at 4 ranks in three calibrations within 20 minutes at load 5-10).

    call_s[g], call_async_s[g]: for each group size g the plans use, every rank of the job
    in a group of g consecutive ranks (all groups at once, as a plan's tp or dp groups run),
    the time inside an 8-byte all_reduce (blocking) or all_gather_into_tensor issued async
    and waited for, each after a short piece of compute (_inside), the mean over the
    group's ranks (_group_means), minus the tuner's price.
    post_s: what posting one point-to-point operation costs a rank before any wait (the
    pipeline posts a control block and then each tensor of every message: Exchanger._post),
    _post_seconds. message_s: a pipeline message's one-way time to a waiting receiver,
    _message_seconds."""
    import torch
    import torch.distributed as dist

    from hcomm.topology import explain

    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor    # torch 2.13's name
    _torch_group(comm)
    try:
        x = torch.zeros(2)
        coll, asyn = {}, {}
        for g in _group_sizes(comm.size):
            blocks = [list(range(s, s + g)) for s in range(0, comm.size, g)]
            groups = [dist.new_group(b) for b in blocks]       # every rank creates every group
            members = blocks[comm.rank // g]
            group = groups[comm.rank // g]
            out = torch.zeros(2 * g)
            price = 0.0
            if g > 1:
                e = explain("allreduce", 8, topology=topo, ranks=members)
                price = e.candidate(e.chosen).seconds
            dist.barrier()
            blocking = _inside(lambda: dist.all_reduce(x, group=group))
            waited = _inside(lambda: gather(out, x, group=group, async_op=True).wait())
            coll[g] = max(0.0, _group_means(comm, blocking, blocks) - price)
            asyn[g] = max(0.0, _group_means(comm, waited, blocks) - price)
        return {"call_s": coll, "call_async_s": asyn, "post_s": _post_seconds(comm),
                "message_s": _message_seconds(comm, topo)}
    finally:
        dist.destroy_process_group()


def _post_seconds(comm):
    """Seconds to post one send or receive in the pipeline's pattern (_post_times), ranks
    paired (0, 1), (2, 3), ..: a burst's mean (a step pays the sum, tail included), the
    median of bursts, the slowest rank's; 0 for a single rank."""
    import numpy as np
    import torch
    import torch.distributed as dist

    peer = comm.rank ^ 1
    row = np.zeros(1)
    if peer < comm.size:
        times = _post_times(dist.group.WORLD, peer, comm.rank, BURSTS * BURST_CALLS,
                            lambda: _compute(POST_REPS), lambda: torch.zeros(64, dtype=torch.int64))
        row[0] = float(np.median(np.reshape(times, (BURSTS, BURST_CALLS)).mean(axis=1)))
    comm.allreduce(row, op="max")
    return float(row[0])


def _post_times(pg, peer, rank, calls, compute, buffer, clock=time.perf_counter):
    """Seconds of each of `calls` posts (one per message, sends and receives in turn) that
    `rank` makes with `peer` on the process group `pg`, as the Exchanger posts (p2p.py):
    straight on the group, a 64-word control block, and a receive always outstanding. The
    Exchanger posts the next batch's receives as soon as a batch ends (`then`), so a rank
    computes and then sends while its next receive is posted; here each rank keeps one
    receive from its peer posted ahead, re-posts it as soon as it completes (that post
    timed), computes, and the sender computes and then posts its send (timed). A final
    untimed send on each side matches the receive left outstanding.

    Measured on 4 ranks, 2 cores, load 4-6 (sends | receives, mean per rank): with a
    receive outstanding 0.05-0.26 | 0.02-0.07 ms a post; with none, as this calibration
    posted before (receive posted then compute, sender compute then send), 0.36-1.7 |
    0.03-0.12 ms, 26-60 % of sends over 0.5 ms: a send posted while nothing else is
    outstanding pays for waking the rank's idle communication thread on a loaded machine,
    which the pipeline's sends almost never do. planner_breakdown read 0.04-0.12 ms a post
    inside real dp1 pp4 steps."""
    posted = pg.recv([buffer()], peer, 0)
    times = []
    for i in range(calls):
        if (rank + i) % 2 == 0:
            compute()
            t0 = clock()
            work = pg.send([buffer()], peer, 0)
            times.append(clock() - t0)
            work.wait()
        else:
            posted.wait()
            t0 = clock()
            posted = pg.recv([buffer()], peer, 0)
            times.append(clock() - t0)
            compute()
    pg.send([buffer()], peer, 0).wait()
    posted.wait()
    return times


def _message_seconds(comm, topo):
    """One-way time of a pipeline message to a receiver that waits for it, beyond the
    tuner's price: ranks paired (0, 1), (2, 3), .., all pairs at once; the even rank of a
    pair computes a short piece, sends a 64-word control block and waits for the echo
    (its receive posted first), the odd rank waits with its receive posted ahead (as the
    Exchanger posts) and echoes at once. Per pair, half the round trip: a burst's mean, the
    median of bursts, less the tuner's price of the message between the pair; the slowest
    pair's; 0 for a single rank.

    The cost model charged each message the async call overhead (call_async_s[2]), which
    is measured with both sides computing and arriving apart; the schedule checker
    already lets a message wait for its sender, so what is left is the delivery to a
    waiting rank: 0.11-0.70 ms one way (4 ranks, 2 cores, load 7.6) where call_async_s[2]
    read 1.0-5.2 ms in calibrations at load 4-9."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from hcomm.topology import explain

    peer = comm.rank ^ 1
    row = np.zeros(1)
    if peer < comm.size:
        pg, n = dist.group.WORLD, BURSTS * BURST_CALLS
        block = lambda: torch.zeros(64, dtype=torch.int64)      # noqa: E731
        if comm.rank % 2 == 0:
            rtt = _round_trips(pg, peer, n, lambda: _compute(SHORT_REPS), block)
            price = explain("broadcast", P2P_BLOCK_BYTES, topology=topo, ranks=[comm.rank, peer]).candidate(
                "binomial").seconds
            row[0] = _one_way(np.reshape(rtt, (BURSTS, BURST_CALLS)), price)
        else:
            _echo(pg, peer, n, block)
    comm.allreduce(row, op="max")
    return float(row[0])


def _one_way(round_trips, price):
    """Half the round trip per call, a burst's mean, the median of bursts, less price (>= 0)."""
    import numpy as np

    return max(0.0, float(np.median(np.asarray(round_trips).mean(axis=1))) / 2 - price)


def _round_trips(pg, peer, calls, compute, buffer, clock=time.perf_counter):
    """The pinging side of _message_seconds: seconds from posting each message to its echo."""
    out = []
    for _ in range(calls):
        echo = pg.recv([buffer()], peer, 0)
        compute()
        t0 = clock()
        pg.send([buffer()], peer, 0).wait()
        echo.wait()
        out.append(clock() - t0)
    return out


def _echo(pg, peer, calls, buffer):
    """The echoing side: a receive always posted ahead, each message sent back at once."""
    posted = pg.recv([buffer()], peer, 0)
    for i in range(calls):
        posted.wait()
        if i + 1 < calls:
            posted = pg.recv([buffer()], peer, 0)
        pg.send([buffer()], peer, 0).wait()


def optimizer_rounds(comm, rounds=ROUNDS, numel=OPT_ELEMENTS, clock=time.perf_counter):
    """[short, long] median round times (the slowest rank's) of an AdamW step
    (profile.optimizer_seconds_per_element's step: one fp32 tensor, one thread) with every
    rank stepping at once, as at a step's end: rounds of an 8-byte allreduce over all
    ranks then one step of numel / 8 (short) or numel (long) elements. optimizer_seconds
    takes the slope per element, as measure()'s rounds give the compute's.

    The round, not the step alone: a rank that the allreduce leaves waiting for a core
    starts its clock late and then steps uninterrupted, so timing the step alone read the
    one-process figure with four ranks on two cores (3.6 ns an element at load 6, where
    the round's slope reads the cores' sharing). The compute factor's piece (a 96 x 96
    matmul, in L1/L2) does not see what the ranks' updates do to each other: dp2 pp2 z1
    mb4 of the wide GPT on 4 ranks / 2 cores, load 5, spent 8.1-9.3 ms of thread CPU time
    in opt.step per rank against 3.2 ms in the profile (the same step in one process on a
    fake 2-rank group: 3.6 ms) (benchmarks/planner_breakdown.py)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    tiny = np.zeros(2, np.float32)

    def round_time(n):
        p = torch.zeros(n, requires_grad=True)
        p.grad = torch.randn(n)
        opt = torch.optim.AdamW([p], lr=1e-3)
        opt.step()                               # the state is allocated on the first step

        def one():
            comm.allreduce(tiny)
            opt.step()
        comm.barrier()
        return _timed(one, rounds, clock=clock)
    row = np.array([round_time(numel // 8), round_time(numel)])
    comm.allreduce(row, op="max")
    return [float(row[0]), float(row[1])]


def optimizer_seconds(comm, rounds=ROUNDS, numel=OPT_ELEMENTS, clock=time.perf_counter):
    """Wall seconds per element of an AdamW step with every rank stepping at once: one
    pass of optimizer_rounds, its slope (the calibration takes it over several passes)."""
    return least_slope([optimizer_rounds(comm, rounds, numel, clock)], numel - numel // 8)


def combine_passes(passes):
    """The calibration from several passes of every measurement (each {"round_s": {k:
    [short, long]}, "opt_round_s": [short, long], "call_s": {g: s}, "call_async_s": {g:
    s}, "post_s", "message_s"}).

    A rank's own work (the compute slopes, the optimizer's, posting): the least over the
    passes (least_slope for the slopes). Load only adds time to it, so the least is the
    pass a burst spared; the median of three passes (before) moved whenever two of them
    fell in bursts. Ten calibrations 30-60 s apart at load 1.6-6.3 (4 ranks, 2 cores),
    spread (max - min) / median, the median rule / this: f(1) 107 / 6 %, f(2) 204 / 83 %,
    f(4) 266 / 232 %, post_s 104 / 34 % (benchmarks/planner_calibration_spread.py); f(3)
    136 / 179 % and opt_elem_s 236 / 326 %: one calibration sat in a burst for all its
    passes (load 2.3 -> 4.7, f(4) 9.1), which no rule inside one calibration removes.

    What waits for partners (call_s, call_async_s, message_s): the median of the passes,
    as before. Their least is not the unloaded figure but the pass in which the groups
    happened to fall into lockstep (call_s[2] 0.035 ms against 0.20-0.73 in the other
    calibrations), and it spread more than the median (call_s[2] 124 and 339 % against 88
    and 277 %)."""
    rounds = passes[0]["round_s"]
    rep_s = {k: least_slope([p["round_s"][k] for p in passes], PIECE_REPS - SHORT_REPS) for k in rounds}
    cal = {"rep_s": rep_s, "share": rep_s[max(rep_s)] / max(rep_s[1], 1e-12), "piece_s": rep_s[1] * PIECE_REPS,
           "opt_elem_s": least_slope([p["opt_round_s"] for p in passes], OPT_ELEMENTS - OPT_ELEMENTS // 8),
           "post_s": min(p["post_s"] for p in passes),
           "message_s": statistics.median(p["message_s"] for p in passes)}
    for name in ("call_s", "call_async_s"):
        cal[name] = {g: statistics.median(p[name][g] for p in passes) for g in passes[0][name]}
    return cal


def _report(comm, passes=PASSES):
    from hcomm.topology import topology

    topo = topology(comm)
    # Every measurement `passes` times, interleaved (a pass measures everything once), so
    # that each figure is sampled at moments spread over the whole calibration and a burst
    # of another job's load lands on one pass of it; combine_passes keeps the least.
    samples = []
    for _ in range(passes):
        one = measure(comm, topo)
        one.update(torch_call_overheads(comm, topo))
        one["opt_round_s"] = optimizer_rounds(comm)
        samples.append(one)
    cal = dict(combine_passes(samples), ranks_per_machine=samples[0]["ranks_per_machine"], passes=samples)
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
