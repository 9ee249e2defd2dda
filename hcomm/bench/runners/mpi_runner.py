"""Open MPI (or any MPI) through mpi4py's buffer interface on numpy arrays."""
import numpy as np

from .base import Runner, Unsupported


class MpiRunner(Runner):
    """Runs only under mpirun (or a launcher that wires MPI_COMM_WORLD). MPI has no
    half-precision or averaging reduction, so those specs are Unsupported; half data
    still moves for the non-reducing collectives, as raw bytes."""

    name = "mpi"

    def __init__(self, world, spec, timeout):
        super().__init__(world, spec)
        if spec.device != "cpu":
            raise Unsupported(f"the mpi peer runs on host buffers; with --device {spec.device} compare with nccl")
        if world.launcher == "torchrun":  # importing mpi4py would only make a 1-rank singleton
            raise Unsupported("the mpi peer needs mpirun: run hcomm-bench by hand (it starts mpirun) or under mpirun")
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise Unsupported(f"mpi4py is not installed: {e}")
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        if self.comm.Get_size() != world.size:
            raise Unsupported(f"MPI_COMM_WORLD has {self.comm.Get_size()} ranks, the benchmark {world.size}; "
                              "the mpi peer runs only under mpirun")
        reducing = spec.collective in ("allreduce", "reduce", "reduce_scatter")
        if reducing and spec.op == "avg":
            raise Unsupported("MPI has no avg reduction")
        if reducing and spec.dtype in ("half", "bfloat16"):
            raise Unsupported(f"MPI has no {spec.dtype} reduction")
        self.op = {"sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX}.get(spec.op)
        self.raw = not reducing  # move bytes: lets half travel and costs nothing else

    def bind(self, send, recv):
        if self.raw:
            return send.view(np.uint8), recv.view(np.uint8)
        return send, recv

    def output(self, send, recv, in_place):
        # MPI's in-place reduce_scatter leaves the result at the front of the buffer
        if in_place and self.spec.collective == "reduce_scatter":
            return send[:recv.size]
        return recv

    def _allreduce(self, s, r, ip):
        self.comm.Allreduce(self.MPI.IN_PLACE if ip else s, r, op=self.op)

    def _reduce(self, s, r, ip):
        root = self.spec.root
        if ip:
            if self.rank == root:
                self.comm.Reduce(self.MPI.IN_PLACE, r, op=self.op, root=root)
            else:
                self.comm.Reduce(r, None, op=self.op, root=root)
        else:
            self.comm.Reduce(s, r, op=self.op, root=root)

    def _broadcast(self, s, r, ip):
        if not ip and self.rank == self.spec.root:
            r[...] = s  # MPI_Bcast is in place only
        self.comm.Bcast(r, root=self.spec.root)

    def _allgather(self, s, r, ip):
        self.comm.Allgather(self.MPI.IN_PLACE if ip else s, r)

    def _reduce_scatter(self, s, r, ip):
        if ip:
            self.comm.Reduce_scatter_block(self.MPI.IN_PLACE, s, op=self.op)
        else:
            self.comm.Reduce_scatter_block(s, r, op=self.op)

    def _alltoall(self, s, r, ip):
        self.comm.Alltoall(self.MPI.IN_PLACE if ip else s, r)

    def _sendrecv(self, s, r, ip):
        self.comm.Sendrecv(s, self.peer_next(), recvbuf=r, source=self.peer_prev())

    def _barrier(self, s, r, ip):
        self.comm.Barrier()

    def barrier(self):
        self.comm.Barrier()

    def reduce_floats(self, values, op):
        send = np.asarray(values, dtype=np.float64)
        out = np.empty_like(send)
        self.comm.Allreduce(send, out, op=self.MPI.MAX if op == "max" else self.MPI.SUM)
        return out

    def info(self):
        return {"version": self.MPI.Get_library_version().split(",")[0].strip()}
