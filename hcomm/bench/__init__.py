"""hcomm-bench: collective microbenchmarks in the nccl-tests tradition, peers side by side.

    hcomm-bench allreduce -b 4K -e 64M -f 4 --ranks 4 --compare gloo,mpi --json r.json --plot r.png
    python -m hcomm.bench --help

See cli.py for the flags and exit status, factors.py for the bandwidth arithmetic.
"""


def main(argv=None):
    from .cli import main as _main

    return _main(argv)


__all__ = ["main"]
