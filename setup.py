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


def _cuda_home():
    """(nvcc, toolkit folder holding lib64/libcudart_static.a); nvcc may be a wrapper script."""
    nvcc = shutil.which("nvcc")
    guesses = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if nvcc:
        guesses.insert(2, os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    guesses += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    home = next((g for g in guesses if g and os.path.exists(os.path.join(g, "lib64", "libcudart_static.a"))), None)
    return (nvcc, home) if home else (None, None)


# CUDA: nvcc compiles csrc/**/*.cu into objects linked into hcomm._C, for sm_80 and
# sm_90 (plus compute_90 PTX, so newer GPUs JIT it). The runtime is linked statically:
# libcudart_static opens the driver only on the first CUDA call, so `import hcomm`
# works on machines with no GPU and no driver.
CUDA_ARCHS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
              "-gencode", "arch=compute_90,code=compute_90"]


def _cuda_objects(build_temp, home):
    """Compile each .cu whose object is older than it (or than a header it may include)."""
    nvcc = shutil.which("nvcc") or os.path.join(home, "bin", "nvcc")
    headers = glob.glob("csrc/common/*.h") + glob.glob("csrc/reduce/*.h")  # what the .cu files include
    newest_header = max((os.path.getmtime(h) for h in headers), default=0)
    objects = []
    for cu in sorted(glob.glob("csrc/**/*.cu", recursive=True)):
        obj = os.path.join(build_temp, "cuda", cu.replace("/", "_") + ".o")
        objects.append(obj)
        if os.path.exists(obj) and os.path.getmtime(obj) >= max(os.path.getmtime(cu), newest_header):
            continue
        os.makedirs(os.path.dirname(obj), exist_ok=True)
        cmd = [nvcc, "-c", cu, "-o", obj, "-O3", "-std=c++17", "-Icsrc", "-Xcompiler", "-fPIC,-fvisibility=hidden",
               "-DHCOMM_WITH_CUDA=1", *CUDA_ARCHS]
        print(" ".join(cmd), flush=True)
        subprocess.check_call(cmd)
    return objects


class BuildExt(build_ext):
    def build_extensions(self):
        if with_cuda:
            _, home = _cuda_home()
            if home is None:
                raise RuntimeError("HCOMM_WITH_CUDA=1 but no CUDA toolkit with lib64/libcudart_static.a was found "
                                   "(set CUDA_HOME, or HCOMM_WITH_CUDA=0)")
            lib = os.path.join(home, "lib64")
            for ext_ in self.extensions:
                ext_.extra_objects = _cuda_objects(self.build_temp, home) + [os.path.join(lib, "libcudart_static.a")]
                # The runtime's symbols stay inside _C, clear of any libcudart torch loads.
                ext_.extra_link_args = ext_.extra_link_args + ["-lrt", "-Wl,--exclude-libs,libcudart_static.a"]
        super().build_extensions()


mpi = _mpi_flags()
with_mpi = _switch("HCOMM_WITH_MPI", mpi is not None)
with_cuda = _switch("HCOMM_WITH_CUDA", _cuda_home()[0] is not None)

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
setup(packages=packages, package_dir=package_dir, ext_modules=[ext], cmdclass={"build_ext": BuildExt})
