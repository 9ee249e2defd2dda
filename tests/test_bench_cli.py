"""hcomm-bench run for real: spawned ranks, the gloo and MPI peers, mpirun as launcher,
and hcomm itself once its core exists. Small sizes, few iterations: these check the
plumbing and the results, never the speed."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import hcomm
from hcomm.bench import factors, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_MPI = shutil.which("mpirun") is not None and __import__("importlib").util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpirun and mpi4py")
needs_hcomm = pytest.mark.skipif(not hasattr(hcomm, "init"), reason="hcomm core has no hcomm.init yet")
FAST = ["-n", "3", "-w", "1"]


def bench(*argv, timeout=180, launcher=()):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMIX_")) and k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [*launcher, sys.executable, "-m", "hcomm.bench", *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def load(path, proc):
    assert os.path.exists(path), f"no JSON written\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    with open(path) as f:
        doc = json.load(f)
    report.validate_document(doc)
    return doc


def check_rows(res, collective, nranks, sizes):
    assert res["status"] == "ok", res["note"]
    assert [r["size"] for r in res["rows"]] == sizes
    for row in res["rows"]:
        for mode in ("out_of_place", "in_place"):
            m = row[mode]
            if m is None:
                continue
            assert m["nwrong"] == 0
            assert m["time"] > 0
            assert m["alg_bw"] == pytest.approx(row["size"] / m["time"] / 1e3)
            assert m["bus_bw"] == pytest.approx(m["alg_bw"] * factors.bus_factor(collective, nranks))


def test_gloo_sweep_with_mpi_comparison(tmp_path):
    out, png = str(tmp_path / "r.json"), str(tmp_path / "r.png")
    proc = bench("allreduce", "--impl", "gloo", "--compare", "mpi", "--ranks", "2", "-b", "1K", "-e", "64K",
                 "-f", "8", *FAST, "--json", out, "--plot", png)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = load(out, proc)
    assert (doc["collective"], doc["ranks"], doc["primary"]) == ("allreduce", 2, "gloo")
    check_rows(doc["implementations"]["gloo"], "allreduce", 2, [1024, 8192, 65536])
    assert "# Avg bus bandwidth" in proc.stdout and "\r" not in proc.stderr  # no progress line off a tty
    assert open(png, "rb").read(4) == b"\x89PNG"
    if HAVE_MPI:
        check_rows(doc["implementations"]["mpi"], "allreduce", 2, [1024, 8192, 65536])
        ratios = doc["comparison"]["mpi"]
        assert [r["size"] for r in ratios] == [1024, 8192, 65536] and all(r["out_of_place"] > 0 for r in ratios)
        assert "gloo speed-up over each peer" in proc.stdout
    else:
        assert doc["implementations"]["mpi"]["status"] == "skipped"


def test_planted_wrong_result_is_counted_and_fails_the_run(tmp_path):
    out = str(tmp_path / "r.json")
    proc = bench("reduce", "-r", "1", "--impl", "gloo", "--ranks", "2", "-b", "1000", "-e", "1000", *FAST,
                 "--_plant-wrong", "3", "--json", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = load(out, proc)["implementations"]["gloo"]["rows"][0]
    assert (row["root"], row["out_of_place"]["nwrong"], row["in_place"]["nwrong"]) == (1, 3, 0)
    assert "# Out of bounds values : 3 FAILED" in proc.stdout


@needs_mpi
@pytest.mark.parametrize("collective", ["reduce_scatter", "alltoall", "broadcast"])
def test_mpi_peer_on_three_ranks_odd_sizes(collective, tmp_path):
    out = str(tmp_path / "r.json")
    proc = bench(collective, "--impl", "mpi", "--ranks", "3", "-r", "2", "-d", "int32", "-o", "max",
                 "-b", "100", "-e", "10000", "-f", "100", *FAST, "--json", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sizes = [factors.layout(collective, s, 4, 3).size_bytes for s in (100, 10000)]
    check_rows(load(out, proc)["implementations"]["mpi"], collective, 3, sizes)


@needs_mpi
def test_under_mpirun_every_process_is_a_rank(tmp_path):
    out = str(tmp_path / "r.json")
    proc = bench("allgather", "--impl", "mpi", "--compare", "gloo", "-b", "4K", "-e", "4K", *FAST, "--json", out,
                 launcher=[shutil.which("mpirun"), "--oversubscribe", "--allow-run-as-root", "-np", "2"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = load(out, proc)
    for name in ("mpi", "gloo"):  # gloo found its rendezvous through MPI
        check_rows(doc["implementations"][name], "allgather", 2, [4096])
        assert doc["implementations"][name]["launcher"] == "mpirun"
    assert proc.stdout.count("# hcomm-bench:") == 1  # only rank 0 reports


def test_usage_errors_exit_2():
    proc = bench("broadcast", "-r", "5", "--ranks", "2", "--impl", "gloo")
    assert proc.returncode == 2 and "root 5 is not a rank of a 2-rank world" in proc.stderr
    proc = bench("allreduce", "-t", "allgather")
    assert proc.returncode == 2 and "--collective allgather" in proc.stderr


# A sitecustomize that loads hcomm as usual, then removes hcomm.init: the state of a
# checkout whose compiled core predates the Communicator. Only the bench subprocess and
# the ranks it spawns (which inherit PYTHONPATH) see it.
_HIDE_INIT = """
import importlib.abc, importlib.util, sys

class _HideInit(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "hcomm":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec("hcomm")
        finally:
            sys.meta_path.insert(0, self)
        real = spec.loader

        class Loader(importlib.abc.Loader):
            def create_module(self, s):
                return real.create_module(s)

            def exec_module(self, module):
                real.exec_module(module)
                del module.init

        spec.loader = Loader()
        return spec

sys.meta_path.insert(0, _HideInit())
"""


def test_missing_hcomm_is_reported_not_faked(tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text(_HIDE_INIT)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    out = str(tmp_path / "r.json")
    proc = bench("allreduce", "--ranks", "2", "-b", "1K", "-e", "1K", *FAST, "--json", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    res = load(out, proc)["implementations"]["hcomm"]
    assert res["status"] == "skipped" and "hcomm.init" in res["note"] and res["rows"] == []


@needs_hcomm
@pytest.mark.parametrize("collective", factors.COLLECTIVES)
def test_hcomm_every_collective_on_three_ranks(collective, tmp_path):
    out = str(tmp_path / "r.json")
    proc = bench(collective, "--ranks", "3", "-r", "1", "-b", "100", "-e", "100000", "-f", "1000", *FAST,
                 "--json", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sizes = [0] if collective == "barrier" else [factors.layout(collective, s, 4, 3).size_bytes for s in (100, 100000)]
    check_rows(load(out, proc)["implementations"]["hcomm"], collective, 3, sizes)


@needs_hcomm
def test_hcomm_with_both_peers(tmp_path):
    out = str(tmp_path / "r.json")
    proc = bench("allreduce", "--ranks", "2", "--compare", "gloo,mpi", "-b", "4K", "-e", "64K", "-f", "16",
                 "--algo", "ring", *FAST, "--json", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = load(out, proc)
    check_rows(doc["implementations"]["hcomm"], "allreduce", 2, [4096, 65536])
    assert set(doc["comparison"]) == ({"gloo", "mpi"} if HAVE_MPI else {"gloo"})


@needs_hcomm
def test_progress_line_when_stderr_is_a_terminal():
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hcomm.bench", "allreduce", "--ranks", "2", "-b", "1K",
                             "-e", "16K", "-f", "4", *FAST], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closes when the last writer exits
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0
    assert b"hcomm allreduce: size 16384 B (3/3)" in seen
