"""NPU arrays for tests on machines with no NPU: memory from the fake AscendCL's
aclrtMalloc (tests/fake_cuda/fake_ascendcl.cc, the library hcomm itself loads through
HCOMM_ASCENDCL_LIB), handed to hcomm as DLPack capsules of device type kDLAscend (21),
the way a torch_npu tensor's __dlpack__ would.

    acl = Acl()                                  # ctypes over $HCOMM_ASCENDCL_LIB
    x = NpuArray.from_numpy(np.arange(7.0), device=0, acl=acl)
    comm.allreduce(x); x.to_numpy()
"""
import ctypes
import os

import numpy as np

import fake_device as fd

KDL_ASCEND = 21
H2D, D2H = 1, 2  # aclrtMemcpyKind
# dtype name -> (DLPack code, bits, numpy dtype of the stored bits)
_DL = {"float32": (2, 32, np.float32), "float16": (2, 16, np.float16), "float64": (2, 64, np.float64),
       "bfloat16": (4, 16, np.uint16), "int32": (0, 32, np.int32), "int64": (0, 64, np.int64),
       "int8": (0, 8, np.int8), "uint8": (1, 8, np.uint8)}


class Acl:
    """ctypes over the AscendCL library hcomm loads in this process."""

    def __init__(self, path=None):
        self.lib = ctypes.CDLL(path or os.environ["HCOMM_ASCENDCL_LIB"], mode=ctypes.RTLD_GLOBAL)
        self.lib.aclInit(None)  # a second aclInit (hcomm's) is ACL_ERROR_REPEAT_INITIALIZE, accepted

    def _call(self, name, *args):
        code = getattr(self.lib, name)(*args)
        if code != 0:
            raise RuntimeError(f"{name} failed with aclError {code}")

    def set_device(self, device):
        self._call("aclrtSetDevice", ctypes.c_int32(device))

    def malloc(self, nbytes):
        p = ctypes.c_void_p()
        self._call("aclrtMalloc", ctypes.byref(p), ctypes.c_size_t(nbytes), ctypes.c_int(0))
        return p.value

    def free(self, ptr):
        self._call("aclrtFree", ctypes.c_void_p(ptr))

    def memcpy_on_default_stream(self, dst, src, nbytes, kind, device):
        """aclrtMemcpyAsync on `device`'s default stream, then aclrtSynchronizeStream of it."""
        self.set_device(device)
        self._call("aclrtMemcpyAsync", ctypes.c_void_p(dst), ctypes.c_size_t(nbytes), ctypes.c_void_p(src),
                   ctypes.c_size_t(nbytes), ctypes.c_int(kind), ctypes.c_void_p(None))
        self._call("aclrtSynchronizeStream", ctypes.c_void_p(None))

    def memcpy(self, dst, src, nbytes, kind):
        self._call("aclrtMemcpy", ctypes.c_void_p(dst), ctypes.c_size_t(nbytes), ctypes.c_void_p(src),
                   ctypes.c_size_t(nbytes), ctypes.c_int(kind))


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


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype, _capsule_new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class NpuArray:
    """A 1-d array in fake NPU memory with __dlpack__ / __dlpack_device__ (kDLAscend).
    bfloat16 arrays hold their bits as uint16 on the host side (fake_device.bf16_bits).
    The managed tensor lives as long as the array (no deleter: the array owns it)."""

    def __init__(self, acl, count, dtype, device=0):
        self.acl, self.count, self.dtype, self.device = acl, int(count), dtype, device
        code, bits, self._np = _DL[dtype]
        self.nbytes = self.count * bits // 8
        acl.set_device(device)
        self.ptr = acl.malloc(max(self.nbytes, 1))
        self._shape = (ctypes.c_int64 * 1)(self.count)
        self._managed = _DLManagedTensor()
        t = self._managed.dl_tensor
        t.data, t.device, t.ndim = self.ptr, _DLDevice(KDL_ASCEND, device), 1
        t.dtype, t.shape, t.strides, t.byte_offset = _DLDataType(code, bits, 1), self._shape, None, 0

    @classmethod
    def from_numpy(cls, values, dtype, acl, device=0):
        host = fd.bf16_bits(values) if dtype == "bfloat16" else np.ascontiguousarray(values, dtype=dtype)
        out = cls(acl, host.size, dtype, device)
        if out.nbytes:
            acl.memcpy(out.ptr, host.ctypes.data, out.nbytes, H2D)
        return out

    def __dlpack_device__(self):
        return (KDL_ASCEND, self.device)

    def __dlpack__(self, stream=None):
        return _capsule_new(ctypes.addressof(self._managed), b"dltensor", None)

    def to_numpy(self):
        """The values, as float32 for bfloat16. Read as torch_npu's tensor.cpu() reads: a copy
        queued on the device's default stream, then that stream synchronised, so the read
        comes after what that stream waits for (an async call's Work.wait())."""
        host = np.empty(self.count, dtype=self._np)
        if self.nbytes:
            self.acl.memcpy_on_default_stream(host.ctypes.data, self.ptr, self.nbytes, D2H, self.device)
        return fd.bf16_values(host) if self.dtype == "bfloat16" else host

    def __del__(self):
        try:
            self.acl.free(self.ptr)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
