"""The Python face of a communicator: validates arrays, then hands pointers to the core.

Every check here runs on the calling rank before any byte moves; mismatches only visible
across ranks (different counts on different ranks) are caught by the core and end in an
hcomm.Error within the timeout.
"""
import math
import numbers
import operator

from . import _C, _device
from ._buffers import ITEMSIZE, as_buffer
from ._errors import InvalidArgument

_OPS = ("sum", "prod", "min", "max", "avg", "premul_sum")
# The core's one table of algorithm names (csrc/algo/names.h), aliases included.
_ALGOS = {collective: (None, "auto", *names) for collective, names in _C.algorithms().items()}
_ALLREDUCE_ALGOS = _ALGOS["allreduce"]
_BROADCAST_ALGOS = _ALGOS["broadcast"]  # "tree" is the binomial tree
_ALLGATHER_ALGOS = _ALGOS["allgather"]
_REDUCE_ALGOS = _ALGOS["reduce"]
_REDUCE_SCATTER_ALGOS = _ALGOS["reduce_scatter"]
_ALLTOALL_ALGOS = _ALGOS["alltoall"]


def _check_algo(collective, algo, known):
    if algo not in known:
        names = ", ".join(a for a in known if a not in (None, "auto"))
        raise InvalidArgument(f"unknown {collective} algorithm {algo!r} ({names}, or None for automatic)")


_OP_FAST = {name: name for name in _OPS}  # the usual spelling skips the normalising below


def _op_name(op):
    fast = _OP_FAST.get(op) if isinstance(op, str) else None
    if fast is not None:
        return fast
    name = getattr(op, "name", op)  # accepts enums with .name too
    name = str(name).lower()
    if name not in _OPS:
        raise InvalidArgument(f"unknown reduce op {op!r} (supported: {', '.join(_OPS)})")
    return name


def _check_op_dtype(op, dtype, factor):
    if dtype == "bool" and op in ("avg", "premul_sum"):
        raise InvalidArgument(f"op {op!r} is not defined for bool")
    if op == "premul_sum" and factor is None:
        raise InvalidArgument("op 'premul_sum' needs factor=<scalar>")


def _same_dtype(a, b, what):
    if a.dtype != b.dtype:
        raise InvalidArgument(f"{what}: input dtype {a.dtype} differs from output dtype {b.dtype}")


class Work:
    """Handle of an async call. wait() returns True when done (raises hcomm.Error if it
    failed; False when timeout seconds pass first). result() waits and returns the output."""

    def __init__(self, core, result, keep):
        self._core = core
        self._result = result
        self._keep = keep  # arrays the core is using: alive until the work is done

    def wait(self, timeout=None):
        """Host buffers: blocks until done (True), or until `timeout` seconds pass (False).
        Device buffers, as NCCL's works: makes the caller's current stream wait for the
        result and returns True at once, without blocking the host; work queued on that
        stream afterwards sees the result. An error of the call is raised by the next
        call, synchronize() or exception(). With a timeout, it first blocks the host for
        up to that long, as for host buffers."""
        if isinstance(self._core, _PlacedWork):
            if timeout is not None and not self._core.wait(float(timeout)):
                return False
            self._core.wait_stream(self._core.current_stream())
            return True
        return self._core.wait(-1.0 if timeout is None else float(timeout))

    def synchronize(self):
        """Blocks the host until the result is ready (device buffers included)."""
        return self._core.wait(-1.0)

    def is_completed(self):
        return self._core.is_completed()

    def exception(self):
        from ._C import Error

        err = self._core.error()
        return Error(err) if err else None

    def result(self):
        self.wait()
        return self._result

    def add_done_callback(self, fn):
        """fn(error_message_or_None) runs on the thread that completed the work."""
        self._core.add_done_callback(fn)

    @property
    def source(self):
        return self._core.source


class _PlacedCore:
    """The core communicator, with every call made inside `_C.on_device(device, stream)`.
    Its Works remember how to find the caller's current stream, for Work.wait()."""

    def __init__(self, core, device, stream, current_stream, guard=None):
        self._core, self._device, self._stream, self._current = core, device, stream, current_stream
        self._guard = guard or _C.on_device  # _C.on_npu for NPU buffers

    def __getattr__(self, name):
        fn = getattr(self._core, name)

        def call(*args):
            with self._guard(self._device, self._stream):
                w = fn(*args)
            return None if w is None else _PlacedWork(w, self._current)

        return call


class _PlacedWork:
    """A device call's core Work and the caller's current-stream getter."""

    def __init__(self, core, current_stream):
        self._w, self.current_stream = core, current_stream

    def __getattr__(self, name):
        return getattr(self._w, name)


class Communicator:
    """A group of ranks. Made by hcomm.init() or Communicator.split()."""

    def __init__(self, core):
        self._c = core

    # ------------------------------------------------------------- identity
    @property
    def rank(self):
        return self._c.rank

    @property
    def size(self):
        return self._c.size

    @property
    def timeout(self):
        return self._c.timeout

    @timeout.setter
    def timeout(self, seconds):
        self._c.timeout = timeout_seconds(seconds)

    @property
    def closed(self):
        return self._c.closed

    def flight_record(self):
        """The last calls of this communicator (HCOMM_FLIGHT_RECORDER_SIZE of them): seq, op,
        dtype, count, root, algo, state (queued/started/completed/failed), timestamps, error."""
        import json

        return json.loads(self._c.flight_record_json())

    def dump_flight_record(self, directory):
        """Write the flight record as JSON into `directory`; returns the file's path."""
        return self._c.dump_flight_record(str(directory))

    def transports(self):
        """The transport to each rank ('shm', 'tcp' or 'mpi')."""
        return self._c.transports()

    def __repr__(self):
        return f"<hcomm.Communicator rank {self.rank}/{self.size}{' closed' if self.closed else ''}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._c.close()

    def split(self, color, key=None):
        """Every rank calls; equal colors form a new communicator ordered by (key, rank).
        A negative color opts out and returns None."""
        # operator.index: ints (numpy's too), never a float or a string silently truncated
        core = self._c.split(_int(color, "color"), self.rank if key is None else _int(key, "key"))
        return Communicator(core) if core is not None else None

    def shrink(self, exclude=None, abort=False):
        """A new communicator over the ranks still alive, after an error or proactively.

        Every live rank not in `exclude` calls (excluded ranks do not). The callers agree
        on who is left: ranks that died, before or during the agreement, are dropped;
        `exclude` (ranks of this communicator) drops live ones too (the union of every
        caller's list). Ranks are renumbered densely in their old order; the new
        communicator has its own transports, topology and tuner. abort=True first aborts
        this communicator's in-flight work on every reachable rank (as NCCL_SHRINK_ABORT).
        Raises hcomm.Error naming the ranks it could not hear from within the timeout;
        never hangs. This communicator stays as it was: close it. docs/recovery.md."""
        ranks = [] if exclude is None else [self._check_root(r, "exclude rank") for r in exclude]
        if self.rank in ranks:
            raise InvalidArgument(f"rank {self.rank} is in exclude={ranks}: excluded ranks do not call shrink()")
        if abort:
            self.abort("aborted for shrink()")
        return Communicator(self._c.shrink(sorted(set(ranks))))

    def abort(self, reason="aborted by the user"):
        """Fail every in-flight and later call of this communicator (and of every
        communicator split from the same world) with `reason`, and tell the peers, whose
        waits on this rank then fail at once with the same cause. shrink() still works."""
        self._c.abort(str(reason))

    # ------------------------------------------------------------- helpers
    def _check_root(self, root, what="root"):
        """The rank `root` names, as an int: ints and integer scalars (np.int64) pass, a
        bool or a non-integer is refused, and so is a rank outside the communicator."""
        if isinstance(root, bool):
            raise InvalidArgument(f"{what} must be an integer rank, got {root!r}")
        rank = _int(root, what)
        if not 0 <= rank < self.size:
            raise InvalidArgument(f"{what} {rank} is out of range for a communicator of {self.size} ranks")
        return rank

    def _finish(self, work, result, keep, async_op):
        if async_op:
            return Work(work, result, keep)
        return result

    def _core(self, stream, *bufs):
        """The core to call: itself for host buffers; for device buffers a wrapper that runs
        the call on their device, ordered after their stream (hcomm._device.place)."""
        if stream is None and not _device.any_device(bufs):  # host memory: the common case first
            return self._c
        where = _device.place(bufs, stream, self._c.device)
        if where is None:
            return self._c
        _device.load_nccl_once()  # so the core finds the nvidia-nccl wheel's library too
        return _PlacedCore(self._c, *where)

    # ------------------------------------------------------------- collectives
    def allreduce(self, x, out=None, op="sum", algo=None, async_op=False, factor=None, stream=None):
        """Reduce x over all ranks; the result lands in out (or in x when out is None)."""
        if algo is None and not async_op and factor is None and stream is None and self._c.allreduce_arrays(x, out, op):
            return x if out is None else out  # numpy arrays, plain op: checked and run by the core
        op = _op_name(op)
        _check_algo("allreduce", algo, _ALLREDUCE_ALGOS)
        src = as_buffer(x, "input", writable=out is None)
        dst = as_buffer(out, "output", writable=True) if out is not None else src
        _same_dtype(src, dst, "allreduce")
        if src.count != dst.count:
            raise InvalidArgument(f"allreduce: input has {src.count} elements, output {dst.count}")
        _check_op_dtype(op, src.dtype, factor)
        w = self._core(stream, src, dst).allreduce(src.ptr, dst.ptr, src.count, src.dtype, op, float(factor or 1.0), algo or "",
                              async_op)
        return self._finish(w, dst.obj, (src, dst), async_op)

    def reduce(self, x, out=None, root=0, op="sum", algo=None, async_op=False, factor=None, stream=None):
        """Reduce x over all ranks into out on root (into x on root when out is None)."""
        op = _op_name(op)
        _check_algo("reduce", algo, _REDUCE_ALGOS)
        root = self._check_root(root)
        src = as_buffer(x, "input", writable=out is None and self.rank == root)
        dst = src
        if self.rank == root and out is not None:
            dst = as_buffer(out, "output", writable=True)
            _same_dtype(src, dst, "reduce")
            if src.count != dst.count:
                raise InvalidArgument(f"reduce: input has {src.count} elements, output {dst.count}")
        _check_op_dtype(op, src.dtype, factor)
        w = self._core(stream, src, dst).reduce(src.ptr, dst.ptr, src.count, src.dtype, op, float(factor or 1.0), root,
                           algo or "", async_op)
        return self._finish(w, dst.obj, (src, dst), async_op)

    def broadcast(self, x, root=0, out=None, algo=None, async_op=False, stream=None):
        """Copy root's x to every rank: into x, or into out when given (then x matters on root only).
        algo: None (the tuner), "binomial" / "tree", "hierarchical" or "native"."""
        root = self._check_root(root)
        _check_algo("broadcast", algo, _BROADCAST_ALGOS)
        if out is None:
            buf = as_buffer(x, "tensor", writable=True)
            src = buf
        else:
            buf = as_buffer(out, "output", writable=True)
            src = as_buffer(x, "input") if self.rank == root else buf
            _same_dtype(src, buf, "broadcast")
            if src.count != buf.count:
                raise InvalidArgument(f"broadcast: input has {src.count} elements, output {buf.count}")
        w = self._core(stream, src, buf).broadcast(src.ptr, buf.ptr, buf.count, buf.dtype, root, algo or "", async_op)
        return self._finish(w, buf.obj, (src, buf), async_op)

    def allgather(self, x, out, async_op=False, algo=None, stream=None):
        """Concatenate every rank's x, in rank order, into out (size * x.size elements).
        In place when x is out's block for this rank. algo: None (the tuner), "ring",
        "hierarchical" or "native"."""
        _check_algo("allgather", algo, _ALLGATHER_ALGOS)
        src = as_buffer(x, "input")
        dst = as_buffer(out, "output", writable=True)
        _same_dtype(src, dst, "allgather")
        if dst.count != src.count * self.size:
            raise InvalidArgument(f"allgather: output has {dst.count} elements, expected "
                                  f"size({self.size}) * input({src.count}) = {src.count * self.size}")
        w = self._core(stream, src, dst).allgatherv(src.ptr, dst.ptr, [src.count] * self.size, src.dtype, algo or "", async_op)
        return self._finish(w, dst.obj, (src, dst), async_op)

    def allgatherv(self, x, out, counts, async_op=False, algo=None, stream=None):
        """allgather with per-rank element counts."""
        _check_algo("allgatherv", algo, _ALLGATHER_ALGOS)
        counts = self._counts(counts, "counts")
        src = as_buffer(x, "input")
        dst = as_buffer(out, "output", writable=True)
        _same_dtype(src, dst, "allgatherv")
        if src.count != counts[self.rank]:
            raise InvalidArgument(f"allgatherv: input has {src.count} elements but counts[{self.rank}] "
                                  f"= {counts[self.rank]}")
        if dst.count != sum(counts):
            raise InvalidArgument(f"allgatherv: output has {dst.count} elements, sum(counts) = {sum(counts)}")
        w = self._core(stream, src, dst).allgatherv(src.ptr, dst.ptr, counts, src.dtype, algo or "", async_op)
        return self._finish(w, dst.obj, (src, dst), async_op)

    def reduce_scatter(self, x, out, op="sum", async_op=False, factor=None, stream=None, algo=None):
        """Reduce x (size * out.size elements) over ranks; this rank keeps its block in out.
        algo: None (the tuner), "ring", "direct", "hierarchical" or "native"."""
        op = _op_name(op)
        _check_algo("reduce_scatter", algo, _REDUCE_SCATTER_ALGOS)
        src = as_buffer(x, "input")
        dst = as_buffer(out, "output", writable=True)
        _same_dtype(src, dst, "reduce_scatter")
        if src.count != dst.count * self.size:
            raise InvalidArgument(f"reduce_scatter: input has {src.count} elements, expected "
                                  f"size({self.size}) * output({dst.count}) = {dst.count * self.size}")
        _check_op_dtype(op, src.dtype, factor)
        w = self._core(stream, src, dst).reduce_scatterv(src.ptr, dst.ptr, [dst.count] * self.size, src.dtype, op,
                                    float(factor or 1.0), algo or "", async_op)
        return self._finish(w, dst.obj, (src, dst), async_op)

    def reduce_scatterv(self, x, out, counts, op="sum", async_op=False, factor=None, stream=None, algo=None):
        """reduce_scatter with per-rank element counts."""
        op = _op_name(op)
        _check_algo("reduce_scatterv", algo, _REDUCE_SCATTER_ALGOS)
        counts = self._counts(counts, "counts")
        src = as_buffer(x, "input")
        dst = as_buffer(out, "output", writable=True)
        _same_dtype(src, dst, "reduce_scatterv")
        if src.count != sum(counts):
            raise InvalidArgument(f"reduce_scatterv: input has {src.count} elements, sum(counts) = {sum(counts)}")
        if dst.count != counts[self.rank]:
            raise InvalidArgument(f"reduce_scatterv: output has {dst.count} elements but counts[{self.rank}] "
                                  f"= {counts[self.rank]}")
        _check_op_dtype(op, src.dtype, factor)
        w = self._core(stream, src, dst).reduce_scatterv(src.ptr, dst.ptr, counts, src.dtype, op, float(factor or 1.0),
                                                         algo or "", async_op)
        return self._finish(w, dst.obj, (src, dst), async_op)

    def alltoall(self, x, out, async_op=False, stream=None, algo=None):
        """Block j of x goes to rank j; block i of out comes from rank i.
        algo: None (the tuner), "pairwise" or "bruck" (fewer steps, for small blocks)."""
        _check_algo("alltoall", algo, _ALLTOALL_ALGOS)
        src = as_buffer(x, "input")
        dst = as_buffer(out, "output", writable=True)
        _same_dtype(src, dst, "alltoall")
        if src.count != dst.count or src.count % self.size:
            raise InvalidArgument(f"alltoall: input ({src.count}) and output ({dst.count}) must have the same "
                                  f"number of elements, divisible by size({self.size})")
        n = src.count // self.size
        displs = [i * n for i in range(self.size)]
        return self._alltoallv(src, dst, [n] * self.size, displs, [n] * self.size, displs, async_op, stream, algo)

    def alltoallv(self, x, out, send_counts, recv_counts, send_displs=None, recv_displs=None, async_op=False, stream=None,
                  algo=None):
        """alltoall with per-rank counts (elements) and optional displacements; algo "bruck"
        needs equal counts in rank order."""
        _check_algo("alltoallv", algo, _ALLTOALL_ALGOS)
        send_counts = self._counts(send_counts, "send_counts")
        recv_counts = self._counts(recv_counts, "recv_counts")
        send_displs = self._displs(send_displs, send_counts, "send_displs")
        recv_displs = self._displs(recv_displs, recv_counts, "recv_displs")
        src = as_buffer(x, "input")
        dst = as_buffer(out, "output", writable=True)
        _same_dtype(src, dst, "alltoallv")
        for c, d, buf, what in ((send_counts, send_displs, src, "input"), (recv_counts, recv_displs, dst, "output")):
            end = max((di + ci for ci, di in zip(c, d)), default=0)
            if end > buf.count:
                raise InvalidArgument(f"alltoallv: {what} has {buf.count} elements but counts/displacements "
                                      f"reach element {end}")
        return self._alltoallv(src, dst, send_counts, send_displs, recv_counts, recv_displs, async_op, stream, algo)

    def _alltoallv(self, src, dst, sc, sd, rc, rd, async_op, stream=None, algo=None):
        if src.ptr == dst.ptr and src.count and not _device.any_device((src,)):  # device: the core copies
            import numpy as np

            copy = np.frombuffer(bytearray(memoryview(_bytes_view(src))), dtype=np.uint8)
            src = as_buffer(copy, "input")
            src = type(src)(src.ptr, src.count // ITEMSIZE[dst.dtype], dst.dtype, copy)
        w = self._core(stream, src, dst).alltoallv(src.ptr, sc, sd, dst.ptr, rc, rd, dst.dtype, algo or "", async_op)
        return self._finish(w, dst.obj, (src, dst), async_op)

    def gather(self, x, out=None, root=0, async_op=False, stream=None):
        """Concatenate every rank's x into out on root (size * x.size elements)."""
        root = self._check_root(root)
        src = as_buffer(x, "input")
        dst = src
        if self.rank == root:
            dst = as_buffer(out, "output", writable=True)
            _same_dtype(src, dst, "gather")
            if dst.count != src.count * self.size:
                raise InvalidArgument(f"gather: output has {dst.count} elements, expected "
                                      f"size({self.size}) * input({src.count}) = {src.count * self.size}")
        w = self._core(stream, src, dst).gather(src.ptr, dst.ptr, src.count, src.dtype, root, async_op)
        return self._finish(w, dst.obj if self.rank == root else None, (src, dst), async_op)

    def scatter(self, x, out, root=0, async_op=False, stream=None):
        """Root's x (size * out.size elements) is cut into blocks; rank i gets block i in out."""
        root = self._check_root(root)
        dst = as_buffer(out, "output", writable=True)
        src = dst
        if self.rank == root:
            src = as_buffer(x, "input")
            _same_dtype(src, dst, "scatter")
            if src.count != dst.count * self.size:
                raise InvalidArgument(f"scatter: input has {src.count} elements, expected "
                                      f"size({self.size}) * output({dst.count}) = {dst.count * self.size}")
        w = self._core(stream, src, dst).scatter(src.ptr, dst.ptr, dst.count, dst.dtype, root, async_op)
        return self._finish(w, dst.obj, (src, dst), async_op)

    def barrier(self, async_op=False):
        w = self._c.barrier(async_op)
        return self._finish(w, None, (), async_op)

    # ------------------------------------------------------------- point to point
    def _check_tag(self, tag):
        if not isinstance(tag, int) or not 0 <= tag < 2 ** 31:
            raise InvalidArgument(f"tag must be an int in [0, 2**31), got {tag!r}")

    def send(self, x, peer, tag=0, async_op=False, stream=None):
        peer = self._check_root(peer, "peer")
        self._check_tag(tag)
        buf = as_buffer(x, "tensor")
        w = self._core(stream, buf).send(buf.ptr, buf.nbytes, peer, tag, async_op)
        return self._finish(w, None, (buf,), async_op)

    def recv(self, x, peer=None, tag=0, async_op=False, stream=None):
        """Receive into x from peer (any rank when peer is None); returns the sender's rank."""
        if peer is not None:
            peer = self._check_root(peer, "peer")
        self._check_tag(tag)
        buf = as_buffer(x, "tensor", writable=True)
        w = self._core(stream, buf).recv(buf.ptr, buf.nbytes, -1 if peer is None else peer, tag, async_op)
        if async_op:
            return Work(w, None, (buf,))
        return w.source

    # ------------------------------------------------------------- checks
    def _counts(self, counts, what):
        counts = [_int(c, what) for c in counts]
        if len(counts) != self.size:
            raise InvalidArgument(f"{what}: {len(counts)} entries for {self.size} ranks")
        if any(c < 0 for c in counts):
            raise InvalidArgument(f"{what}: negative count in {counts}")
        return counts

    def _displs(self, displs, counts, what):
        if displs is None:
            out, acc = [], 0
            for c in counts:
                out.append(acc)
                acc += c
            return out
        displs = [_int(d, what) for d in displs]
        if len(displs) != self.size or any(d < 0 for d in displs):
            raise InvalidArgument(f"{what}: need {self.size} non-negative entries, got {displs}")
        return displs


def timeout_seconds(value, what="timeout"):
    """A timeout in seconds as a float: a positive, finite real number (numpy's too).
    nan, inf, bools and strings are refused: a deadline must be a real time."""
    seconds = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    if not 0 < seconds < math.inf:
        raise InvalidArgument(f"{what} must be a positive, finite number of seconds, got {value!r}")
    return seconds


def _int(value, what):
    """An integer argument: ints and integer scalars pass, 2.5 or "2" are refused (int()
    would truncate or parse them)."""
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidArgument(f"{what}: expected an integer, got {value!r}") from None


def _bytes_view(buf):
    """A read-only byte view of a Buffer's memory (for the in-place alltoall copy)."""
    import ctypes

    return (ctypes.c_char * buf.nbytes).from_address(buf.ptr)
