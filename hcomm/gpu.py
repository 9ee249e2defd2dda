"""GPU and NPU helpers: where NCCL comes from and what this machine offers.

    import hcomm.gpu
    print(hcomm.gpu.report())              # build, CUDA runtime/devices, NCCL, HCCL

Collectives on device buffers go through `hcomm.init()`'s Communicator, which sets up
NCCL itself when every rank has a GPU of its own (NCCL's collectives priced by the tuner,
NCCL point to point under hcomm's algorithms; see docs/hardware.md):

    comm = hcomm.init()
    comm.allreduce(t)                      # torch CUDA tensor or CuPy array, in place

NCCL is loaded at run time. The library is looked for in this order: HCOMM_NCCL_LIB, the
nvidia-nccl wheel (`pip install nvidia-nccl-cu13`, or -cu12; torch's CUDA wheels pull
one in), then the system search path. Nothing here needs a GPU to import.
"""
import importlib.util
import os

from . import _C


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
    """A fresh ncclUniqueId (128 bytes), from the NCCL hcomm loads (a loader check)."""
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


if __name__ == "__main__":
    print(report())
