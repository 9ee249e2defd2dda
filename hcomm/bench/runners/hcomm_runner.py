"""hcomm's own Communicator (the C++ core through hcomm.init), on numpy buffers, torch
bfloat16 views of them, or torch CUDA tensors (--device cuda)."""
import numpy as np

from ..data import BF16
from ..tensors import Mirror, host_tensor, local_device_index
from .base import Runner, Unsupported


def hcomm_missing():
    """Why hcomm cannot run here, or None when hcomm.init exists."""
    try:
        import hcomm
    except ImportError as e:  # the package or its compiled core failed to load
        return f"hcomm does not import: {e}"
    if not hasattr(hcomm, "init"):
        return "hcomm core has no Communicator yet (hcomm.init is missing); rebuild the core"
    return None


# the collectives whose hcomm call takes algo=; the core names the algorithms it knows
ALGO_COLLECTIVES = ("allreduce", "reduce", "broadcast", "reduce_scatter", "alltoall")


class HcommRunner(Runner):
    name = "hcomm"

    def __init__(self, world, spec, timeout):
        super().__init__(world, spec)
        if spec.algo and spec.collective not in ALGO_COLLECTIVES:
            raise Unsupported(f"hcomm's {spec.collective} takes no algorithm; --algo applies to "
                              f"{', '.join(ALGO_COLLECTIVES)}")
        reason = hcomm_missing()
        if reason:
            raise Unsupported(reason)
        # before the communicator exists, so an Unsupported device leaves nothing open
        self.device = cuda_device(spec, world.rank) if spec.device == "cuda" else None
        import hcomm

        # Ranks we spawned (and mpirun, through the launcher module) carry the unique
        # id in the environment; under plain torchrun hcomm.init bootstraps itself
        # from MASTER_ADDR / MASTER_PORT.
        if world.unique_id:
            self.comm = hcomm.init(rank=world.rank, size=world.size, unique_id=world.unique_id, timeout=timeout)
        else:
            self.comm = hcomm.init(timeout=timeout)
        self._hcomm = hcomm
        # --algo reaches the collectives that take one (allreduce, reduce, broadcast)
        self.algo = spec.algo
        self._mirror = None

    def supports_in_place(self):
        # In-place alltoall copies the input through host memory first (hcomm.comm), which a
        # device buffer is not: out of place only on a device.
        return super().supports_in_place() and not (self.device is not None and self.spec.collective == "alltoall")

    def bind(self, send, recv):
        if self.device is not None:
            self._mirror = Mirror(send, recv, self.device)
            return self._mirror.send, self._mirror.recv
        if send.dtype == BF16:  # hcomm takes bfloat16 as torch tensors
            return host_tensor(send), host_tensor(recv)
        return send, recv

    def fetch(self):
        if self._mirror is not None:
            self._mirror.download()

    def sync(self):
        if self.device is not None:
            import torch

            torch.cuda.synchronize(self.device)

    def _allreduce(self, s, r, ip):
        if ip:
            self.comm.allreduce(r, op=self.spec.op, algo=self.algo)
        else:
            self.comm.allreduce(s, out=r, op=self.spec.op, algo=self.algo)

    def _reduce(self, s, r, ip):
        root = self.spec.root
        if ip:
            self.comm.reduce(r, root=root, op=self.spec.op, algo=self.algo)
        else:
            self.comm.reduce(s, out=r, root=root, op=self.spec.op, algo=self.algo)

    def _broadcast(self, s, r, ip):
        root = self.spec.root
        if ip:
            self.comm.broadcast(r, root=root, algo=self.algo)
        else:
            self.comm.broadcast(s, out=r, root=root, algo=self.algo)

    def _allgather(self, s, r, ip):
        self.comm.allgather(s, r)  # in place: s is r's rank-th block

    def _reduce_scatter(self, s, r, ip):
        self.comm.reduce_scatter(s, r, op=self.spec.op, algo=self.algo)  # in place: r is s's rank-th block

    def _alltoall(self, s, r, ip):
        self.comm.alltoall(s, r, algo=self.algo)  # in place (s is r): hcomm copies the input first

    def _sendrecv(self, s, r, ip):
        # Blocking send/recv: even ranks send first and odd ranks receive first, so a
        # ring of any size (odd ones too) drains without deadlock.
        if self.rank % 2 == 0:
            self.comm.send(s, self.peer_next())
            self.comm.recv(r, self.peer_prev())
        else:
            self.comm.recv(r, self.peer_prev())
            self.comm.send(s, self.peer_next())

    def _barrier(self, s, r, ip):
        self.comm.barrier()

    def barrier(self):
        self.comm.barrier()

    def reduce_floats(self, values, op):
        buf = np.asarray(values, dtype=np.float64).copy()
        self.comm.allreduce(buf, op=op)
        return buf

    def info(self):
        try:
            from importlib.metadata import version

            ver = f"hcomm {version('hcomm')}"
        except Exception:  # noqa: BLE001 - not installed as a distribution: no version to show
            ver = "hcomm"
        cfg = self._hcomm.build_config
        info = {"version": ver, "algo": self.spec.algo or "auto", "build": cfg() if callable(cfg) else cfg}
        if hasattr(self.comm, "transports"):
            info["transports"] = list(self.comm.transports())
        return info

    def close(self):
        self.comm.close()


def cuda_device(spec, rank):
    """torch.device of this rank's GPU (made current), or Unsupported saying why none."""
    try:
        import torch
    except ImportError as e:
        raise Unsupported(f"--device cuda needs torch (with CUDA): {e}")
    if not torch.cuda.is_available():
        raise Unsupported(f"--device cuda: torch {torch.__version__} sees no CUDA device here")
    dev = torch.device("cuda", local_device_index(rank))
    torch.cuda.set_device(dev)
    return dev
