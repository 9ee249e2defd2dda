"""How jobs reach the "hcomm" backend: tcp:// and file:// init methods (env:// is what
every other torch test uses), torchrun, and mpirun with no MASTER_ADDR at all."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

from harness import free_port, run_ranks

# Run by torchrun and by mpirun: the script a user would write, backend name changed only.
SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    import torch.distributed as dist
    had_master = "MASTER_ADDR" in os.environ
    import hcomm.torch  # registers "hcomm" (and, under mpirun, fills in torch's env:// variables)
    dist.init_process_group("hcomm")
    rank, n = dist.get_rank(), dist.get_world_size()
    t = torch.arange(5, dtype=torch.float32) * (rank + 1)
    dist.all_reduce(t)
    assert t.tolist() == [i * n * (n + 1) / 2 for i in range(5)], t
    objs = [None] * n
    dist.all_gather_object(objs, rank)
    assert objs == list(range(n)), objs
    print(f"rank {rank}/{n} backend {dist.get_backend()} had_master_addr {had_master} ok", flush=True)
    dist.destroy_process_group()
""")


def _init_methods_body(rank, n, port, path):
    import hcomm.torch  # noqa: F401 - registers the backend

    for method in (f"tcp://127.0.0.1:{port}", f"file://{path}"):
        dist.init_process_group("hcomm", init_method=method, rank=rank, world_size=n)
        t = torch.full((3,), float(rank + 1))
        dist.all_reduce(t)
        assert t.tolist() == [n * (n + 1) / 2] * 3, (method, t)
        out = [torch.empty(2, dtype=torch.int64) for _ in range(n)]
        dist.all_gather(out, torch.full((2,), rank, dtype=torch.int64))
        assert [o[0].item() for o in out] == list(range(n)), method
        dist.destroy_process_group()
    return "ok"


def test_tcp_and_file_init_methods(tmp_path):
    assert run_ranks(_init_methods_body, 2, mode="process", start_method="spawn", timeout=300,
                     args=(free_port(), str(tmp_path / "rendezvous"))) == ["ok", "ok"]


def _launch(cmd, tmp_path, env):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(cmd + [str(script)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _clean_env():
    """The test process may carry another launcher's variables; the job must not see them."""
    drop = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
            "HCOMM_UNIQUE_ID")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("OMPI_", "PMIX_"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_torchrun(tmp_path):
    out = _launch([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                   "--master-port", str(free_port())], tmp_path, _clean_env())
    for r in range(2):
        assert f"rank {r}/2 backend hcomm had_master_addr True ok" in out, out


def test_mpirun_without_master_addr(tmp_path):
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun is not installed")
    pytest.importorskip("mpi4py")
    out = _launch([mpirun, "--oversubscribe", "--allow-run-as-root", "-np", "2", sys.executable], tmp_path,
                  _clean_env())
    for r in range(2):
        assert f"rank {r}/2 backend hcomm had_master_addr False ok" in out, out
