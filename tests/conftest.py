import os
import sys

# One OpenMP thread per process, set before anything imports torch: the tests fork
# ranks, and a child forked after the parent started libgomp's thread pool deadlocks
# at its first parallel region (seen with torch's bfloat16 conversions). On 2 cores
# extra threads only slow the ranks down anyway.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(1)

# tests import the harness as a plain module
sys.path.insert(0, os.path.dirname(__file__))

# A hang in a test becomes an hcomm.Error naming the missing ranks (well inside the
# harness's own limit) instead of the 300 s default.
os.environ.setdefault("HCOMM_TIMEOUT", "60")
