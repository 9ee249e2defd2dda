"""ProcessGroupHcomm: a torch.distributed ProcessGroup on one hcomm Communicator.

Every c10d entry point turns its tensor lists into one or a few core calls and returns
an HcommWork. Tensors are CPU or CUDA ones (streams.placement routes and refuses); CUDA
tensors go to the Communicator as they are, ordered on the caller's stream, and staging
buffers are made on the tensors' device (streams.py: the stream seam). Calls the caller
will wait on at once (torch.distributed without async_op=True) use the core's blocking
call; the rest are issued async and their Work's future is completed by the core's
progress thread. Data movement travels as bytes (any
dtype); reductions go through ops.py.

torch 2.13 reaches these methods two ways: from Python (distributed_c10d calls
`group.reduce(...)` etc. directly) and from C++ (DDP's reducer, _broadcast_coalesced)
through the pybind trampoline, which forwards allreduce, broadcast, allgather, barrier,
reduce_scatter, all_to_all_single, the coalesced variants and send/recv. The others
(reduce, gather, scatter, all_gather_single, reduce_scatter_single, recv_anysource,
alltoall, allgather_coalesced) are reached from Python only, so they are plain methods.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

import hcomm

from .ops import Staged, as_bytes, check_reducible, real_view, reduce_spec
from .streams import caller_stream, placement
from .work import HcommWork, _as_error

UID_KEY = "hcomm_uid"
# Completion threads per group, made only when all are busy: bounds how deeply .then()
# callbacks may nest blocking waits on further collectives (see work.py).
COMPLETION_THREADS = 16


class ProcessGroupHcomm(dist.ProcessGroup):
    """One per torch group (world, new_group, each DeviceMesh axis group)."""

    def __init__(self, comm, timeout):
        super().__init__(comm.rank, comm.size)
        self._comm = comm
        self._timeout = timeout
        self._group_name = ""
        self._group_desc = ""
        self._completions = ThreadPoolExecutor(COMPLETION_THREADS, thread_name_prefix="hcomm-complete")

    # ------------------------------------------------------------------ identity
    def getBackendName(self):
        return "hcomm"

    def _get_backend_name(self):
        return "hcomm"

    def name(self):
        return "hcomm"

    # DeviceMesh, FSDP2 and the functional collectives find groups by name; the base
    # class would look the name up on registered C++ backends, and there are none.
    def setGroupName(self, name):
        self._group_name = name

    def getGroupName(self):
        return self._group_name

    def setGroupDesc(self, desc):
        self._group_desc = desc

    def getGroupDesc(self):
        return self._group_desc

    @property
    def comm(self):
        """The hcomm Communicator behind this group (for mixing raw hcomm calls)."""
        return self._comm

    def set_timeout(self, timeout):
        self._timeout = timeout
        self._comm.timeout = timeout.total_seconds()

    def shutdown(self):
        if not self._comm.closed:
            self._comm.close()
        self._completions.shutdown(wait=False)

    def abort(self):
        """Really abort: in-flight and queued work fails at once (here and, through the
        transports' abort notices, on every peer waiting on this rank), then the group
        shuts down. hcomm.torch.shrink_world() goes on from there on the survivors."""
        if not self._comm.closed:
            self._comm.abort(f"ProcessGroupHcomm.abort() on rank {self._comm.rank} of group {self._group_name!r}")
        self.shutdown()

    def __repr__(self):
        return f"ProcessGroupHcomm(rank={self._comm.rank}, size={self._comm.size}, name={self._group_name!r})"

    # ------------------------------------------------------------------ helpers
    def _issue(self, what, call):
        """Run a core call, turning its synchronous refusal into a c10d-style error."""
        try:
            return call()
        except hcomm.InvalidArgument:
            raise
        except hcomm.Error as e:
            raise _as_error(what, e) from e

    def _run(self, what, opts, start, result, finish=None, device=None):
        """Issue start(async_op) for a single-call collective.

        A caller that will wait at once (opts.asyncOp False: every torch.distributed call
        without async_op=True) gets the core's blocking call and an already completed
        Work: no future, no hop to the progress thread and back, which is most of the
        per-call cost at small sizes. Others get a Work the progress thread completes.
        `device`: the tensors' CUDA device (None for the CPU)."""
        stream = caller_stream(device)
        if opts is not None and not opts.asyncOp:
            self._issue(what, lambda: start(False))  # on CUDA: ordered on the caller's stream
            if finish is not None:
                finish()
            return HcommWork(what, result, stream=stream)
        w = self._issue(what, lambda: start(True))
        return HcommWork(what, result, [w], finish, completions=self._completions, stream=stream)

    def _single(self, tensors, what):
        if len(tensors) != 1:
            raise RuntimeError(f"hcomm {what}: takes a list of exactly one tensor per process, got {len(tensors)}")
        t = tensors[0]
        if not t.is_cpu:
            placement(tensors, what)  # refuses what is neither cpu nor cuda
        return t

    def _group_rank(self, rank, what):
        if not isinstance(rank, int) or not 0 <= rank < self._comm.size:
            raise ValueError(f"hcomm {what}: rank {rank!r} is out of range for a group of {self._comm.size}")
        return rank

    # Internal builders return a piece: (core works, finish) where finish runs on the
    # progress thread after the works succeed (copy-outs, folds) and before the future
    # completes. _work() joins pieces into the one HcommWork a c10d call returns.
    def _work(self, what, result, pieces, device=None):
        works, finishes = [], []
        for w, f in pieces:
            works += w
            if f is not None:
                finishes.append(f)
        finish = (lambda: [f() for f in finishes]) if finishes else None
        return HcommWork(what, result, works, finish, completions=self._completions, stream=caller_stream(device))

    def _bitwise_gather(self, flat, fold, what):
        """BAND / BOR / BXOR, which the core lacks: allgather everyone's flat tensor and fold
        locally. Moves size x more bytes than an allreduce but is exact for every integer
        dtype. Returns (works, folded) where folded() gives the reduced flat tensor."""
        gathered = torch.empty(self._comm.size * flat.numel(), dtype=flat.dtype, device=flat.device)
        w = self._issue(what, lambda: self._comm.allgather(as_bytes(flat), as_bytes(gathered), async_op=True))

        def folded():
            rows = gathered.view(self._comm.size, -1)
            acc = rows[0].clone()
            for row in rows[1:]:
                fold(acc, row, out=acc)
            return acc
        return [w], folded

    # ------------------------------------------------------------------ allreduce
    def _allreduce_piece(self, t, spec, what):
        """Allreduce one tensor in place (through a contiguous copy when it is not)."""
        name = check_reducible(t, spec, what)
        st = Staged()
        buf = st.output(t).reshape(-1)
        if spec.fold is not None:
            works, folded = self._bitwise_gather(buf, spec.fold, what)
            return works, lambda: (buf.copy_(folded()), st.finish())
        w = self._issue(what, lambda: self._comm.allreduce(buf, op=name, factor=spec.factor, async_op=True))
        return [w], st.finish

    def allreduce(self, tensors, opts=None):
        what = "allreduce"
        spec = reduce_spec(_reduce_op(opts), what)
        t = real_view(self._single(tensors, what), spec, what)
        dev = _cuda(t)
        if spec.fold is None and t.is_contiguous():  # the hot path: DDP buckets, dist.all_reduce
            name = check_reducible(t, spec, what)
            return self._run(what, opts, lambda a: self._comm.allreduce(t, op=name, factor=spec.factor, async_op=a),
                             tensors, device=dev)
        return self._work(what, tensors, [self._allreduce_piece(t, spec, what)], dev)

    def allreduce_coalesced(self, tensors, opts=None):
        """Mixed dtypes allowed: one flat allreduce per dtype, in order of first use (the
        same on every rank, so the core sees the same sequence everywhere)."""
        what = "allreduce_coalesced"
        spec = reduce_spec(_reduce_op(opts), what)
        dev = placement(tensors, what)
        by_dtype = {}
        for t in tensors:
            t = real_view(t, spec, what)
            by_dtype.setdefault(t.dtype, []).append(t)
        pieces = []
        for group in by_dtype.values():
            if len(group) == 1:
                pieces.append(self._allreduce_piece(group[0], spec, what))
                continue
            flat = torch.cat([t.reshape(-1) for t in group])
            works, finish = self._allreduce_piece(flat, spec, what)
            pieces.append((works, lambda f=flat, g=group, fin=finish: (fin(), _unflatten_into(f, g))))
        return self._work(what, tensors, pieces, dev)

    # ------------------------------------------------------------------ reduce / broadcast
    def reduce(self, tensors, opts=None):
        what = "reduce"
        spec = reduce_spec(_reduce_op(opts), what)
        t = real_view(self._single(tensors, what), spec, what)
        root = self._group_rank(opts.rootRank, what)
        name = check_reducible(t, spec, what)
        st = Staged()
        if spec.fold is not None:  # everyone folds; only the root keeps the result, as Gloo does
            buf = st.input(t).reshape(-1)
            works, folded = self._bitwise_gather(buf, spec.fold, what)
            keep = (lambda: t.copy_(folded().view(t.shape))) if self._comm.rank == root else None
            return self._work(what, tensors, [(works, keep)], _cuda(t))
        buf = (st.output(t) if self._comm.rank == root else st.input(t)).reshape(-1)
        return self._run(what, opts, lambda a: self._comm.reduce(buf, root=root, op=name, factor=spec.factor,
                                                                 async_op=a), tensors, st.finish, _cuda(t))

    def broadcast(self, tensors, opts=None):
        what = "broadcast"
        t = self._single(tensors, what)
        root = self._group_rank(opts.rootRank if opts is not None else 0, what)
        st = Staged()
        buf = st.output(t)
        return self._run(what, opts, lambda a: self._comm.broadcast(as_bytes(buf), root=root, async_op=a),
                         tensors, st.finish, _cuda(t))

    # ------------------------------------------------------------------ allgather
    def allgather(self, output_tensors, input_tensors, opts=None):
        """output_tensors: [[t_rank0, ..., t_rankN-1]]; uneven sizes go through allgatherv."""
        what = "allgather"
        x = self._single(input_tensors, what)
        if len(output_tensors) != 1 or len(output_tensors[0]) != self._comm.size:
            raise RuntimeError(f"hcomm {what}: needs one output list of {self._comm.size} tensors")
        outs = output_tensors[0]
        _check_dtypes(outs, x.dtype, what)
        dev = placement([x, *outs], what)
        if outs[self._comm.rank].numel() != x.numel():
            raise RuntimeError(f"hcomm {what}: output[{self._comm.rank}] has {outs[self._comm.rank].numel()} "
                               f"elements, the input {x.numel()}")
        src = as_bytes(x.contiguous())
        counts = [_nbytes(o) for o in outs]
        flat = torch.empty(sum(counts), dtype=torch.uint8, device=x.device)
        w = self._issue(what, lambda: self._comm.allgatherv(src, flat, counts, async_op=True))
        return self._work(what, output_tensors, [([w], lambda: _bytes_into(flat, outs))], dev)

    def _check_gather_tensor(self, out, x, what):
        if out.dtype != x.dtype:
            raise RuntimeError(f"hcomm {what}: output dtype {out.dtype} differs from input dtype {x.dtype}")
        if out.numel() != x.numel() * self._comm.size:
            raise RuntimeError(f"hcomm {what}: output has {out.numel()} elements, expected "
                               f"size({self._comm.size}) * input({x.numel()}) = {x.numel() * self._comm.size}")

    def _gather_tensor_piece(self, out, x, what):
        self._check_gather_tensor(out, x, what)
        st = Staged()
        dst, src = st.output(out), st.input(x)
        w = self._issue(what, lambda: self._comm.allgather(as_bytes(src), as_bytes(dst), async_op=True))
        return [w], st.finish

    def all_gather_single(self, output_tensor, input_tensor, opts=None):
        what = "all_gather_into_tensor"
        dev = placement([output_tensor, input_tensor], what)
        out, x = output_tensor, input_tensor
        if out.is_contiguous() and x.is_contiguous():  # FSDP2's all-gathers: no staging
            self._check_gather_tensor(out, x, what)
            return self._run(what, opts, lambda a: self._comm.allgather(as_bytes(x), as_bytes(out), async_op=a),
                             [out], device=dev)
        return self._work(what, [out], [self._gather_tensor_piece(out, x, what)], dev)

    _allgather_base = all_gather_single

    def all_gather_single_coalesced(self, output_tensors, input_tensors, opts=None):
        what = "all_gather_into_tensor_coalesced"
        dev = placement(list(output_tensors) + list(input_tensors), what)
        pieces = [self._gather_tensor_piece(o, x, what) for o, x in zip(output_tensors, input_tensors, strict=True)]
        return self._work(what, output_tensors, pieces, dev)

    allgather_into_tensor_coalesced = all_gather_single_coalesced

    def allgather_coalesced(self, output_lists, input_list, opts=None):
        """Each rank's inputs (any dtypes) packed into one byte buffer, gathered once."""
        what = "allgather_coalesced"
        dev = placement(list(input_list) + [o for lst in output_lists for o in lst], what)
        if len(output_lists) != self._comm.size:
            raise RuntimeError(f"hcomm {what}: needs {self._comm.size} output lists, got {len(output_lists)}")
        shape = [(t.dtype, t.numel()) for t in input_list]
        for r, outs in enumerate(output_lists):
            if [(o.dtype, o.numel()) for o in outs] != shape:
                raise RuntimeError(f"hcomm {what}: output list {r} does not match the inputs in dtype and size")
        src = _pack_bytes(input_list, dev)
        flat = torch.empty(src.numel() * self._comm.size, dtype=torch.uint8, device=src.device)
        w = self._issue(what, lambda: self._comm.allgather(src, flat, async_op=True))
        outs = [o for lst in output_lists for o in lst]
        return self._work(what, output_lists, [([w], lambda: _bytes_into(flat, outs))], dev)

    # ------------------------------------------------------------------ reduce_scatter
    def _reduce_scatter_piece(self, src, out, counts, spec, what):
        """src: flat input holding every rank's block; out: this rank's block."""
        name = check_reducible(out, spec, what)
        st = Staged()
        dst = st.output(out).reshape(-1)
        if spec.fold is not None:
            works, folded = self._bitwise_gather(src, spec.fold, what)
            start = sum(counts[:self._comm.rank])
            return works, lambda: (dst.copy_(folded()[start:start + dst.numel()]), st.finish())
        w = self._issue(what, lambda: self._comm.reduce_scatterv(src, dst, counts, op=name, factor=spec.factor,
                                                                 async_op=True))
        return [w], st.finish

    def reduce_scatter(self, output_tensors, input_lists, opts=None):
        """outputs: [out]; inputs: [[block for rank 0, ..., rank N-1]] (uneven sizes allowed)."""
        what = "reduce_scatter"
        spec = reduce_spec(_reduce_op(opts), what)
        out = self._single(output_tensors, what)
        if len(input_lists) != 1 or len(input_lists[0]) != self._comm.size:
            raise RuntimeError(f"hcomm {what}: needs one input list of {self._comm.size} tensors")
        blocks = input_lists[0]
        _check_dtypes(blocks, out.dtype, what)
        dev = placement([out, *blocks], what)
        out, blocks = real_view(out, spec, what), [real_view(b, spec, what) for b in blocks]
        counts = [b.numel() for b in blocks]
        if counts[self._comm.rank] != out.numel():
            raise RuntimeError(f"hcomm {what}: input block {self._comm.rank} has {counts[self._comm.rank]} "
                               f"elements, the output {out.numel()}")
        src = torch.cat([b.reshape(-1) for b in blocks])
        return self._work(what, output_tensors, [self._reduce_scatter_piece(src, out, counts, spec, what)], dev)

    def _check_reduce_scatter_tensor(self, out, x, what):
        if out.dtype != x.dtype:
            raise RuntimeError(f"hcomm {what}: output dtype {out.dtype} differs from input dtype {x.dtype}")
        if x.numel() != out.numel() * self._comm.size:
            raise RuntimeError(f"hcomm {what}: input has {x.numel()} elements, expected "
                               f"size({self._comm.size}) * output({out.numel()}) = {out.numel() * self._comm.size}")

    def _reduce_scatter_tensor_piece(self, out, x, spec, what):
        self._check_reduce_scatter_tensor(out, x, what)
        out, x = real_view(out, spec, what), real_view(x, spec, what)
        src = x.contiguous().reshape(-1)
        return self._reduce_scatter_piece(src, out, [out.numel()] * self._comm.size, spec, what)

    def reduce_scatter_single(self, output_tensor, input_tensor, opts=None):
        what = "reduce_scatter_tensor"
        spec = reduce_spec(_reduce_op(opts), what)
        dev = placement([output_tensor, input_tensor], what)
        self._check_reduce_scatter_tensor(output_tensor, input_tensor, what)
        out, x = real_view(output_tensor, spec, what), real_view(input_tensor, spec, what)
        if spec.fold is None and out.is_contiguous() and x.is_contiguous():  # FSDP2's gradients: no staging
            name = check_reducible(out, spec, what)
            return self._run(what, opts, lambda a: self._comm.reduce_scatter(x, out, op=name, factor=spec.factor,
                                                                             async_op=a), [out], device=dev)
        return self._work(what, [out], [self._reduce_scatter_tensor_piece(out, x, spec, what)], dev)

    _reduce_scatter_base = reduce_scatter_single

    def reduce_scatter_single_coalesced(self, output_tensors, input_tensors, opts=None):
        what = "reduce_scatter_tensor_coalesced"
        spec = reduce_spec(_reduce_op(opts), what)
        dev = placement(list(output_tensors) + list(input_tensors), what)
        pieces = [self._reduce_scatter_tensor_piece(o, x, spec, what)
                  for o, x in zip(output_tensors, input_tensors, strict=True)]
        return self._work(what, output_tensors, pieces, dev)

    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced

    # ------------------------------------------------------------------ alltoall
    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        """Splits are in rows of dim 0; empty split lists mean equal blocks."""
        what = "all_to_all_single"
        dev = placement([output, input], what)
        if output.dtype != input.dtype:
            raise RuntimeError(f"hcomm {what}: output dtype {output.dtype} differs from input dtype {input.dtype}")
        send = _split_bytes(input, input_split_sizes, self._comm.size, what, "input")
        recv = _split_bytes(output, output_split_sizes, self._comm.size, what, "output")
        st = Staged()
        src, dst = as_bytes(st.input(input)), as_bytes(st.output(output))
        w = self._issue(what, lambda: self._comm.alltoallv(src, dst, send, recv, async_op=True))
        return self._work(what, [output], [([w], st.finish)], dev)

    alltoall_base = all_to_all_single

    def alltoall(self, output_tensors, input_tensors, opts=None):
        """Tensor j of the inputs goes to rank j; any sizes, any (matching) dtypes."""
        what = "alltoall"
        dev = placement(list(output_tensors) + list(input_tensors), what)
        n = self._comm.size
        if len(output_tensors) != n or len(input_tensors) != n:
            raise RuntimeError(f"hcomm {what}: needs {n} input and {n} output tensors, got "
                               f"{len(input_tensors)} and {len(output_tensors)}")
        src = _pack_bytes(input_tensors, dev)
        flat = torch.empty(sum(_nbytes(o) for o in output_tensors), dtype=torch.uint8, device=src.device)
        send = [_nbytes(t) for t in input_tensors]
        recv = [_nbytes(o) for o in output_tensors]
        w = self._issue(what, lambda: self._comm.alltoallv(src, flat, send, recv, async_op=True))
        return self._work(what, output_tensors, [([w], lambda: _bytes_into(flat, output_tensors))], dev)

    # ------------------------------------------------------------------ gather / scatter
    def gather(self, output_lists, input_tensors, opts=None):
        """Root: output_lists = [[t_rank0, ...]]; others: []."""
        what = "gather"
        x = self._single(input_tensors, what)
        root = self._group_rank(opts.rootRank, what)
        src = as_bytes(x.contiguous())
        if self._comm.rank != root:
            if output_lists and any(len(lst) for lst in output_lists):
                raise RuntimeError(f"hcomm {what}: non-root rank {self._comm.rank} must not pass outputs")
            w = self._issue(what, lambda: self._comm.gather(src, root=root, async_op=True))
            return self._work(what, output_lists, [([w], None)], _cuda(x))
        if len(output_lists) != 1 or len(output_lists[0]) != self._comm.size:
            raise RuntimeError(f"hcomm {what}: root needs one output list of {self._comm.size} tensors")
        outs = output_lists[0]
        _check_dtypes(outs, x.dtype, what)
        dev = placement([x, *outs], what)
        if any(o.numel() != x.numel() for o in outs):
            raise RuntimeError(f"hcomm {what}: every output tensor must have the input's {x.numel()} elements")
        flat = torch.empty(src.numel() * self._comm.size, dtype=torch.uint8, device=x.device)
        w = self._issue(what, lambda: self._comm.gather(src, flat, root=root, async_op=True))
        return self._work(what, output_lists, [([w], lambda: _bytes_into(flat, outs))], dev)

    def scatter(self, output_tensors, input_lists, opts=None):
        """Root: input_lists = [[t_for_rank0, ...]]; others: []."""
        what = "scatter"
        out = self._single(output_tensors, what)
        root = self._group_rank(opts.rootRank, what)
        st = Staged()
        dst = as_bytes(st.output(out))
        src = None
        if self._comm.rank == root:
            if len(input_lists) != 1 or len(input_lists[0]) != self._comm.size:
                raise RuntimeError(f"hcomm {what}: root needs one input list of {self._comm.size} tensors")
            blocks = input_lists[0]
            _check_dtypes(blocks, out.dtype, what)
            placement([out, *blocks], what)
            if any(b.numel() != out.numel() for b in blocks):
                raise RuntimeError(f"hcomm {what}: every input tensor must have the output's {out.numel()} elements")
            src = _pack_bytes(blocks, out.device)
        w = self._issue(what, lambda: self._comm.scatter(src, dst, root=root, async_op=True))
        return self._work(what, output_tensors, [([w], st.finish)], _cuda(out))

    # ------------------------------------------------------------------ point to point
    def send(self, tensors, dst_rank, tag=0):
        what = "send"
        t = self._single(tensors, what)
        self._group_rank(dst_rank, what)
        src = as_bytes(t.contiguous())
        w = self._issue(what, lambda: self._comm.send(src, dst_rank, tag=tag, async_op=True))
        return self._work(what, tensors, [([w], None)], _cuda(t))

    def recv(self, tensors, src_rank, tag=0):
        return self._recv(tensors, self._group_rank(src_rank, "recv"), tag)

    def recv_anysource(self, tensors, tag=0):
        return self._recv(tensors, None, tag)

    def _recv(self, tensors, peer, tag):
        what = "recv" if peer is not None else "recv_anysource"
        t = self._single(tensors, what)
        st = Staged()
        buf = as_bytes(st.output(t))
        w = self._issue(what, lambda: self._comm.recv(buf, peer, tag=tag, async_op=True))
        return HcommWork(what, tensors, [w], st.finish, source=w, completions=self._completions,
                         stream=caller_stream(_cuda(t)))

    # ------------------------------------------------------------------ barriers
    def barrier(self, opts=None):
        return self._run("barrier", opts, lambda a: self._comm.barrier(async_op=a), [])

    def monitored_barrier(self, timeout=None, wait_all_ranks=False):
        """Gloo's monitored barrier: rank 0 waits for every rank within `timeout` and names
        the ones that did not arrive; then releases them. Blocking, like Gloo's."""
        from .monitored import monitored_barrier
        return monitored_barrier(self._comm, timeout or self._timeout, wait_all_ranks)


# -------------------------------------------------------------------- module helpers
def _reduce_op(opts):
    return opts.reduceOp if opts is not None else dist.ReduceOp.SUM


def _cuda(t):
    """The CUDA device of a tensor _single() or placement() has let through, else None."""
    return None if t.is_cpu else t.device


def _check_dtypes(tensors, dtype, what):
    for t in tensors:
        if t.dtype != dtype:
            raise RuntimeError(f"hcomm {what}: tensors mix dtypes {t.dtype} and {dtype}")


def _nbytes(t):
    return t.numel() * t.element_size()


def _pack_bytes(tensors, device):
    """Tensors of any dtypes, back to back as one uint8 buffer (on `device`, None: cpu)."""
    if not tensors:
        return torch.empty(0, dtype=torch.uint8, device=device or "cpu")
    return torch.cat([as_bytes(t.contiguous()) for t in tensors])


def _bytes_into(flat, outputs):
    """Copy a uint8 buffer out into tensors of any dtypes, in order."""
    off = 0
    for o in outputs:
        n = _nbytes(o)
        if o.is_contiguous():
            as_bytes(o).copy_(flat[off:off + n])
        else:
            o.copy_(flat[off:off + n].view(o.dtype).view(o.shape))
        off += n


def _unflatten_into(flat, outputs):
    off = 0
    for o in outputs:
        n = o.numel()
        o.copy_(flat[off:off + n].view(o.shape))
        off += n


def _split_bytes(t, splits, size, what, name):
    """all_to_all_single split sizes (rows of dim 0) -> per-rank byte counts."""
    rows = t.shape[0] if t.dim() else 1
    row_bytes = _nbytes(t) // rows if rows else 0
    if not splits:
        if rows % size:
            raise RuntimeError(f"hcomm {what}: {name} has {rows} rows, not divisible by {size} ranks; "
                               "pass split sizes")
        return [rows // size * row_bytes] * size
    splits = list(splits)
    if len(splits) != size or sum(splits) != rows or any(s < 0 for s in splits):
        raise RuntimeError(f"hcomm {what}: {name} split sizes {splits} must be {size} non-negative counts "
                           f"summing to its {rows} rows")
    return [s * row_bytes for s in splits]


def create_hcomm(store, rank, size, timeout):
    """The creator torch calls once per group on each member (world, new_group, mesh axes).

    Group rank 0 starts a bootstrap root and publishes its unique id in the group's store
    (already prefixed per group by torch, so groups never collide); the others read it.

    HCOMM_TIMEOUT, when set, replaces torch's default group timeout (30 minutes), which a
    group gets whenever its caller passes none -- DeviceMesh's groups always -- so the bound
    a user set for every hcomm call was lost there (a survivor of a dead rank could wait
    half an hour: issue 22). A timeout the caller did pass (any other value) is kept: an
    argument in the code wins over the environment."""
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if "HCOMM_TIMEOUT" in os.environ and seconds == default_pg_timeout.total_seconds():
        seconds = hcomm.default_timeout()
        timeout = timedelta(seconds=seconds)
    if rank == 0:
        uid = hcomm.get_unique_id(seconds) if size > 1 else ""
        store.set(UID_KEY, uid)
    else:
        uid = store.get(UID_KEY).decode()
    comm = hcomm.init(rank=rank, size=size, unique_id=uid, timeout=seconds)
    return ProcessGroupHcomm(comm, timeout)
