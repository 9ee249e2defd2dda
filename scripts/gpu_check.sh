#!/usr/bin/env bash
# The device check (issue 18, item 5): build hcomm with CUDA in place, then run every
# device part, each timed and bounded, and write one summary into OUT_DIR.
#
#     scripts/gpu_check.sh OUT_DIR
#
# Made for a lent machine with ONE NVIDIA GPU, no network and no pip, whose python3
# already holds torch (CUDA build), CuPy, mpi4py, pybind11, pytest, numpy and the
# nvidia-nccl wheel; the whole run fits in 8 minutes (HCOMM_GPU_CHECK_BUDGET seconds,
# default 450). Without a device every part is reported "skipped: no device" and the
# exit status is 0, in about a second. Exit status 1: a part failed (or ran out of
# time); 2: bad usage. HCOMM_GPU_CHECK_PYTHON picks the interpreter (default python3).
# The parts and how each is judged: scripts/gpu_check.py; docs/hardware.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "$#" -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
cd "$here/.."
exec "${HCOMM_GPU_CHECK_PYTHON:-python3}" "$here/gpu_check.py" "$1"
