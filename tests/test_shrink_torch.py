"""torch.distributed on hcomm goes on after a rank dies, without restarting processes
(hcomm.torch.shrink_world), and ProcessGroupHcomm.abort() fails the peers' waits at once.

The training check: plain SGD on the mean loss of a fixed global batch gives the same
parameters whatever the number of data-parallel ranks, so the survivors' parameters
after the kill and the redone step must equal a dense single-process run of the same
steps (float32 summation order aside)."""
import json

from harness import launch_scripts

TRAIN = r"""
import datetime, json, os, signal, time
import torch, torch.distributed as dist
import hcomm, hcomm.torch
from torch.nn.parallel import DistributedDataParallel as DDP

GLOBAL, STEPS = 12, 8
victim, kill_step = int(os.environ["VICTIM"]), int(os.environ["KILL_STEP"])
dist.init_process_group("hcomm", timeout=datetime.timedelta(seconds=20))

def model_():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(13, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))

data = torch.randn(STEPS * GLOBAL, 13, generator=torch.Generator().manual_seed(1))
target = torch.randn(STEPS * GLOBAL, 3, generator=torch.Generator().manual_seed(2))
model = model_()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
ddp = DDP(model)
step, resumed, old_ranks, killed_at = 0, None, None, None
while step < STEPS:
    rank, world = dist.get_rank(), dist.get_world_size()
    per = GLOBAL // world
    lo = step * GLOBAL + rank * per
    if old_ranks is None and rank == victim and step == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(data[lo:lo + per]), target[lo:lo + per]).backward()
        opt.step()
        step += 1
    except (RuntimeError, hcomm.Error):
        killed_at = time.monotonic()
        _, _, old_ranks = hcomm.torch.shrink_world()
        resumed = time.monotonic() - killed_at
        ddp = DDP(model)   # the same parameters: the failed step never reached opt.step()
ref = model_()
ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
for s in range(STEPS):
    ref_opt.zero_grad()
    torch.nn.functional.mse_loss(ref(data[s * GLOBAL:(s + 1) * GLOBAL]), target[s * GLOBAL:(s + 1) * GLOBAL]).backward()
    ref_opt.step()
err = max((p - r).abs().max().item() for p, r in zip(model.parameters(), ref.parameters()))
print(json.dumps({"rank": dist.get_rank(), "world": dist.get_world_size(), "old_ranks": old_ranks,
                  "err": err, "resumed_s": resumed}), flush=True)
dist.destroy_process_group()
"""


def _launch(n, code, extra, timeout=120):
    return launch_scripts(n, code, dict(HCOMM_TIMEOUT="20", **extra), timeout)


def test_ddp_goes_on_after_a_rank_is_killed():
    results = _launch(4, TRAIN, {"VICTIM": "2", "KILL_STEP": "3"})
    assert results[2][0] == -9  # the victim died of SIGKILL
    rows = []
    for r, (rc, out, err) in enumerate(results):
        if r == 2:
            continue
        assert rc == 0, f"rank {r} rc {rc}\n{err}"
        rows.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(row["rank"] for row in rows) == [0, 1, 2]
    for row in rows:
        assert row["world"] == 3 and row["old_ranks"] == [0, 1, 3]
        assert row["err"] < 1e-5, row
        assert row["resumed_s"] < 20 + 10, row


ABORT = r"""
import datetime, json, os, time
import torch, torch.distributed as dist
import hcomm.torch
dist.init_process_group("hcomm", timeout=datetime.timedelta(seconds=60))
rank = dist.get_rank()
if rank == 0:
    time.sleep(0.5)
    dist.distributed_c10d._get_default_group().abort()
    print(json.dumps({"rank": 0}), flush=True)
else:
    t0 = time.monotonic()
    try:
        dist.all_reduce(torch.ones(5))
        print(json.dumps({"rank": rank, "error": None}), flush=True)
    except Exception as e:
        print(json.dumps({"rank": rank, "error": str(e)[-300:], "seconds": time.monotonic() - t0}), flush=True)
"""


def test_process_group_abort_fails_the_peers_at_once():
    results = _launch(3, ABORT, {})
    rows = [json.loads(out.strip().splitlines()[-1]) for rc, out, err in results]
    for row in rows[1:]:
        assert row["error"] and "ProcessGroupHcomm.abort()" in row["error"], row
        assert row["seconds"] < 10, row  # the group's timeout is 60 s: the notice ended the wait
