"""torch.distributed's own backends as a user calls them: Gloo on host tensors, NCCL on
CUDA tensors (--device cuda)."""
import datetime
import os
import warnings

import numpy as np

from ..tensors import Mirror, host_tensor
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
        self.device = self._device(world)
        ops = {"sum": dist.ReduceOp.SUM, "prod": dist.ReduceOp.PRODUCT, "min": dist.ReduceOp.MIN,
               "max": dist.ReduceOp.MAX, "avg": dist.ReduceOp.AVG}
        self.op = ops[spec.op]
        reducing = spec.collective in ("allreduce", "reduce", "reduce_scatter")
        if reducing and spec.op == "avg" and spec.dtype not in ("half", "float", "double", "bfloat16"):
            raise Unsupported(f"{self.name}'s avg reduction needs a floating-point datatype, not {spec.dtype}")
        if not world.master_addr or not world.master_port:
            raise Unsupported("gloo needs MASTER_ADDR and MASTER_PORT (or mpirun with mpi4py to agree on them)")
        dist.init_process_group(self.name, init_method=f"tcp://{world.master_addr}:{world.master_port}",
                                rank=world.rank, world_size=world.size,
                                timeout=datetime.timedelta(seconds=timeout))
        # the *_single spellings replace the *_tensor ones (deprecated) in newer torch
        self._allgather_fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self._reduce_scatter_fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")

    def supports_in_place(self):
        # all_to_all_single(t, t) returns wrong data (the check counts it): no in-place form
        return super().supports_in_place() and self.spec.collective != "alltoall"

    def _device(self, world):
        """Where the buffers live (None: host memory) or Unsupported."""
        if self.spec.device != "cpu":
            raise Unsupported(f"{self.name} is run on host buffers here; with --device {self.spec.device} compare "
                              "with nccl")
        return None

    def bind(self, send, recv):
        return host_tensor(send), host_tensor(recv)

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
        t = self.torch.tensor(np.asarray(values, dtype=np.float64), device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX if op == "max" else self.dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def info(self):
        return {"version": f"torch {self.torch.__version__} {self.name}"}

    def close(self):
        self.dist.destroy_process_group()


class NcclRunner(GlooRunner):
    """torch's nccl backend on CUDA tensors, one GPU per local rank: NCCL refuses two
    ranks of a communicator on one GPU ("Duplicate GPU detected"), so a world with more
    local ranks than GPUs is Unsupported, on every rank alike."""

    name = "nccl"

    def _device(self, world):
        if self.spec.device != "cuda":
            raise Unsupported("nccl moves CUDA tensors: run with --device cuda")
        torch = self.torch
        if not torch.cuda.is_available() or not self.dist.is_nccl_available():
            raise Unsupported(f"torch {torch.__version__} has no CUDA device or no NCCL here")
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
                    or world.size)
        gpus = torch.cuda.device_count()
        if local > gpus:
            raise Unsupported(f"NCCL refuses two ranks on one GPU (Duplicate GPU detected): {local} local ranks, "
                              f"{gpus} GPU{'s' if gpus > 1 else ''}")
        from ..tensors import local_device_index

        dev = torch.device("cuda", local_device_index(world.rank))
        torch.cuda.set_device(dev)
        return dev

    def bind(self, send, recv):
        self._mirror = Mirror(send, recv, self.device)
        return self._mirror.send, self._mirror.recv

    def fetch(self):
        self._mirror.download()

    def sync(self):
        self.torch.cuda.synchronize(self.device)

    def barrier(self):
        self.dist.barrier(device_ids=[self.device.index])
