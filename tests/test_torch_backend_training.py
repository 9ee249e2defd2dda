"""What training stacks do with the "hcomm" backend: DDP, FSDP2, new_group, DeviceMesh,
DTensor, async overlap, timeouts. Each is compared with a single-process reference on
seeded data. To keep spawning cheap, the world-2 run also repeats the collective matrix
of test_torch_backend.py and the world-4 run does the groups and the mesh.
"""
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from harness import run_torch
from test_torch_backend import JOB_TIMEOUT, all_collectives, close, data, fold

BACKEND = "hcomm"
STEPS = 5
LOCAL_BATCH = 6


def make_model(seed=0):
    torch.manual_seed(seed)
    # odd widths; six parameters so small buckets make several of them
    return nn.Sequential(nn.Linear(13, 31), nn.Tanh(), nn.Linear(31, 17), nn.Tanh(), nn.Linear(17, 5))


def batches(n):
    """Per step, every rank's (x, y); the reference trains on their concatenation."""
    g = torch.Generator().manual_seed(7)
    return [[(torch.randn(LOCAL_BATCH, 13, generator=g), torch.randn(LOCAL_BATCH, 5, generator=g))
             for _ in range(n)] for _ in range(STEPS)]


def reference_params(n, opt_cls=torch.optim.SGD, **opt_kw):
    """Single process, full batch: the mean loss over all ranks' samples."""
    model = make_model()
    opt = opt_cls(model.parameters(), **opt_kw)
    for step in batches(n):
        x = torch.cat([b[0] for b in step])
        y = torch.cat([b[1] for b in step])
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


# ---------------------------------------------------------------- DDP
def averaging_hook(state, bucket):
    """A comm hook the way users write them: async allreduce, then divide in .then()."""
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0].div_(dist.get_world_size()))


def train_ddp(rank, n, **ddp_kw):
    from torch.nn.parallel import DistributedDataParallel as DDP

    hook = ddp_kw.pop("hook", None)
    model = DDP(make_model(), bucket_cap_mb=0.001, **ddp_kw)  # ~1 KB buckets: several of them
    if hook is not None:
        model.register_comm_hook(None, hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in batches(n):
        x, y = step[rank]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach() for p in model.module.parameters()]


def check_ddp(rank, n):
    ref = reference_params(n, lr=0.1)
    for kw in ({}, {"gradient_as_bucket_view": True}, {"static_graph": True},
               {"hook": averaging_hook, "gradient_as_bucket_view": True}):
        got = train_ddp(rank, n, **kw)
        for k, (a, b) in enumerate(zip(got, ref)):
            close(a, b, f"DDP {kw} param {k}")


def powersgd_params(rank, n, group):
    """torch's PowerSGD hook: its .then() callbacks block on nested all_reduces.

    One bucket: with several, the hook of bucket i+1 (autograd thread) and the nested
    all_reduce of bucket i (a completion thread) race for the next collective slot on
    any CPU backend, Gloo included, and ranks may disagree on the order."""
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(make_model(), process_group=group)
    state = powersgd.PowerSGDState(process_group=group, matrix_approximation_rank=1, start_powerSGD_iter=2)
    model.register_comm_hook(state, powersgd.powerSGD_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in batches(n):
        x, y = step[rank]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach() for p in model.module.parameters()]


def check_powersgd_same_as_gloo(rank, n):
    gloo = dist.new_group(list(range(n)), backend="gloo")
    for k, (a, b) in enumerate(zip(powersgd_params(rank, n, None), powersgd_params(rank, n, gloo))):
        close(a, b, f"PowerSGD hcomm vs gloo param {k}")
    # Not destroyed here: PowerSGD's future callbacks keep the Gloo group alive, and if the
    # last reference went with one of them, ProcessGroupGloo's destructor would run on its
    # own worker thread and join it (std::terminate inside torch). The harness's final
    # destroy_process_group releases it on the main thread.


# ---------------------------------------------------------------- FSDP2
def check_fsdp2(rank, n):
    from torch.distributed.fsdp import fully_shard

    ref = reference_params(n, torch.optim.Adam, lr=1e-2)
    model = make_model()
    for layer in (model[0], model[2], model[4]):
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in batches(n):
        x, y = step[rank]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    for k, (p, r) in enumerate(zip(model.parameters(), ref)):
        close(p.full_tensor(), r, f"FSDP2 param {k}")


# ---------------------------------------------------------------- async, timeout
def check_async_overlap(rank, n):
    xs = [data(r, (1 << 18,), seed=200) for r in range(n)]
    t = xs[rank].clone()
    work = dist.all_reduce(t, async_op=True)
    a = torch.randn(96, 96)
    for _ in range(20):  # compute while the core reduces
        a = torch.tanh(a @ a)
    work.wait()
    assert work.is_completed()
    close(t, fold(xs, dist.ReduceOp.SUM), "async all_reduce")
    fut = dist.all_reduce(torch.ones(3), async_op=True).get_future()
    assert torch.equal(fut.then(lambda f: f.value()[0] * 2).wait(), torch.full((3,), 2.0 * n))


def check_timeout(rank, n):
    """A rank that never joins: the others get an error naming the op, not a hang."""
    import hcomm.torch

    late = dist.new_group(list(range(n)), timeout=timedelta(seconds=3))
    if rank == 0:
        work = dist.all_reduce(torch.ones(5), group=late, async_op=True)  # future failed by the progress thread
        with pytest.raises(RuntimeError, match="hcomm allreduce failed"):
            work.wait()
        assert work.is_completed() and work.exception() is not None
        # the core aborts a communicator after an error: later calls fail at once
        with pytest.raises(RuntimeError, match="hcomm allreduce failed"):
            dist.all_reduce(torch.ones(5), group=late)
    quiet = dist.new_group(list(range(n)), timeout=timedelta(seconds=3))
    if rank == 0:
        with pytest.raises(RuntimeError, match="rank 1 failed to pass monitored_barrier"):
            hcomm.torch.monitored_barrier(quiet, timeout=timedelta(seconds=2))
    dist.barrier()  # the world group is unaffected


def world2_training(rank, n):
    all_collectives(rank, n)
    for check in (check_ddp, check_powersgd_same_as_gloo, check_fsdp2, check_async_overlap, check_timeout):
        check(rank, n)
    return "ok"


# ---------------------------------------------------------------- groups, mesh, DTensor
def check_new_group(rank, n):
    for ranks in ([0, 2], [1, 3], [1, 2, 3]):
        g = dist.new_group(ranks)
        xs = [data(r, (11,), seed=300 + r) for r in range(n)]
        if rank in ranks:
            t = xs[rank].clone()
            dist.all_reduce(t, group=g)
            close(t, fold([xs[r] for r in ranks], dist.ReduceOp.SUM), f"new_group {ranks}")
            got = [torch.empty(11) for _ in ranks]
            dist.all_gather(got, xs[rank], group=g)
            assert all(torch.equal(a, xs[r]) for a, r in zip(got, ranks)), f"new_group {ranks} all_gather"
            b = xs[rank].clone()
            dist.broadcast(b, src=ranks[-1], group=g)  # a global rank, mapped by torch
            assert torch.equal(b, xs[ranks[-1]])


def check_mesh_dtensor(rank, n):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Partial, Replicate, Shard, distribute_tensor

    flat = init_device_mesh("cpu", (n,), mesh_dim_names=("world",))
    replicated = distribute_tensor(data(0, (n, 5), seed=399), flat, [Shard(0)]).full_tensor()
    assert torch.equal(replicated, data(0, (n, 5), seed=399)), "1-D mesh Shard(0) -> full"
    mesh = init_device_mesh("cpu", (2, n // 2), mesh_dim_names=("dp", "tp"))
    xs = [data(r, (7,), seed=400) for r in range(n)]
    for axis in ("dp", "tp"):
        members = mesh[axis].mesh.flatten().tolist()
        t = xs[rank].clone()
        dist.all_reduce(t, group=mesh.get_group(axis))
        close(t, fold([xs[r] for r in members], dist.ReduceOp.SUM), f"mesh axis {axis}")
    full = data(0, (6, 9), seed=401)  # the same on every rank
    d = distribute_tensor(full, mesh, [Shard(0), Shard(1)])
    assert torch.equal(d.redistribute(mesh, [Replicate(), Shard(0)]).full_tensor(), full)
    assert torch.equal(d.redistribute(mesh, [Shard(1), Replicate()]).to_local(),
                       full.chunk(2, dim=1)[mesh.get_local_rank("dp")])
    part = distribute_tensor(full, mesh, [Replicate(), Replicate()]).redistribute(mesh, [Replicate(), Replicate()])
    assert torch.equal(part.to_local(), full)
    # Partial -> Replicate is an allreduce through the functional collectives
    from torch.distributed.tensor import DTensor
    local = data(rank, (4, 3), seed=402)
    p = DTensor.from_local(local, mesh, [Partial(), Partial()])
    close(p.redistribute(mesh, [Replicate(), Replicate()]).to_local(),
          fold([data(r, (4, 3), seed=402) for r in range(n)], dist.ReduceOp.SUM), "Partial -> Replicate")


def world4_groups(rank, n):
    all_collectives(rank, n)
    check_new_group(rank, n)
    check_mesh_dtensor(rank, n)
    return "ok"


def test_training_world2():
    assert run_torch(world2_training, 2, backend=BACKEND, timeout=JOB_TIMEOUT) == ["ok"] * 2


def test_groups_mesh_dtensor_world4():
    assert run_torch(world4_groups, 4, backend=BACKEND, timeout=JOB_TIMEOUT) == ["ok"] * 4
