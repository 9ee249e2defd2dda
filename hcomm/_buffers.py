"""Arrays in, (pointer, count, dtype) out: numpy arrays, torch tensors, anything with the
buffer protocol. No copies are made; an array hcomm cannot use as it is is refused with
an error that says why.
"""
from dataclasses import dataclass

import numpy as np

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
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1,
            "int32": 4, "int64": 8, "bool": 1}


@dataclass(frozen=True)
class Buffer:
    ptr: int
    count: int      # elements
    dtype: str
    obj: object     # the caller's array, kept alive while hcomm uses it

    @property
    def nbytes(self):
        return self.count * ITEMSIZE[self.dtype]


def _is_torch(x):
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _from_torch(x, name, writable):
    dtype = _TORCH_DTYPES.get(str(x.dtype))
    if dtype is None:
        raise InvalidArgument(f"{name}: dtype {x.dtype} is not supported by hcomm "
                              f"(supported: {', '.join(sorted(set(_TORCH_DTYPES.values())))})")
    if x.device.type != "cpu":
        raise InvalidArgument(f"{name}: tensor is on {x.device}; this build of hcomm moves host memory only")
    if not x.is_contiguous():
        raise InvalidArgument(f"{name}: tensor is not contiguous (shape {tuple(x.shape)}, "
                              f"strides {x.stride()}); call .contiguous() first")
    return Buffer(x.data_ptr() if x.numel() else 0, x.numel(), dtype, x)


def _from_numpy(x, name, writable):
    dtype = _NUMPY_DTYPES.get(x.dtype.name)
    if dtype is None:
        raise InvalidArgument(f"{name}: dtype {x.dtype} is not supported by hcomm "
                              f"(supported: {', '.join(sorted(_NUMPY_DTYPES))}; bfloat16 through torch)")
    if not x.flags.c_contiguous:
        raise InvalidArgument(f"{name}: array is not C-contiguous (shape {x.shape}, strides {x.strides}); "
                              "use np.ascontiguousarray first")
    if writable and not x.flags.writeable:
        raise InvalidArgument(f"{name}: array is read-only but hcomm must write into it")
    return Buffer(x.__array_interface__["data"][0], x.size, dtype, x)


def as_buffer(x, name="tensor", writable=False):
    """Describe `x` for the core; `writable` for outputs (and in-place inputs)."""
    if x is None:
        raise InvalidArgument(f"{name} is required")
    if _is_torch(x):
        return _from_torch(x, name, writable)
    if hasattr(x, "__cuda_array_interface__"):
        raise InvalidArgument(f"{name}: a CUDA array; this build of hcomm moves host memory only")
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
