"""The per-rank sweep: for each size, time the collective out of place and in place,
then check one fresh call against the numpy reference.

Every rank runs this same loop with its own runner. A rank times each iteration by
itself and keeps the median; the row reports the maximum of those medians over ranks
(the slowest rank sets the pace of a collective) and the sum of the wrong elements.
Iterations run back to back, as in nccl-tests; a barrier before the timed loop lines
the ranks up so the first iteration does not absorb the previous size's skew.
"""
import statistics
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .data import SENTINEL, count_wrong, expected_output, np_dtype, rank_input, redop_for
from .factors import ROOTED, bandwidths, layout


@dataclass(frozen=True)
class Spec:
    """One benchmark: the same on every rank and every implementation."""

    collective: str
    dtype: str                      # canonical name (data.DTYPES)
    op: str
    root: int
    sizes: Tuple[int, ...]          # requested sizes in bytes
    iters: int
    warmup: int
    check: bool
    seed: int = 1234
    algo: Optional[str] = None      # hcomm only; None lets its tuner choose
    device: str = "cpu"             # where the buffers live: "cpu" or "cuda"

    def __post_init__(self):
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        if self.warmup < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {self.warmup}")


class Buffers:
    """Send and receive buffers for one size and mode, laid out as nccl-tests does.

    In place, the two alias: allgather's input is the rank-th block of its output,
    reduce_scatter's output the rank-th block of its input, and the other collectives
    use one buffer for both.
    """

    def __init__(self, lay, rank, in_place, dtype):
        c = lay.count
        if not in_place:
            self.send, self.recv = np.empty(lay.send, dtype), np.empty(lay.recv, dtype)
        elif lay.collective == "allgather":
            self.recv = np.empty(lay.recv, dtype)
            self.send = self.recv[rank * c:(rank + 1) * c]
        elif lay.collective == "reduce_scatter":
            self.send = np.empty(lay.send, dtype)
            self.recv = self.send[rank * c:(rank + 1) * c]
        else:
            self.send = self.recv = np.empty(max(lay.send, lay.recv), dtype)

    def reset(self, inp):
        """Sentinel into the output, then the input over it (where they alias, the input wins)."""
        self.recv.fill(SENTINEL)
        self.send[...] = inp


def _median_time(call, iters):
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(runner, spec, lay, rank, nranks, in_place, tamper=None):
    """(median seconds, wrong elements or None when unchecked) for one size and mode on this rank."""
    dtype = np_dtype(spec.dtype)
    bufs = Buffers(lay, rank, in_place, dtype)
    inp = rank_input(spec.seed, rank, lay, dtype, spec.op)
    bufs.reset(inp)  # timed calls reduce real numbers, never uninitialised memory
    nsend, nrecv = runner.bind(bufs.send, bufs.recv)

    def call():
        runner.run(nsend, nrecv, in_place)
        runner.sync()

    for _ in range(spec.warmup):
        call()
    runner.barrier()
    seconds = _median_time(call, spec.iters)
    if not spec.check:
        return seconds, None
    bufs.reset(inp)  # in-place iterations overwrote the input
    nsend, nrecv = runner.bind(bufs.send, bufs.recv)  # a device runner copies the fresh input over
    call()
    runner.fetch()
    out = runner.output(bufs.send, bufs.recv, in_place)
    if tamper is not None:
        tamper(out, rank, in_place)
    exp = expected_output(lay, rank, nranks, seed=spec.seed, dtype=dtype, op=spec.op, root=spec.root)
    return seconds, (0 if exp is None else count_wrong(out, exp, dtype, spec.op))


def _mode_result(lay, nranks, seconds, wrong):
    alg, bus = bandwidths(lay, seconds, nranks)
    return {"time": seconds * 1e6, "alg_bw": alg, "bus_bw": bus,
            "nwrong": None if wrong is None else int(wrong)}


def sweep_layouts(spec, nranks):
    """The layouts a sweep visits; barrier has a single payload-free row."""
    itemsize = np_dtype(spec.dtype).itemsize
    sizes = (0,) if spec.collective == "barrier" else spec.sizes
    return [layout(spec.collective, s, itemsize, nranks) for s in sizes]


# Calls before the sweep proper, at a small size: connections that open lazily (gloo
# ran ~3x slower for its first ~50 calls after init) must not land in the first row.
STARTUP_CALLS = 50
STARTUP_BYTES = 4096


def warm_up(runner, spec, rank, nranks):
    lay = sweep_layouts(spec, nranks)[0]
    small = layout(spec.collective, min(lay.size_bytes, STARTUP_BYTES), lay.itemsize, nranks)
    bufs = Buffers(small, rank, False, np_dtype(spec.dtype))
    bufs.reset(rank_input(spec.seed, rank, small, np_dtype(spec.dtype), spec.op))
    nsend, nrecv = runner.bind(bufs.send, bufs.recv)
    for _ in range(STARTUP_CALLS):
        runner.run(nsend, nrecv, False)
    runner.sync()
    runner.barrier()


def run_sweep(runner, spec, rank, nranks, progress=None, tamper=None):
    """Rows (dicts, nccl-tests' columns) for every size; the same rows on every rank.

    `progress(i, total, lay)` is called before each size; `tamper(out, rank, in_place)`
    may alter a checked output before it is compared (a test hook for #wrong).
    """
    rows = []
    lays = sweep_layouts(spec, nranks)
    modes = (False, True) if runner.supports_in_place() else (False,)
    warm_up(runner, spec, rank, nranks)
    for i, lay in enumerate(lays):
        if progress is not None:
            progress(i, len(lays), lay)
        local = [measure(runner, spec, lay, rank, nranks, m, tamper) for m in modes]
        slowest = runner.reduce_floats([t for t, _ in local], "max")
        wrongs = runner.reduce_floats([w or 0 for _, w in local], "sum")
        rows.append(_row(spec, lay, nranks, {m: (float(slowest[k]), None if local[k][1] is None else wrongs[k])
                                             for k, m in enumerate(modes)}))
    return rows


def _row(spec, lay, nranks, by_mode):
    """One table row from {in_place: (slowest median seconds, total wrong or None)}."""
    row = {"size": lay.size_bytes, "count": lay.count, "type": spec.dtype,
           "redop": redop_for(spec.collective, spec.op),
           "root": spec.root if spec.collective in ROOTED else -1,
           "out_of_place": None, "in_place": None}
    for in_place, (seconds, wrong) in by_mode.items():
        row["in_place" if in_place else "out_of_place"] = _mode_result(lay, nranks, seconds, wrong)
    return row
