"""Implementations hcomm-bench can run: hcomm itself and its peers, gloo, MPI and (on
CUDA buffers) torch's nccl."""
from .base import Runner, Unsupported
from .hcomm_runner import hcomm_missing

IMPLEMENTATIONS = ("hcomm", "gloo", "mpi", "nccl")


def open_runner(name, world, spec, timeout):
    """Build the runner `name` on this rank; Unsupported when it cannot run the spec."""
    if name == "hcomm":
        from .hcomm_runner import HcommRunner as cls
    elif name == "gloo":
        from .gloo_runner import GlooRunner as cls
    elif name == "mpi":
        from .mpi_runner import MpiRunner as cls
    elif name == "nccl":
        from .gloo_runner import NcclRunner as cls
    else:
        raise ValueError(f"unknown implementation {name!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    return cls(world, spec, timeout)


__all__ = ["IMPLEMENTATIONS", "Runner", "Unsupported", "hcomm_missing", "open_runner"]
