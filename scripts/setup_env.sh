#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system packages (when root and missing),
# a virtual environment in .venv with the Python dependencies, and the extension build.
# Called by `make venv`; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin libopenmpi-dev)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: missing ${need_apt[*]} (not root: MPI and namespace tests will skip)"
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
# torch==2.13.0 pinned: it is the CPU build that lies on this machine's disk. An
# unpinned torch would pull a CUDA build of several GB.
if ! "$VPY" -c "import torch, numpy, pytest, pybind11" >/dev/null 2>&1; then
  "$VPY" -m pip install -q --upgrade pip setuptools wheel
  "$VPY" -m pip install -q "torch==2.13.0" numpy pytest pybind11 matplotlib
fi
# The NCCL wheel (305 MB, no dependencies pulled): its libnccl.so.2 answers ncclGetVersion
# and ncclGetUniqueId without a GPU, so the NCCL loader tests and the check of hcomm's NCCL
# declarations against its nccl.h run on every machine. Optional: they skip without it.
if ! "$VPY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('nvidia.nccl') is None)" \
    >/dev/null 2>&1; then
  "$VPY" -m pip install -q --no-deps nvidia-nccl-cu13 || echo "setup: nvidia-nccl-cu13 not installed; NCCL loader tests will skip"
fi
if command -v mpicc >/dev/null 2>&1 && ! "$VPY" -c "import mpi4py" >/dev/null 2>&1; then
  "$VPY" -m pip install -q mpi4py || echo "setup: mpi4py failed to build; MPI peers will skip"
fi
