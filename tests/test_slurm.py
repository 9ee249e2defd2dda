"""Slurm, for real: hostlist parsing and the env mapping without Slurm, then `srun -n 4`
of the array API and of a DDP script under a one-node Slurm that scripts/slurm_local.sh
installs and starts (as root; skipped with its reason when it cannot). Nothing sets
MASTER_ADDR, RANK or WORLD_SIZE: hcomm must find everything in Slurm's variables."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hcomm import InvalidArgument
from hcomm.launch import adopt_slurm_environment, expand_hostlist, slurm_master, slurm_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text,hosts", [
    ("vm", ["vm"]),
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("a1,b[8-10],c", ["a1", "b8", "b9", "b10", "c"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("gpu[009-011]-ib", ["gpu009-ib", "gpu010-ib", "gpu011-ib"]),
])
def test_expand_hostlist(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text,why", [("node[1-", "unclosed"), ("node[3-1]", "backwards"),
                                      ("node[a-b]", "bad range"), ("a,,b", "empty"), ("n[[1]]", "nested")])
def test_bad_hostlist_names_the_problem(text, why):
    with pytest.raises(InvalidArgument, match=why):
        expand_hostlist(text)


def test_env_mapping_fills_torch_variables_and_keeps_given_ones():
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
             "SLURM_STEP_NODELIST": "node[07-10]", "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "3",
             "SLURM_NTASKS_PER_NODE": "2"}
    env = dict(slurm)
    assert adopt_slurm_environment(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["GROUP_RANK"], env["LOCAL_WORLD_SIZE"]) == \
        ("5", "8", "1", "2", "2")
    assert env["MASTER_ADDR"] == "node07" and env["MASTER_PORT"] == str(slurm_port(4242, 3))
    given = dict(slurm, MASTER_ADDR="10.0.0.1", MASTER_PORT="29500", RANK="0")
    adopt_slurm_environment(given)
    assert (given["MASTER_ADDR"], given["MASTER_PORT"], given["RANK"]) == ("10.0.0.1", "29500", "0")
    assert not adopt_slurm_environment({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"})  # sbatch script, no step
    # two steps of one job at once get different ports; every port is outside the ephemeral range
    ports = {slurm_port(4242, s) for s in range(64)}
    assert len(ports) == 64 and all(12000 <= p < 32000 for p in ports)
    assert slurm_master(slurm) == ("node07", slurm_port(4242, 3))


# ---------------------------------------------------------------- under a real Slurm

@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("Slurm test needs root (scripts/slurm_local.sh installs and starts the daemons)")
    try:
        r = subprocess.run(["sh", str(ROOT / "scripts" / "slurm_local.sh")], capture_output=True, text=True,
                           timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("scripts/slurm_local.sh did not finish within 180 s")
    if r.returncode != 0 or shutil.which("srun") is None:
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"no local Slurm: {why}")


def _clean_env():
    """The test's environment without anything that would tell hcomm or torch how to meet."""
    drop = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
            "HCOMM_UNIQUE_ID", "TORCHELASTIC_USE_AGENT_STORE", "HCOMM_TOPO_FILE")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("SLURM_", "OMPI_", "PMI"))}
    env.update(HCOMM_TIMEOUT="60", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _srun(ntasks, code, timeout=120):
    cmd = ["srun", "--overcommit", "-n", str(ntasks), "--time=3", "--kill-on-bad-exit=1",
           sys.executable, "-c", code]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_clean_env(), cwd=str(ROOT))
    assert r.returncode == 0, f"srun rc {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return sorted(rows, key=lambda row: row["rank"])


ARRAY = r"""
import json, os
import numpy as np
import hcomm
assert "MASTER_ADDR" not in os.environ and "RANK" not in os.environ
comm = hcomm.init()
n = 1001
inputs = [np.random.default_rng([7, q]).standard_normal(n).astype(np.float32) for q in range(comm.size)]
x = inputs[comm.rank].copy()
comm.allreduce(x)
np.testing.assert_allclose(x, np.sum(np.array(inputs, np.float64), axis=0), rtol=1e-5, atol=1e-5)
g = np.zeros(comm.size, np.int64)
comm.allgather(np.array([int(os.environ["SLURM_PROCID"])], np.int64), g)
print(json.dumps({"rank": comm.rank, "size": comm.size, "local": hcomm.launch.local_rank(),
                  "procids": g.tolist()}))
comm.close()
"""


def test_srun_array_api(slurm):
    rows = _srun(4, ARRAY)
    assert [r["rank"] for r in rows] == [0, 1, 2, 3]
    assert all(r["size"] == 4 and r["procids"] == [0, 1, 2, 3] for r in rows)
    assert [r["local"] for r in rows] == [0, 1, 2, 3]  # one node: SLURM_LOCALID == SLURM_PROCID


DDP = r"""
import json, os
import torch, torch.distributed as dist
import hcomm.torch
from torch.nn.parallel import DistributedDataParallel as DDP
dist.init_process_group("hcomm")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(13, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
reference = [p.detach().clone() for p in model.parameters()]
data = torch.randn(world * 5, 13, generator=torch.Generator().manual_seed(1))
target = torch.randn(world * 5, 3, generator=torch.Generator().manual_seed(2))
ddp = DDP(model)
torch.nn.functional.mse_loss(ddp(data[rank * 5:(rank + 1) * 5]), target[rank * 5:(rank + 1) * 5]).backward()
# reference: the same model on the whole batch in this process (mean of the shard means)
ref = torch.nn.Sequential(torch.nn.Linear(13, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
with torch.no_grad():
    for p, r in zip(ref.parameters(), reference):
        p.copy_(r)
torch.nn.functional.mse_loss(ref(data), target).backward()
err = max((p.grad - r.grad).abs().max().item() for p, r in zip(model.parameters(), ref.parameters()))
print(json.dumps({"rank": rank, "world": world, "err": err, "master": os.environ["MASTER_ADDR"],
                  "backend": dist.get_backend()}))
dist.destroy_process_group()
"""


def test_srun_ddp_without_master_addr(slurm):
    rows = _srun(4, DDP, timeout=180)
    assert [r["rank"] for r in rows] == [0, 1, 2, 3]
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    for r in rows:
        assert r["world"] == 4 and r["backend"] == "hcomm" and r["master"] == host
        assert r["err"] < 1e-5, r
