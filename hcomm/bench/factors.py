"""What each collective moves: buffer layout per swept size and nccl-tests' bus bandwidth.

nccl-tests (doc/PERFORMANCE.md) reports two bandwidths for a run that took t seconds:

    algbw = size / t              size = the larger of the send and receive buffer
    busbw = algbw * factor        factor makes busbw comparable to the link's peak

Factors for n ranks: allreduce 2(n-1)/n (a ring sends every byte out and back in);
allgather, reduce_scatter, alltoall (n-1)/n (each rank sees all but its own block);
broadcast, reduce, sendrecv 1. barrier moves no payload and gets 0.

The "count" column is the element count passed to the call on each rank (nccl-tests'
paramcount), so for allgather it is the per-rank block and the size is n blocks.
"""
from dataclasses import dataclass

COLLECTIVES = ("allreduce", "allgather", "reduce_scatter", "broadcast", "reduce",
               "alltoall", "sendrecv", "barrier")
REDUCING = frozenset({"allreduce", "reduce", "reduce_scatter"})
ROOTED = frozenset({"broadcast", "reduce"})


def _check_collective(collective):
    if collective not in COLLECTIVES:
        raise ValueError(f"unknown collective {collective!r}; choose one of {', '.join(COLLECTIVES)}")


def bus_factor(collective, nranks):
    """nccl-tests' bus-bandwidth factor for `collective` on `nranks` ranks."""
    _check_collective(collective)
    if nranks < 1:
        raise ValueError(f"nranks must be >= 1, got {nranks}")
    if collective == "allreduce":
        return 2.0 * (nranks - 1) / nranks
    if collective in ("allgather", "reduce_scatter", "alltoall"):
        return (nranks - 1) / nranks
    if collective == "barrier":
        return 0.0
    return 1.0


@dataclass(frozen=True)
class Layout:
    """Buffers for one swept size on one rank, in elements.

    count: elements per call (per block for allgather, reduce_scatter, alltoall);
    send / recv: elements in the send and receive buffers; blocks: how many `count`
    blocks the send buffer holds (n for reduce_scatter and alltoall, else 1).
    """

    collective: str
    count: int
    send: int
    recv: int
    blocks: int
    itemsize: int

    @property
    def size_bytes(self):
        return max(self.send, self.recv) * self.itemsize


def layout(collective, nbytes, itemsize, nranks):
    """The buffers nccl-tests would use for a requested size of `nbytes` bytes.

    Sizes that do not divide evenly round down to whole elements and whole blocks, as
    nccl-tests does, so the reported size can be a little below the requested one.
    """
    _check_collective(collective)
    if nbytes < 0 or itemsize < 1 or nranks < 1:
        raise ValueError(f"bad layout request: nbytes={nbytes} itemsize={itemsize} nranks={nranks}")
    total = nbytes // itemsize
    if collective == "barrier":
        return Layout(collective, 0, 0, 0, 1, itemsize)
    if collective == "allgather":
        c = total // nranks
        return Layout(collective, c, c, c * nranks, 1, itemsize)
    if collective == "reduce_scatter":
        c = total // nranks
        return Layout(collective, c, c * nranks, c, nranks, itemsize)
    if collective == "alltoall":
        c = total // nranks
        return Layout(collective, c, c * nranks, c * nranks, nranks, itemsize)
    return Layout(collective, total, total, total, 1, itemsize)


def bandwidths(lay, seconds, nranks):
    """(algbw, busbw) in GB/s (1e9 bytes per second) for one timed call of `lay`."""
    if seconds <= 0 or lay.size_bytes == 0:
        return 0.0, 0.0
    alg = lay.size_bytes / seconds / 1e9
    return alg, alg * bus_factor(lay.collective, nranks)


def sweep_sizes(minbytes, maxbytes, stepfactor=2, stepbytes=0):
    """Sizes from minbytes to maxbytes: multiplied by stepfactor when it is > 1, else
    increased by stepbytes (nccl-tests' -f / -i)."""
    if minbytes < 0 or maxbytes < minbytes:
        raise ValueError(f"need 0 <= minbytes <= maxbytes, got minbytes={minbytes} maxbytes={maxbytes}")
    if stepfactor <= 1 and stepbytes <= 0:
        raise ValueError(f"need stepfactor > 1 or stepbytes > 0, got -f {stepfactor} -i {stepbytes}")
    if stepfactor > 1 and minbytes == 0:
        raise ValueError("minbytes 0 never grows with a step factor; use -b 1 or more")
    sizes, size = [], minbytes
    while size <= maxbytes:
        sizes.append(size)
        size = size * stepfactor if stepfactor > 1 else size + stepbytes
    return sizes
