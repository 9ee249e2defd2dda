"""Arrays in, (pointer, count, dtype) out: numpy arrays, torch tensors, anything with the
buffer protocol; device arrays through hcomm._device. No copies are made; an array hcomm cannot use as it is is refused with
an error that says why.
"""
import numpy as np

from . import _C, _device
from ._errors import InvalidArgument

_NUMPY_DTYPES = {
    "float16": "float16", "float32": "float32", "float64": "float64", "int8": "int8",
    "uint8": "uint8", "int32": "int32", "int64": "int64", "bool": "bool",
}
_TORCH_DTYPES = {
    "torch.float16": "float16", "torch.bfloat16": "bfloat16", "torch.float32": "float32",
    "torch.float64": "float64", "torch.int8": "int8", "torch.uint8": "uint8", "torch.int32": "int32",
    "torch.int64": "int64", "torch.bool": "bool",
}
# Keyed by numpy's dtype objects: x.dtype.name builds a string on every call (microseconds).
_NUMPY_BY_DTYPE = {np.dtype(k): v for k, v in _NUMPY_DTYPES.items()}
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1,
            "int32": 4, "int64": 8, "bool": 1}


class Buffer:
    """(pointer, element count, dtype name) of an array, and the array itself, kept alive
    while hcomm uses it. A plain slotted class: this runs on every call."""

    __slots__ = ("ptr", "count", "dtype", "obj")

    def __init__(self, ptr, count, dtype, obj):
        self.ptr = ptr
        self.count = count
        self.dtype = dtype
        self.obj = obj

    @property
    def nbytes(self):
        return self.count * ITEMSIZE[self.dtype]


def _is_torch(x):
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _from_torch(x, name, writable):
    layout = getattr(x, "layout", None)  # (stand-ins for device tensors may have none)
    if layout is not None and str(layout) != "torch.strided":  # sparse, mkldnn: no flat buffer to move
        raise InvalidArgument(f"{name}: {layout} tensors are not supported; pass a dense tensor (.to_dense())")
    dtype = _TORCH_DTYPES.get(str(x.dtype))
    if dtype is None:
        raise InvalidArgument(f"{name}: dtype {x.dtype} is not supported by hcomm "
                              f"(supported: {', '.join(sorted(set(_TORCH_DTYPES.values())))})")
    if not x.is_cpu:
        if x.is_cuda:
            return _device.from_torch_cuda(x, name, dtype)
        if x.device.type == "npu":
            return _device.from_torch_npu(x, name, dtype)
        raise InvalidArgument(f"{name}: tensor is on {x.device}; hcomm moves host, CUDA and NPU memory")
    if not x.is_contiguous():
        raise InvalidArgument(f"{name}: tensor is not contiguous (shape {tuple(x.shape)}, "
                              f"strides {x.stride()}); call .contiguous() first")
    return Buffer(x.data_ptr() if x.numel() else 0, x.numel(), dtype, x)


def _from_numpy(x, name, writable):
    dtype = _NUMPY_BY_DTYPE.get(x.dtype)
    if dtype is None:
        raise InvalidArgument(f"{name}: dtype {x.dtype} is not supported by hcomm "
                              f"(supported: {', '.join(sorted(_NUMPY_DTYPES))}; bfloat16 through torch)")
    flags = x.flags
    if not flags.c_contiguous:
        raise InvalidArgument(f"{name}: array is not C-contiguous (shape {x.shape}, strides {x.strides}); "
                              "use np.ascontiguousarray first")
    if writable and not flags.writeable:
        raise InvalidArgument(f"{name}: array is read-only but hcomm must write into it")
    return Buffer(_C.ndarray_ptr(x), x.size, dtype, x)  # __array_interface__ costs microseconds


def as_buffer(x, name="tensor", writable=False):
    """Describe `x` for the core; `writable` for outputs (and in-place inputs)."""
    if type(x) is np.ndarray:  # the common case first: every call pays for this function
        return _from_numpy(x, name, writable)
    if x is None:
        raise InvalidArgument(f"{name} is required")
    if _is_torch(x):
        return _from_torch(x, name, writable)
    if hasattr(x, "__cuda_array_interface__"):
        return _device.from_cuda_array_interface(x, name)
    if _device.is_dlpack_device(x):
        return _device.from_dlpack(x, name)
    if isinstance(x, np.ndarray):
        return _from_numpy(x, name, writable)
    try:
        view = memoryview(x)
    except TypeError:
        raise InvalidArgument(f"{name}: expected a numpy array, a torch tensor or a buffer, "
                              f"got {type(x).__name__}") from None
    if writable and view.readonly:
        raise InvalidArgument(f"{name}: buffer is read-only but hcomm must write into it")
    return _from_numpy(np.asarray(view), name, writable)
