"""hcomm: collective communication and training parallelism."""
from . import _C

build_config = _C.build_config
