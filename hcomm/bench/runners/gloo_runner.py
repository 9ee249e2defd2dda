"""Gloo through torch.distributed, as a PyTorch user on CPU would call it."""
import datetime
import warnings

import numpy as np

from .base import Runner, Unsupported


class GlooRunner(Runner):
    """torch.distributed has no out-of-place allreduce, reduce or broadcast: out of
    place copies the input into the output first, which is what a user pays too."""

    name = "gloo"

    def __init__(self, world, spec, timeout):
        super().__init__(world, spec)
        try:
            import torch
            import torch.distributed as dist
        except ImportError as e:
            raise Unsupported(f"torch is not installed: {e}")
        self.torch, self.dist = torch, dist
        ops = {"sum": dist.ReduceOp.SUM, "prod": dist.ReduceOp.PRODUCT, "min": dist.ReduceOp.MIN,
               "max": dist.ReduceOp.MAX, "avg": dist.ReduceOp.AVG}
        self.op = ops[spec.op]
        reducing = spec.collective in ("allreduce", "reduce", "reduce_scatter")
        if reducing and spec.op == "avg" and spec.dtype not in ("half", "float", "double"):
            raise Unsupported(f"gloo's avg reduction needs a floating-point datatype, not {spec.dtype}")
        if not world.master_addr or not world.master_port:
            raise Unsupported("gloo needs MASTER_ADDR and MASTER_PORT (or mpirun with mpi4py to agree on them)")
        dist.init_process_group("gloo", init_method=f"tcp://{world.master_addr}:{world.master_port}",
                                rank=world.rank, world_size=world.size,
                                timeout=datetime.timedelta(seconds=timeout))
        # the *_single spellings replace the *_tensor ones (deprecated) in newer torch
        self._allgather_fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self._reduce_scatter_fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")

    def supports_in_place(self):
        # all_to_all_single(t, t) returns wrong data (the check counts it): no in-place form
        return super().supports_in_place() and self.spec.collective != "alltoall"

    def bind(self, send, recv):
        return self.torch.from_numpy(send), self.torch.from_numpy(recv)

    def _allreduce(self, s, r, ip):
        if not ip:
            r.copy_(s)
        self.dist.all_reduce(r, op=self.op)

    def _reduce(self, s, r, ip):
        if not ip:
            r.copy_(s)
        self.dist.reduce(r, dst=self.spec.root, op=self.op)

    def _broadcast(self, s, r, ip):
        if not ip and self.rank == self.spec.root:
            r.copy_(s)
        self.dist.broadcast(r, src=self.spec.root)

    def _allgather(self, s, r, ip):
        self._allgather_fn(r, s)

    def _reduce_scatter(self, s, r, ip):
        self._reduce_scatter_fn(r, s, op=self.op)

    def _alltoall(self, s, r, ip):
        self.dist.all_to_all_single(r, s)

    def _sendrecv(self, s, r, ip):
        reqs = [self.dist.isend(s, self.peer_next()), self.dist.irecv(r, self.peer_prev())]
        for req in reqs:
            req.wait()

    def _barrier(self, s, r, ip):
        self.dist.barrier()

    def barrier(self):
        self.dist.barrier()

    def reduce_floats(self, values, op):
        t = self.torch.tensor(np.asarray(values, dtype=np.float64))
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX if op == "max" else self.dist.ReduceOp.SUM)
        return t.numpy()

    def info(self):
        return {"version": f"torch {self.torch.__version__} gloo"}

    def close(self):
        self.dist.destroy_process_group()
