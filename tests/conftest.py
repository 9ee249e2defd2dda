import os
import sys

# tests import the harness as a plain module
sys.path.insert(0, os.path.dirname(__file__))

# A hang in a test becomes an hcomm.Error naming the missing ranks (well inside the
# harness's own limit) instead of the 300 s default.
os.environ.setdefault("HCOMM_TIMEOUT", "60")
