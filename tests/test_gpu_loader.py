"""NCCL and HCCL loaders, no GPU needed.

- NCCL: version and unique id from a real libnccl.so.2 (the nvidia-nccl wheel or
  HCOMM_NCCL_LIB; `make test` installs the wheel, skipped where there is none),
  and a clear error naming every path tried where it is missing.
- hcomm's own NCCL and CUDA runtime declarations (csrc/transport/nccl_api.h) compiled
  next to the real nccl.h / cuda_runtime_api.h: every enumerator, size and function type.
- HCCL: absent here, so the error must name the library and the paths tried; the fake
  libascendcl/libhccl pair of tests/fake_cuda/ drives the loader and HcclComm end to end
  on host memory, and a library lacking a symbol is reported by name.
"""
import glob
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import fake_device
import hcomm
import hcomm.gpu as gpu
from hcomm import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = shutil.which("g++") or shutil.which("c++")


def _nccl_lib():
    env = os.environ.get("HCOMM_NCCL_LIB")
    if env and os.path.exists(env):
        return env
    found = gpu.nccl_library_candidates()
    return found[0] if found else None


def _nccl_header():
    env = os.environ.get("HCOMM_NCCL_INCLUDE")
    if env and os.path.exists(os.path.join(env, "nccl.h")):
        return env
    lib = _nccl_lib()
    if lib:
        inc = os.path.join(os.path.dirname(os.path.dirname(lib)), "include")
        if os.path.exists(os.path.join(inc, "nccl.h")):
            return inc
    return None


def _cuda_include():
    nvcc = shutil.which("nvcc")
    guesses = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    if nvcc:
        guesses.insert(1, os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for g in guesses:
        if g and os.path.exists(os.path.join(g, "include", "cuda_runtime_api.h")):
            return os.path.join(g, "include")
    return None


def _run(code, env=None, timeout=60):
    full = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full, timeout=timeout)


# ---------------------------------------------------------------- NCCL, real library

needs_nccl = pytest.mark.skipif(_nccl_lib() is None, reason="no libnccl.so.2 (pip install nvidia-nccl-cu13 or set "
                                                             "HCOMM_NCCL_LIB)")


@needs_nccl
def test_nccl_version_from_the_library():
    code, text, path = _C.nccl_version([_nccl_lib()])
    assert os.path.exists(path)
    assert code >= 21800, f"NCCL {text} is older than 2.18 (ncclCommSplit)"
    major, minor, patch = (int(x) for x in text.split("."))
    assert code == major * 10000 + minor * 100 + patch


@needs_nccl
def test_nccl_unique_id():
    a = _C.nccl_unique_id([_nccl_lib()])
    b = gpu.nccl_unique_id() if gpu.nccl_library_candidates() else _C.nccl_unique_id([_nccl_lib()])
    assert isinstance(a, bytes) and len(a) == 128
    assert a != b, "two unique ids must differ"


def test_nccl_missing_names_every_path_tried():
    # A fresh process, so no library is loaded yet; HCOMM_NCCL_LIB points nowhere.
    out = _run("""
        import hcomm
        from hcomm import _C
        try:
            print("LOADED", _C.nccl_version([])[2])
        except hcomm.Error as e:
            print("ERROR", e)
    """, env={"HCOMM_NCCL_LIB": "/nonexistent/libnccl.so.2"})
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("LOADED"):
        pytest.skip("a system libnccl.so.2 exists: " + out.stdout)
    assert "/nonexistent/libnccl.so.2" in out.stdout
    assert "libnccl.so.2" in out.stdout and "HCOMM_NCCL_LIB" in out.stdout


# ---------------------------------------------------------------- declarations

# Maps both sides' types onto one vocabulary, then compares function types exactly.
_NORMALIZE = r"""
#include <cstddef>
#include <type_traits>
#include "transport/nccl_api.h"
template <class T> struct N { using type = T; };
template <class T> struct N<T*> { using type = typename N<T>::type*; };
template <class T> struct N<const T> { using type = const typename N<T>::type; };
template <class R, class... A> struct N<R (*)(A...)> { using type = typename N<R>::type (*)(typename N<A>::type...); };
#define SAME_KIND(ours, theirs) struct K_##ours {}; \
  template <> struct N<ours> { using type = K_##ours; }; template <> struct N<theirs> { using type = K_##ours; };
#define SAME_FN(ours, theirs) static_assert(std::is_same<typename N<ours>::type, \
  typename N<decltype(&theirs)>::type>::value, #theirs ": hcomm's declaration differs from the header");
"""

_NCCL_CHECK = r"""
#include <nccl.h>
namespace n = hcomm::nccl;
using NResult = n::Result; using NType = n::DataType; using NOp = n::RedOp; using NRes = n::ScalarResidence;
using NId = n::UniqueId; using NConfig = n::Config;
SAME_KIND(NResult, ncclResult_t) SAME_KIND(NType, ncclDataType_t) SAME_KIND(NOp, ncclRedOp_t)
SAME_KIND(NRes, ncclScalarResidence_t) SAME_KIND(NId, ncclUniqueId) SAME_KIND(NConfig, ncclConfig_t)
#define CHECK_NCCL(name) SAME_FN(n::name##Fn, ::nccl##name)
HCOMM_NCCL_FUNCTIONS(CHECK_NCCL)
static_assert(sizeof(n::UniqueId) == sizeof(ncclUniqueId) && n::kUniqueIdBytes == NCCL_UNIQUE_ID_BYTES, "id");
static_assert(n::kSplitNoColor == NCCL_SPLIT_NOCOLOR, "nocolor");
#define V(x) static_assert(int(n::x) == int(::x), #x);
V(ncclSuccess) V(ncclUnhandledCudaError) V(ncclSystemError) V(ncclInternalError) V(ncclInvalidArgument)
V(ncclInvalidUsage) V(ncclRemoteError) V(ncclInProgress)
V(ncclInt8) V(ncclUint8) V(ncclInt32) V(ncclUint32) V(ncclInt64) V(ncclUint64) V(ncclFloat16) V(ncclFloat32)
V(ncclFloat64) V(ncclBfloat16) V(ncclSum) V(ncclProd) V(ncclMax) V(ncclMin) V(ncclAvg)
V(ncclScalarDevice) V(ncclScalarHostImmediate)
static_assert(std::is_same<n::Comm, ncclComm_t>::value && std::is_same<n::Stream, cudaStream_t>::value, "handles");
int main() { return 0; }
"""

_CUDA_CHECK = r"""
#include <cuda_runtime_api.h>
namespace c = hcomm::cuda;
using CError = c::Error; using CKind = c::MemcpyKind; using CMemType = c::MemoryType;
using CIpcMem = c::IpcMemHandle; using CIpcEvent = c::IpcEventHandle; using CAttr = c::PointerAttributes;
SAME_KIND(CError, cudaError_t) SAME_KIND(CKind, cudaMemcpyKind) SAME_KIND(CMemType, cudaMemoryType)
SAME_KIND(CIpcMem, cudaIpcMemHandle_t) SAME_KIND(CIpcEvent, cudaIpcEventHandle_t) SAME_KIND(CAttr, cudaPointerAttributes)
#define CHECK_CUDA(name) SAME_FN(c::name##Fn, ::cuda##name)
HCOMM_CUDART_FUNCTIONS(CHECK_CUDA)
#define V(x) static_assert(int(c::x) == int(::x), #x);
V(cudaSuccess) V(cudaErrorNotReady) V(cudaErrorInvalidValue) V(cudaErrorMemoryAllocation) V(cudaErrorInvalidDevice)
V(cudaErrorDeviceUninitialized) V(cudaErrorMapBufferObjectFailed) V(cudaErrorInvalidResourceHandle)
V(cudaMemoryTypeUnregistered) V(cudaMemoryTypeHost) V(cudaMemoryTypeDevice) V(cudaMemoryTypeManaged)
V(cudaMemcpyHostToHost) V(cudaMemcpyHostToDevice) V(cudaMemcpyDeviceToHost)
V(cudaMemcpyDeviceToDevice) V(cudaMemcpyDefault)
static_assert(c::kStreamNonBlocking == cudaStreamNonBlocking && c::kEventDisableTiming == cudaEventDisableTiming &&
              c::kHostAllocDefault == cudaHostAllocDefault && c::kEventInterprocess == cudaEventInterprocess &&
              c::kIpcMemLazyEnablePeerAccess == cudaIpcMemLazyEnablePeerAccess &&
              c::kIpcHandleBytes == CUDA_IPC_HANDLE_SIZE, "flags");
#define L(f) static_assert(offsetof(c::PointerAttributes, f) == offsetof(cudaPointerAttributes, f), #f);
L(type) L(device) L(devicePointer) L(hostPointer)
static_assert(sizeof(c::PointerAttributes) == sizeof(cudaPointerAttributes) &&
              sizeof(c::IpcMemHandle) == sizeof(cudaIpcMemHandle_t) &&
              sizeof(c::IpcEventHandle) == sizeof(cudaIpcEventHandle_t), "struct sizes");
using CHostFn = c::HostFn;
static_assert(std::is_same<CHostFn, cudaHostFn_t>::value, "host fn");
static_assert(std::is_same<c::Stream, cudaStream_t>::value && std::is_same<c::Event, cudaEvent_t>::value, "handles");
int main() { return 0; }
"""


def _compile(tmp_path, body, includes):
    if CXX is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "check.cc"
    src.write_text(_NORMALIZE + body)
    cmd = [CXX, "-std=c++17", "-fsyntax-only", "-I", os.path.join(ROOT, "csrc")]
    for inc in includes:
        cmd += ["-I", inc]
    done = subprocess.run(cmd + [str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


def test_cuda_runtime_declarations_match_the_toolkit(tmp_path):
    inc = _cuda_include()
    if inc is None:
        pytest.skip("no CUDA toolkit headers (cuda_runtime_api.h)")
    _compile(tmp_path, _CUDA_CHECK, [inc])


def test_nccl_declarations_match_the_wheel_header(tmp_path):
    nccl_inc, cuda_inc = _nccl_header(), _cuda_include()
    if nccl_inc is None or cuda_inc is None:
        pytest.skip("needs the nvidia-nccl wheel's nccl.h (or HCOMM_NCCL_INCLUDE) and the CUDA headers")
    _compile(tmp_path, _NCCL_CHECK, [nccl_inc, cuda_inc])


def test_the_declaration_check_catches_a_difference(tmp_path):
    """The checker itself: a wrong signature must fail to compile."""
    inc = _cuda_include()
    if inc is None:
        pytest.skip("no CUDA toolkit headers")
    wrong = _CUDA_CHECK.replace("int main()", "SAME_FN(c::FreeFn, ::cudaMalloc)\nint main()")
    with pytest.raises(AssertionError, match="cudaMalloc"):
        _compile(tmp_path, wrong, [inc])


# ---------------------------------------------------------------- HCCL

def test_hccl_absent_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HCOMM_ASCENDCL_LIB", "/nonexistent/libascendcl.so")
    ok, why = _C.hccl_available()
    if ok:
        pytest.skip("a real CANN stack is installed here")
    assert "libascendcl.so" in why and "/nonexistent/libascendcl.so" in why and "tried" in why
    with pytest.raises(hcomm.Error, match="HCCL is not available.*libascendcl.so"):
        _C.hccl_root_info()
    with pytest.raises(hcomm.Error, match="HCCL is not available"):
        _C.HcclComm(0, 1, b"\0" * 4108, 0)
    assert gpu.availability()["hccl"]["available"] is False


def _fake_libs(tmp_path, broken=False):
    """The fake AscendCL/HCCL pair of tests/fake_cuda/ (multi-process; see
    tests/test_fake_cuda.py); broken=True builds an HCCL that lacks HcclSend."""
    libs = fake_device.libraries()
    hccl = fake_device.build("hccl", tmp_path, defines=["HCOMM_FAKE_HCCL_NO_SEND"],
                             deps_dir=os.path.dirname(libs["ascendcl"])) if broken else libs["hccl"]
    return {"HCOMM_ASCENDCL_LIB": libs["ascendcl"], "HCOMM_HCCL_LIB": hccl, "HCOMM_FAKE_NPU_DEVICES": "1"}


def test_hccl_loader_and_comm_against_a_fake_library(tmp_path):
    out = _run("""
        import numpy as np, hcomm
        from hcomm import _C
        ok, why = _C.hccl_available()
        assert ok, why
        info = _C.hccl_root_info()
        assert len(info) == 4108
        comm = _C.HcclComm(0, 1, info, 0)
        x = np.arange(7, dtype=np.float32); y = np.zeros_like(x)
        comm.allreduce(x.ctypes.data, y.ctypes.data, 7, "float32", "sum", 0)
        comm.synchronize()  # HCCL runs on the stream: the result is there after a sync
        assert (y == x).all()
        g, src = np.zeros(7, dtype=np.int64), np.arange(7)
        comm.allgather(src.ctypes.data, g.ctypes.data, 7, "int64", 0)
        comm.synchronize()
        assert (g == np.arange(7)).all()
        for bad, words in ((lambda: comm.allreduce(x.ctypes.data, y.ctypes.data, 7, "float32", "avg", 0), "avg"),
                           (lambda: comm.send(x.ctypes.data, 7, "float32", 0, 0), "not a peer"),
                           (lambda: comm.recv(x.ctypes.data, 7, "float32", 3, 0), "not a peer"),
                           (lambda: _C.HcclComm(0, 1, b"x", 0), "4108 bytes"),
                           (lambda: _C.HcclComm(0, 1, info, 1), "aclrtSetDevice failed with aclError 107001")):
            try:
                bad()
            except hcomm.Error as e:
                assert words in str(e), str(e)
            else:
                raise AssertionError("no error for " + words)
        print("OK")
    """, env=_fake_libs(tmp_path))
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


def test_hccl_library_lacking_a_function_is_named(tmp_path):
    out = _run("""
        from hcomm import _C
        print(_C.hccl_available())
    """, env=_fake_libs(tmp_path, broken=True))
    assert out.returncode == 0, out.stderr
    assert "False" in out.stdout and "HcclSend" in out.stdout and "not usable" in out.stdout, out.stdout
