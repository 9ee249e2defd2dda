"""Builds hcomm._C from csrc/ (C++17, -O3, pybind11).

Optional parts are 0/1 build switches, detected automatically and overridable
from the environment:
  HCOMM_WITH_MPI   Open MPI's development files (mpicc --showme)
  HCOMM_WITH_CUDA  nvcc (CUDA reduction kernels, NCCL transport)
The default build runs on any x86-64: SIMD kernels are chosen at run time.
"""
import glob
import os
import shutil
import subprocess

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup


def _switch(name, detected):
    value = os.environ.get(name)
    if value is None:
        return 1 if detected else 0
    return 1 if value not in ("0", "", "false", "no") else 0


def _mpi_flags():
    try:
        compile_ = subprocess.check_output(["mpicc", "--showme:compile"], text=True).split()
        link = subprocess.check_output(["mpicc", "--showme:link"], text=True).split()
        return compile_, link
    except (OSError, subprocess.CalledProcessError):
        return None


def _sources():
    srcs = sorted(glob.glob("csrc/**/*.cc", recursive=True))
    return [s for s in srcs if "/tests/" not in s]


mpi = _mpi_flags()
with_mpi = _switch("HCOMM_WITH_MPI", mpi is not None)
with_cuda = _switch("HCOMM_WITH_CUDA", shutil.which("nvcc") is not None)

sources = _sources()
if not with_mpi:
    sources = [s for s in sources if not s.endswith("transport/mpi.cc")]

extra_compile = ["-O3", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
extra_link = ["-lpthread", "-ldl"]
if with_mpi:
    extra_compile += [f for f in mpi[0]]
    extra_link += [f for f in mpi[1]]

ext = Pybind11Extension(
    "hcomm._C",
    sources,
    include_dirs=["csrc"],
    cxx_std=17,
    define_macros=[("HCOMM_WITH_MPI", str(with_mpi)), ("HCOMM_WITH_CUDA", str(with_cuda))],
    extra_compile_args=extra_compile,
    extra_link_args=extra_link,
)

def _packages():
    """hcomm from hcomm/, hcomm.parallel from parallel/ (so no top-level `parallel`)."""
    from setuptools import find_packages

    pkgs = ["hcomm"] + ["hcomm." + p for p in find_packages("hcomm")]
    pkgs += ["hcomm.parallel"] + ["hcomm.parallel." + p for p in find_packages("parallel")]
    dirs = {"hcomm": "hcomm", "hcomm.parallel": "parallel"}
    return pkgs, dirs


ParallelCompile("HCOMM_BUILD_JOBS", default=2).install()
packages, package_dir = _packages()
setup(packages=packages, package_dir=package_dir, ext_modules=[ext], cmdclass={"build_ext": build_ext})
