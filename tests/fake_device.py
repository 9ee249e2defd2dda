"""Fake GPUs for tests on machines without one.

The libraries in tests/fake_cuda/ stand in for libcudart, libnccl, libhccl and
libascendcl (each file's header says what it models and where it differs). This module
builds them, points a child process at them, and makes fake device arrays:

    paths = fake_device.libraries()            # {"cudart": ..., "nccl": ..., ...}
    env = fake_device.child_env(devices=2)     # os.environ + HCOMM_CUDART_LIB, ...
    cuda = fake_device.FakeCuda()              # ctypes over the fake runtime
    x = fake_device.DeviceArray.from_numpy(np.arange(7.0), device=0, cuda=cuda)
    x.__cuda_array_interface__                 # v3: shape, typestr, data, strides, stream
    x.to_numpy()

Builds are content-addressed (a hash of the sources and flags names the cache folder)
and guarded by a file lock, so every process of a test session shares one build and a
rebuild happens only when a source changes. The cache folder is HCOMM_FAKE_CUDA_CACHE
or <tmp>/hcomm-fake-cuda-<hash>.
"""
import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np

from harness import run_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = os.path.join(HERE, "fake_cuda")
CSRC = os.path.join(os.path.dirname(HERE), "csrc")
FLAGS = ["-std=c++17", "-O1", "-shared", "-fPIC", "-pthread", "-I", CSRC, "-I", SOURCES]

# name -> (source files, libraries it links against, from this table; dependencies first)
_LIBS = {
    "cudart": (("fake_cudart.cc", "fake_cudart_memory.cc"), ()),
    "nccl": (("fake_nccl.cc",), ("cudart",)),
    "ascendcl": (("fake_ascendcl.cc",), ()),
    "hccl": (("fake_hccl.cc",), ("ascendcl",)),
}

# Environment variable hcomm reads for each library (csrc/transport/cuda_runtime.cc,
# nccl.cc, hccl.cc).
ENV_VARS = {"cudart": "HCOMM_CUDART_LIB", "nccl": "HCOMM_NCCL_LIB", "hccl": "HCOMM_HCCL_LIB",
            "ascendcl": "HCOMM_ASCENDCL_LIB"}


def _soname(name):
    return f"libhcomm_fake_{name}.so"


def _digest():
    h = hashlib.sha256(" ".join(FLAGS).encode())
    for name in sorted(os.listdir(SOURCES)):
        with open(os.path.join(SOURCES, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    for header in ("transport/cuda_api.h", "transport/nccl_api.h", "transport/hccl_api.h"):
        path = os.path.join(CSRC, header)
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def cache_dir():
    return os.environ.get("HCOMM_FAKE_CUDA_CACHE") or os.path.join(tempfile.gettempdir(),
                                                                    "hcomm-fake-cuda-" + _digest())


def build(name, out_dir, defines=(), deps_dir=None):
    """Compiles one fake library (a key of the table: "cudart", "nccl", "ascendcl",
    "hccl") into out_dir with extra -D defines, e.g. a broken variant for a loader test;
    the libraries it links against are taken from deps_dir (default: out_dir).
    Returns its path."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("fake_device: no C++ compiler (g++) to build the fake GPU libraries")
    sources, deps = _LIBS[name]
    out = os.path.join(str(out_dir), _soname(name))
    tmp = os.path.join(str(out_dir), f".{_soname(name)}.{os.getpid()}")
    cmd = [cxx, *FLAGS, *(f"-D{d}" for d in defines), f"-Wl,-soname,{_soname(name)}", "-o", tmp,
           *(os.path.join(SOURCES, s) for s in sources)]
    for dep in deps:  # found next to this library at load time, or already loaded by its soname
        cmd += [os.path.join(str(deps_dir or out_dir), _soname(dep)), "-Wl,-rpath,$ORIGIN"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fake_device: building {name} failed:\n{' '.join(cmd)}\n{done.stderr[-4000:]}")
    os.replace(tmp, out)
    return out


def libraries():
    """Builds the fake libraries if this version of the sources has no build yet, and
    returns {"cudart": path, ...} (absolute paths)."""
    out_dir = cache_dir()
    paths = {name: os.path.join(out_dir, _soname(name)) for name in _LIBS}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait and reuse
        for name in _LIBS:  # the table lists dependencies first
            if not os.path.exists(paths[name]):
                build(name, out_dir)
    return paths


def child_env(devices=1, base=None, npu_devices=None, **extra):
    """The environment for a process whose hcomm should run on the fakes: `base`
    (default os.environ) plus HCOMM_CUDART_LIB / HCOMM_NCCL_LIB / HCOMM_HCCL_LIB /
    HCOMM_ASCENDCL_LIB, HCOMM_FAKE_CUDA_DEVICES=devices and
    HCOMM_FAKE_NPU_DEVICES=npu_devices (default: devices); `extra` overrides."""
    env = dict(os.environ if base is None else base)
    for name, path in libraries().items():
        env[ENV_VARS[name]] = path
    env["HCOMM_FAKE_CUDA_DEVICES"] = str(devices)
    env["HCOMM_FAKE_NPU_DEVICES"] = str(devices if npu_devices is None else npu_devices)
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---------------------------------------------------------------- the runtime, in ctypes

MEMORY_TYPES = {0: "unregistered", 1: "host", 2: "device", 3: "managed"}
H2H, H2D, D2H, D2D, DEFAULT = range(5)  # cudaMemcpyKind
STREAM_LEGACY, STREAM_PER_THREAD = 1, 2
HOST_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class CudaError(RuntimeError):
    """A call into the fake runtime failed; `code` is the cudaError_t value."""

    def __init__(self, call, code, message):
        super().__init__(f"{call}: {message} [cudaError {code}]")
        self.call, self.code = call, code


class _PointerAttributes(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("device", ctypes.c_int), ("devicePointer", ctypes.c_void_p),
                ("hostPointer", ctypes.c_void_p), ("reserved", ctypes.c_long * 8)]


class _Handle(ctypes.Structure):  # cudaIpcMemHandle_t / cudaIpcEventHandle_t, passed by value
    _fields_ = [("reserved", ctypes.c_char * 64)]


class FakeCuda:
    """ctypes over the fake libcudart (or, given `path` or HCOMM_CUDART_LIB, any libcudart:
    the functions are CUDA's own). Pointers, streams and events are plain ints; failures
    raise CudaError."""

    def __init__(self, path=None):
        # The runtime hcomm would load in this process (HCOMM_CUDART_LIB), so both share
        # one copy; otherwise the fake.
        self.path = path or os.environ.get("HCOMM_CUDART_LIB") or libraries()["cudart"]
        self.lib = ctypes.CDLL(self.path, mode=ctypes.RTLD_GLOBAL)
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        self._host_fns = []  # ctypes callbacks must outlive the stream work that calls them

    def _call(self, name, *args):
        code = getattr(self.lib, name)(*args)
        if code != 0:
            raise CudaError(name, code, self.error_string(code))

    def error_string(self, code):
        return self.lib.cudaGetErrorString(ctypes.c_int(code)).decode()

    def try_call(self, name, *args):
        """Calls a runtime function and returns its cudaError_t (for tests of error codes)."""
        return getattr(self.lib, name)(*args)

    # devices
    def device_count(self):
        n = ctypes.c_int()
        self._call("cudaGetDeviceCount", ctypes.byref(n))
        return n.value

    def set_device(self, device):
        self._call("cudaSetDevice", ctypes.c_int(device))

    def get_device(self):
        d = ctypes.c_int()
        self._call("cudaGetDevice", ctypes.byref(d))
        return d.value

    def pci_bus_id(self, device):
        buf = ctypes.create_string_buffer(32)
        self._call("cudaDeviceGetPCIBusId", buf, ctypes.c_int(32), ctypes.c_int(device))
        return buf.value.decode()

    # memory
    def malloc(self, nbytes, device=None):
        """Device memory on `device` (default: the current one, which is left as it was)."""
        if device is not None:
            before = self.get_device()
            self.set_device(device)
        p = ctypes.c_void_p()
        try:
            self._call("cudaMalloc", ctypes.byref(p), ctypes.c_size_t(nbytes))
        finally:
            if device is not None:
                self.set_device(before)
        return p.value or 0

    def free(self, ptr):
        self._call("cudaFree", ctypes.c_void_p(ptr))

    def host_alloc(self, nbytes):
        p = ctypes.c_void_p()
        self._call("cudaHostAlloc", ctypes.byref(p), ctypes.c_size_t(nbytes), ctypes.c_uint(0))
        return p.value or 0

    def free_host(self, ptr):
        self._call("cudaFreeHost", ctypes.c_void_p(ptr))

    def memcpy(self, dst, src, nbytes, kind=DEFAULT):
        self._call("cudaMemcpy", ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                   ctypes.c_int(kind))

    def memcpy_async(self, dst, src, nbytes, kind=DEFAULT, stream=0):
        self._call("cudaMemcpyAsync", ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                   ctypes.c_int(kind), ctypes.c_void_p(stream))

    def memcpy_htod(self, dst, host_array):
        a = np.ascontiguousarray(host_array)
        self.memcpy(dst, a.ctypes.data, a.nbytes, H2D)

    def memcpy_dtoh(self, host_array, src):
        if not host_array.flags.c_contiguous:
            raise ValueError("memcpy_dtoh: the host array must be C-contiguous")
        self.memcpy(host_array.ctypes.data, src, host_array.nbytes, D2H)

    def pointer_attributes(self, ptr):
        """(memory type name, device) as cudaPointerGetAttributes reports them."""
        a = _PointerAttributes()
        self._call("cudaPointerGetAttributes", ctypes.byref(a), ctypes.c_void_p(ptr))
        return MEMORY_TYPES.get(a.type, str(a.type)), a.device

    # streams and events
    def stream_create(self, non_blocking=False):
        s = ctypes.c_void_p()
        self._call("cudaStreamCreateWithFlags", ctypes.byref(s), ctypes.c_uint(1 if non_blocking else 0))
        return s.value

    def stream_destroy(self, stream):
        self._call("cudaStreamDestroy", ctypes.c_void_p(stream))

    def stream_synchronize(self, stream=0):
        self._call("cudaStreamSynchronize", ctypes.c_void_p(stream))

    def stream_query(self, stream=0):
        """True when all work queued on the stream has finished."""
        code = self.lib.cudaStreamQuery(ctypes.c_void_p(stream))
        if code not in (0, 600):
            raise CudaError("cudaStreamQuery", code, self.error_string(code))
        return code == 0

    def stream_wait_event(self, stream, event):
        self._call("cudaStreamWaitEvent", ctypes.c_void_p(stream), ctypes.c_void_p(event), ctypes.c_uint(0))

    def launch_host_func(self, stream, fn):
        """Runs the Python callable fn() in stream order on the stream's worker thread."""
        cb = HOST_FN(lambda _arg: fn())
        self._host_fns.append(cb)
        self._call("cudaLaunchHostFunc", ctypes.c_void_p(stream), cb, None)

    def event_create(self, interprocess=False, disable_timing=True):
        flags = (0x02 if disable_timing else 0) | (0x04 if interprocess else 0)
        e = ctypes.c_void_p()
        self._call("cudaEventCreateWithFlags", ctypes.byref(e), ctypes.c_uint(flags))
        return e.value

    def event_destroy(self, event):
        self._call("cudaEventDestroy", ctypes.c_void_p(event))

    def event_record(self, event, stream=0):
        self._call("cudaEventRecord", ctypes.c_void_p(event), ctypes.c_void_p(stream))

    def event_query(self, event):
        """True when the event's most recent record has completed."""
        code = self.lib.cudaEventQuery(ctypes.c_void_p(event))
        if code not in (0, 600):
            raise CudaError("cudaEventQuery", code, self.error_string(code))
        return code == 0

    def event_synchronize(self, event):
        self._call("cudaEventSynchronize", ctypes.c_void_p(event))

    # IPC: handles are 64-byte bytes objects
    def ipc_get_mem_handle(self, ptr):
        h = _Handle()
        self._call("cudaIpcGetMemHandle", ctypes.byref(h), ctypes.c_void_p(ptr))
        return ctypes.string_at(ctypes.addressof(h), 64)

    def ipc_open_mem_handle(self, handle):
        p = ctypes.c_void_p()
        self._call("cudaIpcOpenMemHandle", ctypes.byref(p), _handle(handle), ctypes.c_uint(1))
        return p.value

    def ipc_close_mem_handle(self, ptr):
        self._call("cudaIpcCloseMemHandle", ctypes.c_void_p(ptr))

    def ipc_get_event_handle(self, event):
        h = _Handle()
        self._call("cudaIpcGetEventHandle", ctypes.byref(h), ctypes.c_void_p(event))
        return ctypes.string_at(ctypes.addressof(h), 64)

    def ipc_open_event_handle(self, handle):
        e = ctypes.c_void_p()
        self._call("cudaIpcOpenEventHandle", ctypes.byref(e), _handle(handle))
        return e.value


def _handle(data):
    if len(data) != 64:
        raise ValueError(f"an IPC handle is 64 bytes, got {len(data)}")
    h = _Handle()
    ctypes.memmove(ctypes.byref(h), data, 64)
    return h


# ---------------------------------------------------------------- device arrays

BFLOAT16 = "bfloat16"
# torch's Tensor.__cuda_array_interface__ spells bfloat16 "<V2" (as ml_dtypes does).
_BF16_TYPESTR = "<V2"


def _dtype(dtype):
    """(numpy dtype of the stored bits, CAI typestr) for a dtype or "bfloat16"."""
    if isinstance(dtype, str) and dtype == BFLOAT16:
        return np.dtype(np.uint16), _BF16_TYPESTR
    d = np.dtype(dtype)
    return d, d.str


def bf16_bits(values):
    """float32 values -> bfloat16 bits (uint16), rounded to nearest even (NaN kept NaN)."""
    f = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (f + 0x7FFF + ((f >> 16) & 1)) >> 16
    nan = np.isnan(f.view(np.float32))
    return np.where(nan, (f >> 16) | 0x40, rounded).astype(np.uint16)


def bf16_values(bits):
    """bfloat16 bits (uint16) -> float32 values."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


class DeviceArray:
    """An n-dimensional array in fake device memory, with a __cuda_array_interface__
    (version 3) as CuPy and torch give: typestr as numpy spells it ("<f2", "<f4", "|i1",
    ...; bfloat16 is "<V2" like torch's), data=(ptr, False), strides None when C-contiguous
    and in bytes otherwise, stream 1 (the legacy default stream) unless one was given.
    bfloat16 arrays hold their bits as uint16 on the host side (see bf16_bits)."""

    def __init__(self, cuda, shape, dtype, device=0, stream=None, *, _ptr=None, _strides=None, _base=None):
        self.cuda = cuda
        self.shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        self.dtype = dtype if dtype == BFLOAT16 else np.dtype(dtype)
        self._np_dtype, self.typestr = _dtype(dtype)
        self.itemsize = self._np_dtype.itemsize
        self.device = device
        self.stream = STREAM_LEGACY if stream is None else stream
        self._base = _base
        self._owned = _ptr is None
        self.strides = _strides  # bytes, or None when C-contiguous
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.nbytes = self.size * self.itemsize
        self.ptr = cuda.malloc(self.nbytes, device) if self._owned else _ptr

    @classmethod
    def from_numpy(cls, array, device=0, cuda=None, dtype=None, stream=None):
        """A device copy of a host array; dtype=BFLOAT16 stores float values as bfloat16."""
        cuda = cuda or FakeCuda()
        host = np.asarray(array)
        if dtype == BFLOAT16:
            host = bf16_bits(host) if host.dtype != np.uint16 else host
        out = cls(cuda, host.shape, dtype or host.dtype, device, stream)
        if out.nbytes:
            cuda.memcpy_htod(out.ptr, host)
        return out

    def __del__(self):
        if getattr(self, "_owned", False) and self.ptr:
            try:
                self.cuda.free(self.ptr)
            except Exception:
                pass  # interpreter shutdown
            self.ptr = 0

    @property
    def is_contiguous(self):
        return self.strides is None

    def _geometry(self):
        strides = self.strides or _c_strides(self.shape, self.itemsize)
        lo, hi = _extent(self.shape, strides, self.itemsize)
        return strides, lo, hi

    def __getitem__(self, key):
        """A view (numpy indexing: integers, slices with steps, negative steps), sharing
        the memory. The geometry comes from numpy over the fake device bytes; no byte is
        read."""
        strides, lo, hi = self._geometry()
        raw = (ctypes.c_char * max(hi - lo, 1)).from_address(self.ptr + lo)
        view = np.ndarray(self.shape, self._np_dtype, buffer=raw, offset=-lo, strides=strides)[key]
        ptr = view.__array_interface__["data"][0]
        contiguous = view.flags.c_contiguous
        return DeviceArray(self.cuda, view.shape, self.dtype, self.device, self.stream, _ptr=ptr,
                           _strides=None if contiguous else tuple(view.strides), _base=self)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.typestr, "data": (self.ptr if self.size else 0, False),
                "strides": self.strides, "version": 3, "stream": self.stream}

    def to_numpy(self):
        """A host copy (through cudaMemcpy device-to-host, as a real device needs)."""
        if self.size == 0:
            return np.empty(self.shape, dtype=self._np_dtype)
        strides, lo, hi = self._geometry()
        raw = np.empty(hi - lo, dtype=np.uint8)
        self.cuda.memcpy(raw.ctypes.data, self.ptr + lo, hi - lo, D2H)
        return np.ndarray(self.shape, self._np_dtype, buffer=raw, offset=-lo, strides=strides).copy()

    def __repr__(self):
        return (f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device={self.device}, "
                f"ptr={self.ptr:#x}, strides={self.strides})")


def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _extent(shape, strides, itemsize):
    """(lowest, highest + itemsize) byte offsets an array touches, relative to its pointer."""
    lo = sum(s * (n - 1) for n, s in zip(shape, strides) if s < 0)
    hi = sum(s * (n - 1) for n, s in zip(shape, strides) if s > 0) + itemsize
    return lo, hi


# ---------------------------------------------------------------- multi-process tests

class Board:
    """A file per key: what one rank posts another reads (spawned ranks share no memory)."""

    def __init__(self, folder):
        self.folder = str(folder)

    def put(self, key, data):
        tmp = os.path.join(self.folder, f".{key}.{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(self.folder, key))

    def get(self, key, timeout=15):
        path, end = os.path.join(self.folder, key), time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > end:
                raise TimeoutError(f"nobody posted {key!r}")
            time.sleep(0.005)
        with open(path, "rb") as f:
            return f.read()


def spawn(fn, n, *args, devices=1, timeout=30):
    """fn(rank, n, *args) on n spawned processes (never forked: the fakes run threads)
    that see `devices` fake GPUs and NPUs; returns their results (harness.run_ranks)."""
    env = child_env(devices=devices, base={})
    return run_ranks(fn, n, mode="process", start_method="spawn", timeout=timeout, args=args, env=env)
