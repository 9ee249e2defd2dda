"""The CUDA part of the build, checked on every machine (no GPU needed).

Where nvcc exists the kernels are compiled here for sm_80 and sm_90 (a build check, not
skipped), the extension says it has them, and it still loads with no GPU or driver."""
import os
import shutil
import subprocess
import sys

import pytest

import hcomm
from hcomm import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA kernels are not built here")


@needs_nvcc
def test_kernels_compile_for_sm80_and_sm90(tmp_path):
    obj = tmp_path / "kernels.o"
    # ptxas -v names the architecture of every kernel it assembles.
    cmd = [NVCC, "-c", os.path.join(ROOT, "csrc/reduce/cuda_kernels.cu"), "-o", str(obj), "-std=c++17", "-O3",
           "-I", os.path.join(ROOT, "csrc"), "-Xcompiler", "-fPIC", "-Werror", "all-warnings", "-Xptxas", "-v",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert obj.stat().st_size > 0
    for arch in ("sm_80", "sm_90"):
        assert f"for '{arch}'" in done.stderr, f"no kernel assembled for {arch}"
    assert "reduceKernel" in done.stderr and "scaleKernel" in done.stderr and "divideKernel" in done.stderr


@needs_nvcc
def test_build_config_reports_the_kernels():
    if os.environ.get("HCOMM_WITH_CUDA", "") in ("0", "false", "no"):
        pytest.skip("built with HCOMM_WITH_CUDA=0")
    assert hcomm.build_config()["with_cuda"] is True
    assert _C.cuda_report()["built_with_kernels"] is True
    assert hasattr(_C, "cuda_self_test") and hasattr(_C, "_cuda_reduce")


def test_extension_needs_no_cuda_library_to_load():
    """The runtime is linked statically; nothing CUDA is a load-time dependency."""
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not found")
    dyn = subprocess.run([readelf, "-d", _C.__file__], check=True, capture_output=True, text=True).stdout
    needed = [line for line in dyn.splitlines() if "(NEEDED)" in line]
    assert not [n for n in needed if "cuda" in n or "nccl" in n or "hccl" in n or "ascend" in n], needed


def test_import_and_report_without_a_device():
    # A fresh interpreter: import, ask for the devices, run a CPU collective.
    code = ("import numpy as np, hcomm, hcomm.gpu as g; r = g.availability(); "
            "c = hcomm.init(0, 1); x = np.arange(5, dtype=np.float32); c.allreduce(x); "
            "assert (x == np.arange(5)).all(); print(r['cuda']['device_count'])")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    count = int(out.stdout.strip().splitlines()[-1])
    report = _C.cuda_report()
    assert count == report["device_count"]
    if count == 0:
        assert report["reason"], "no device must come with the runtime's reason"
