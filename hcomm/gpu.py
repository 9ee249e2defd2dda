"""GPU and NPU helpers: where NCCL comes from, what this machine offers, and a small
communicator over device buffers.

    import hcomm.gpu
    print(hcomm.gpu.report())              # build, CUDA runtime/devices, NCCL, HCCL
    uid = hcomm.gpu.nccl_unique_id()       # on one rank; hand the bytes to every rank
    comm = hcomm.gpu.NcclComm(rank, size, uid, device=rank)
    comm.allreduce(t)                      # torch CUDA tensor or CuPy array, in place

NCCL is loaded at run time. The library is looked for in this order: HCOMM_NCCL_LIB, the
nvidia-nccl wheel (`pip install nvidia-nccl-cu13`, or -cu12; torch's CUDA wheels pull
one in), then the system search path. Nothing here needs a GPU to import.
"""
import importlib.util
import os
from dataclasses import dataclass

from . import _C
from ._errors import InvalidArgument

# torch / CuPy dtype names -> the core's names
_DEVICE_DTYPES = {
    "torch.float16": "float16", "torch.bfloat16": "bfloat16", "torch.float32": "float32",
    "torch.float64": "float64", "torch.int8": "int8", "torch.uint8": "uint8", "torch.int32": "int32",
    "torch.int64": "int64", "torch.bool": "bool",
    "<f2": "float16", "<f4": "float32", "<f8": "float64", "|i1": "int8", "|u1": "uint8", "<i4": "int32",
    "<i8": "int64", "|b1": "bool",
}
_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int32": 4,
             "int64": 8, "bool": 1}


def nccl_library_candidates():
    """libnccl.so.2 files shipped by installed nvidia-nccl wheels (cu13 first)."""
    found = []
    try:
        spec = importlib.util.find_spec("nvidia.nccl")
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "lib", "libnccl.so.2")
        if os.path.isfile(path) and path not in found:
            found.append(path)
    return found


def nccl_version():
    """(version code, "2.27.3", path) of the NCCL that hcomm loads; hcomm.Error if none."""
    return _C.nccl_version(nccl_library_candidates())


def nccl_unique_id():
    """A fresh ncclUniqueId (128 bytes) to hand to every rank of a new NcclComm."""
    return _C.nccl_unique_id(nccl_library_candidates())


def _nccl_status():
    try:
        code, text, path = nccl_version()
        return {"available": True, "version": text, "version_code": code, "path": path}
    except _C.Error as e:
        return {"available": False, "reason": str(e)}


def availability():
    """What this build and machine offer, as a dict (never raises)."""
    hccl_ok, hccl_why = _C.hccl_available()
    return {
        "build": {"with_cuda": bool(_C.build_config()["with_cuda"])},
        "cuda": dict(_C.cuda_report()),
        "nccl": _nccl_status(),
        "hccl": {"available": hccl_ok, "reason": hccl_why},
    }


def _one_line(text):
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def report():
    """availability() as a few lines of text."""
    a = availability()
    cuda, nccl, hccl = a["cuda"], a["nccl"], a["hccl"]
    lines = [f"CUDA kernels built: {'yes (sm_80, sm_90)' if a['build']['with_cuda'] else 'no (nvcc was not found)'}",
             f"CUDA runtime: {cuda['runtime'] or 'none'}; devices: {cuda['device_count']}"
             + (f" ({cuda['reason']})" if cuda.get("reason") else "")]
    if nccl["available"]:
        lines.append(f"NCCL: {nccl['version']} from {nccl['path']}")
    else:
        lines.append("NCCL: not found: " + _one_line(nccl["reason"]))
    lines.append("HCCL: available" if hccl["available"] else "HCCL: not available: " + _one_line(hccl["reason"]))
    return "\n".join(lines)


@dataclass(frozen=True)
class DeviceBuffer:
    ptr: int
    count: int
    dtype: str
    stream: int   # the producer's current stream (0: the legacy default stream)


def device_buffer(x, name="tensor"):
    """Describe a torch CUDA tensor or a __cuda_array_interface__ array for the core."""
    if type(x).__module__.startswith("torch") and hasattr(x, "data_ptr"):
        if x.device.type != "cuda":
            raise InvalidArgument(f"{name}: tensor is on {x.device}; NcclComm moves CUDA tensors")
        if not x.is_contiguous():
            raise InvalidArgument(f"{name}: tensor is not contiguous (shape {tuple(x.shape)}); call .contiguous()")
        dtype = _DEVICE_DTYPES.get(str(x.dtype))
        if dtype is None:
            raise InvalidArgument(f"{name}: dtype {x.dtype} is not supported by hcomm")
        import torch

        return DeviceBuffer(x.data_ptr(), x.numel(), dtype, torch.cuda.current_stream(x.device).cuda_stream)
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is None:
        raise InvalidArgument(f"{name}: expected a CUDA tensor or array, got {type(x).__name__}")
    dtype = _DEVICE_DTYPES.get(cai["typestr"])
    if dtype is None:
        raise InvalidArgument(f"{name}: dtype {cai['typestr']} is not supported by hcomm")
    shape = tuple(cai["shape"])
    count = 1
    for n in shape:
        count *= n
    strides = cai.get("strides")
    if strides is not None and count > 1:
        expected, step = [], _ITEMSIZE[dtype]
        for n in reversed(shape):
            expected.insert(0, step)
            step *= n
        if tuple(strides) != tuple(expected):
            raise InvalidArgument(f"{name}: array is not C-contiguous (strides {strides})")
    # CAI v3: 1 and 2 name the legacy and per-thread default streams, which are also
    # the handles CUDA gives them (cudaStreamLegacy, cudaStreamPerThread).
    return DeviceBuffer(cai["data"][0], count, dtype, int(cai.get("stream") or 0))


class NcclComm:
    """A group of ranks, one GPU each, over NCCL: NCCL's collectives (algo="native") or
    hcomm's ring and tree over the NCCL point-to-point transport. Work goes on the
    tensor's current stream (native) or after it (ring, tree), like torch's NCCL backend."""

    def __init__(self, rank, size, unique_id, device, timeout=300.0):
        if not isinstance(unique_id, bytes) or len(unique_id) != 128:
            raise InvalidArgument("unique_id must be the 128 bytes nccl_unique_id() returned on one rank")
        self._c = _C.NcclComm(rank, size, unique_id, device, float(timeout), nccl_library_candidates())

    rank = property(lambda self: self._c.rank)
    size = property(lambda self: self._c.size)
    device = property(lambda self: self._c.device)

    def allreduce(self, x, op="sum", algo="native", premul=1.0):
        b = device_buffer(x)
        self._c.allreduce(b.ptr, b.ptr, b.count, b.dtype, op, float(premul), algo, b.stream)
        return x

    def broadcast(self, x, root=0):
        b = device_buffer(x)
        self._c.broadcast(b.ptr, b.ptr, b.count, b.dtype, root, b.stream)
        return x

    def allgather(self, x, out):
        b, o = device_buffer(x), device_buffer(out, "out")
        if o.dtype != b.dtype or o.count != b.count * self.size:
            raise InvalidArgument(f"out must hold size({self.size}) * {b.count} {b.dtype} elements, "
                                  f"got {o.count} {o.dtype}")
        self._c.allgather(b.ptr, o.ptr, b.count, b.dtype, b.stream)
        return out

    def reduce_scatter(self, x, out, op="sum", premul=1.0):
        b, o = device_buffer(x), device_buffer(out, "out")
        if o.dtype != b.dtype or o.count * self.size != b.count:
            raise InvalidArgument(f"input must hold size({self.size}) * out count ({o.count}) elements, "
                                  f"got {b.count}")
        self._c.reduce_scatter(b.ptr, o.ptr, o.count, b.dtype, op, float(premul), b.stream)
        return out

    def synchronize(self, stream=0):
        """Wait on the host for `stream` (0: every stream hcomm uses), with the timeout."""
        self._c.synchronize(stream)

    def abort(self, why="aborted by the user"):
        self._c.abort(why)


if __name__ == "__main__":
    print(report())
