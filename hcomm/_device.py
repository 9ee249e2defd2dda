"""Device arrays in, (pointer, count, dtype, device, stream) out: torch CUDA tensors,
anything with `__cuda_array_interface__` (CuPy, Numba, ...) and DLPack producers of
device type CUDA; for Ascend NPUs, torch_npu tensors (device type "npu") and DLPack
producers of device type kDLAscend (21, DLPack's enum since after v1.3). No copies; an
array hcomm cannot use as it is is refused with the reason, before any byte moves.

The stream a call is ordered after: the explicit `stream=` argument when given, else the
array's own (torch: the current stream of its device; `__cuda_array_interface__`: its
"stream" entry; DLPack: the legacy default stream), as NCCL users expect.
"""
import ctypes
import functools

from ._errors import InvalidArgument

_CAI_DTYPES = {
    "<f2": "float16", "<f4": "float32", "<f8": "float64", "|i1": "int8", "<i1": "int8", "|u1": "uint8",
    "<u1": "uint8", "<i4": "int32", "<i8": "int64", "|b1": "bool", "<b1": "bool",
    "<V2": "bfloat16",  # torch and ml_dtypes spell bfloat16 as two raw bytes
}
# DLPack (code, bits) -> dtype; code 0 int, 1 uint, 2 float, 4 bfloat, 6 bool.
_DLPACK_DTYPES = {
    (2, 16): "float16", (2, 32): "float32", (2, 64): "float64", (0, 8): "int8", (1, 8): "uint8",
    (0, 32): "int32", (0, 64): "int64", (4, 16): "bfloat16", (6, 8): "bool", (1, 1): "bool",
}
_KDL_CUDA, _KDL_CUDA_MANAGED = 2, 13
_KDL_ASCEND = 21  # dlpack.h DLDeviceType kDLAscend
_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1,
             "int32": 4, "int64": 8, "bool": 1}


class DeviceBuffer:
    """A device array as the core sees it, and the array, kept alive while in use."""

    __slots__ = ("ptr", "count", "dtype", "obj", "device", "stream", "current_stream", "kind")

    def __init__(self, ptr, count, dtype, obj, device, stream, current_stream, kind="cuda"):
        self.kind = kind                      # "cuda" or "npu"
        self.ptr = ptr
        self.count = count
        self.dtype = dtype
        self.obj = obj
        self.device = device
        self.stream = stream                  # the caller's stream at the call (int)
        self.current_stream = current_stream  # () -> the caller's current stream (for Work.wait)

    @property
    def nbytes(self):
        return self.count * _ITEMSIZE[self.dtype]

    @property
    def where(self):
        return f"{self.kind}:{self.device}"


def _contiguous(shape, strides, itemsize):
    """strides in bytes; True when they describe a C-contiguous layout."""
    expect = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim != 1 and stride != expect:
            return False
        expect *= dim
    return True


def from_torch_cuda(x, name, dtype):
    import torch

    if not x.is_contiguous():
        raise InvalidArgument(f"{name}: CUDA tensor is not contiguous (shape {tuple(x.shape)}, "
                              f"strides {x.stride()}); call .contiguous() first")
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()

    def current():
        return torch.cuda.current_stream(dev).cuda_stream

    return DeviceBuffer(x.data_ptr() if x.numel() else 0, x.numel(), dtype, x, dev, current(), current)


def from_cuda_array_interface(x, name):
    from . import _C

    cai = x.__cuda_array_interface__
    shape = tuple(cai["shape"])
    dtype = _CAI_DTYPES.get(cai["typestr"])
    if dtype is None:
        raise InvalidArgument(f"{name}: CUDA array of typestr {cai['typestr']!r} is not supported by hcomm "
                              f"(supported: {', '.join(sorted(set(_CAI_DTYPES.values())))}; "
                              "bfloat16 through torch or DLPack)")
    count = 1
    for d in shape:
        count *= d
    strides = cai.get("strides")
    if strides is not None and not _contiguous(shape, strides, _ITEMSIZE[dtype]):
        raise InvalidArgument(f"{name}: CUDA array is not C-contiguous (shape {shape}, strides {tuple(strides)})")
    ptr, readonly = cai["data"]
    if readonly:
        raise InvalidArgument(f"{name}: CUDA array is read-only")
    device = _C.cuda_pointer_device(ptr) if count else None  # an empty array: any device
    if count and device < 0:
        raise InvalidArgument(f"{name}: __cuda_array_interface__ points at memory the CUDA runtime does not "
                              "know as device memory")
    stream = cai.get("stream") or 0
    stream = 0 if stream in (1, 2) else stream  # legacy / per-thread default: the null handle
    return DeviceBuffer(ptr if count else 0, count, dtype, x, device, stream, _current_stream_of(x, stream))


def _current_stream_of(x, fallback):
    mod = type(x).__module__.split(".")[0]
    if mod == "cupy":
        import cupy

        return lambda: cupy.cuda.get_current_stream().ptr
    return lambda: fallback


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


def is_dlpack_device(x):
    dev = getattr(x, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        kind, _ = dev()
    except Exception:  # noqa: BLE001 - a producer may refuse; then it is not ours
        return False
    return int(kind) != 1  # kDLCPU


def from_dlpack(x, name):
    kind, dev = x.__dlpack_device__()
    if int(kind) not in (_KDL_CUDA, _KDL_CUDA_MANAGED, _KDL_ASCEND):
        raise InvalidArgument(f"{name}: DLPack device type {int(kind)} is not CUDA (2), CUDA managed (13) or "
                              "Ascend (21); hcomm moves host, CUDA and NPU memory through DLPack")
    capsule = x.__dlpack__(stream=None)
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    t = _DLManagedTensor.from_address(get(capsule, b"dltensor")).dl_tensor
    dtype = _DLPACK_DTYPES.get((t.dtype.code, t.dtype.bits))
    if dtype is None or t.dtype.lanes != 1:
        raise InvalidArgument(f"{name}: DLPack dtype (code {t.dtype.code}, {t.dtype.bits} bits, "
                              f"{t.dtype.lanes} lanes) is not supported by hcomm")
    shape = [t.shape[i] for i in range(t.ndim)]
    if t.strides:
        itemsize = _ITEMSIZE[dtype]
        strides = [t.strides[i] * itemsize for i in range(t.ndim)]
        if not _contiguous(shape, strides, itemsize):
            raise InvalidArgument(f"{name}: DLPack tensor is not contiguous (shape {shape})")
    count = 1
    for d in shape:
        count *= d
    ptr = (t.data or 0) + t.byte_offset
    # The capsule (and so the tensor's memory) stays alive with the buffer.
    where = "npu" if int(kind) == _KDL_ASCEND else "cuda"
    return DeviceBuffer(ptr if count else 0, count, dtype, (x, capsule), int(dev), 0, lambda: 0, where)


def from_torch_npu(x, name, dtype):
    """A torch_npu tensor (device type "npu"), ordered after torch_npu's current stream."""
    import torch_npu  # noqa: F401 - only a torch_npu build makes npu tensors

    if not x.is_contiguous():
        raise InvalidArgument(f"{name}: NPU tensor is not contiguous (shape {tuple(x.shape)}, "
                              f"strides {x.stride()}); call .contiguous() first")
    dev = x.device.index if x.device.index is not None else torch_npu.npu.current_device()

    def current():
        return torch_npu.npu.current_stream(dev).npu_stream

    return DeviceBuffer(x.data_ptr() if x.numel() else 0, x.numel(), dtype, x, dev, current(), current, "npu")


def any_device(bufs):
    return any(isinstance(b, DeviceBuffer) for b in bufs)


def place(bufs, stream, bound_device):
    """The (device, stream) of one call's buffers, or None for host memory. Refuses a mix of
    host and device buffers, two devices, or a device that is not this rank's, naming them."""
    devs = [b for b in bufs if b is not None]
    on_dev = [b for b in devs if isinstance(b, DeviceBuffer)]
    if not on_dev:
        if stream is not None:
            raise InvalidArgument("stream= was given but the buffers are host memory")
        return None
    if len(on_dev) != len(devs):
        host = next(b for b in devs if not isinstance(b, DeviceBuffer))
        dev = on_dev[0]
        raise InvalidArgument(f"buffers in two kinds of memory: a host {type(host.obj).__name__} and a "
                              f"{dev.where} array in one call; pass both on the same device")
    if any(b.kind == "npu" for b in on_dev):
        return _place_npu(on_dev, stream)
    placed = [b for b in on_dev if b.device is not None] or on_dev
    first = placed[0]
    device = first.device if first.device is not None else max(bound_device, 0)
    for b in placed[1:]:
        if b.device != first.device:
            raise InvalidArgument(f"buffers on two devices in one call: cuda:{first.device} and cuda:{b.device}")
    if bound_device >= 0 and device != bound_device:
        raise InvalidArgument(f"buffers on cuda:{device}, but this rank's device is cuda:{bound_device} "
                              "(hcomm binds one device per rank, at its first device call)")
    s = first.stream if stream is None else _stream_handle(stream)
    return device, s, first.current_stream if stream is None else (lambda: s)


def _place_npu(bufs, stream):
    """place() for NPU buffers: one NPU, no CUDA buffer beside it. The core binds the NPU
    per communicator (a second one raises there)."""
    first = next(b for b in bufs if b.kind == "npu")
    for b in bufs:
        if b.kind != "npu":
            raise InvalidArgument(f"buffers on two kinds of device in one call: {first.where} and {b.where}; "
                                  "pass both on the same NPU")
        if b.device != first.device:
            raise InvalidArgument(f"buffers on two devices in one call: {first.where} and {b.where}")
    s = first.stream if stream is None else _stream_handle(stream)
    from . import _C

    return first.device, s, first.current_stream if stream is None else (lambda: s), _C.on_npu


def _stream_handle(stream):
    for attr in ("cuda_stream", "npu_stream", "ptr", "handle"):  # torch, torch_npu, CuPy, Numba
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    if isinstance(stream, int) and stream >= 0:
        return stream
    raise InvalidArgument(f"stream= must be a torch/CuPy stream or an int handle, got {type(stream).__name__}")


@functools.lru_cache(maxsize=None)
def load_nccl_once():
    """Opens NCCL once per process where it exists (the core keeps the first library it
    loads), so device collectives can use it; its absence is not an error here."""
    from . import gpu

    try:
        return gpu.nccl_version()
    except Exception:  # noqa: BLE001 - no NCCL: the core says why when asked for "native"
        return None
