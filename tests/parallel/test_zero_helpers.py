"""Rank bodies and helpers shared by the ZeRO tests (module level: spawned processes import them)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from hcomm.parallel.zero import ZeroOptimizer

IN, HID, OUT, BATCH = 7, 13, 5, 6
LR, WD = 1e-2, 0.1
# fp32 differs from the reference only by reduction order (measured ~2e-7). bf16 computes
# forward/backward in bf16 against an fp32 reference: AdamW turns tiny gradients into
# lr-sized steps of either sign, so a few elements may be off by up to ~2 lr over five
# steps (max), while the mean error must stay a small fraction of the mean movement.
TOL = {torch.float32: dict(rtol=1e-4, atol=2e-5), torch.bfloat16: dict(rtol=0, atol=3e-2)}
BF16_MEAN_ERR = 0.1   # mean |zero - ref| <= 0.1 x mean |ref - init|


class Tiny(nn.Module):
    """Odd sizes, a parameter on the root, a LayerNorm and a bias-free layer."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(IN))
        self.fc1 = nn.Linear(IN, HID)
        self.norm = nn.LayerNorm(HID)
        self.fc2 = nn.Linear(HID, HID, bias=False)
        self.head = nn.Linear(HID, OUT)

    def forward(self, x):
        h = torch.tanh(self.fc1(x * self.scale))
        h = self.norm(h)
        return self.head(torch.relu(self.fc2(h)) + h)


def make_model(seed=0):
    torch.manual_seed(seed)
    return Tiny()


def batch(step, rank, micro=0):
    g = torch.Generator().manual_seed(1000 * step + 10 * rank + micro)
    return torch.randn(BATCH, IN, generator=g), torch.randn(BATCH, OUT, generator=g)


def loss_fn(model, x, y):
    return F.mse_loss(model(x).float(), y)


def reference_run(world_size, steps, accum=1, clip=None, start=0, model=None, opt=None):
    """Plain model + torch AdamW on the average of every rank's (and micro-step's) gradient."""
    model = model or make_model()
    opt = opt or torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    norms = []
    for step in range(start, start + steps):
        opt.zero_grad()
        for r in range(world_size):
            for m in range(accum):
                (loss_fn(model, *batch(step, r, m)) / (world_size * accum)).backward()
        if clip is not None:
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item())
        opt.step()
    return model, opt, norms


def zero_run(rank, world_size, stage, dtype, steps, accum=1, clip=None, group=None, bucket_mb=0.0005,
             start=0, zopt=None, model=None, **kw):
    """The same training under ZeroOptimizer; returns (model, zopt, norms)."""
    if zopt is None:
        model = make_model()
        zopt = ZeroOptimizer(model, torch.optim.AdamW, stage=stage, group=group, bucket_mb=bucket_mb,
                             mixed_precision=None if dtype == torch.float32 else dtype,
                             clip_grad_norm=clip, print_plan=False, lr=LR, weight_decay=WD, **kw)
    norms = []
    for step in range(start, start + steps):
        for m in range(accum):
            (loss_fn(model, *batch(step, rank, m)) / accum).backward()
        norms.append(zopt.step())
        zopt.zero_grad()
    return model, zopt, norms


def assert_matches(full, ref_model, dtype, what):
    ref = ref_model.state_dict()
    assert list(full) == list(ref), f"{what}: keys {list(full)} != {list(ref)}"
    for k in ref:
        torch.testing.assert_close(full[k].float(), ref[k], **TOL[dtype], msg=lambda m: f"{what} {k}: {m}")
    if dtype != torch.float32:
        init = make_model().state_dict()
        err = sum((full[k].float() - ref[k]).abs().sum() for k in ref)
        moved = sum((ref[k] - init[k]).abs().sum() for k in ref)
        assert err <= BF16_MEAN_ERR * moved, f"{what}: summed error {err:.3e} vs movement {moved:.3e}"


def equivalence_body(rank, world_size, group=None):
    """Stages 1-3 x fp32/bf16, five AdamW steps, against the unsharded reference."""
    ref5 = reference_run(world_size, 5)[0] if rank == 0 else None   # only rank 0 compares
    for stage in (1, 2, 3):
        for dtype in (torch.float32, torch.bfloat16):
            _, zopt, _ = zero_run(rank, world_size, stage, dtype, 5, group=group)
            full = zopt.full_state_dict()
            if rank == 0:
                assert_matches(full, ref5, dtype, f"stage {stage} {dtype} dp={world_size}")
    return True


def accumulation_clip_body(rank, world_size, group=None):
    """Two micro-steps per step and clipping by the global norm, every stage, fp32."""
    ref, _, ref_norms = reference_run(world_size, 3, accum=2, clip=0.05)   # every rank checks its norms
    for stage in (1, 2, 3):
        _, zopt, norms = zero_run(rank, world_size, stage, torch.float32, 3, accum=2, clip=0.05, group=group)
        assert all(n > 0.05 for n in norms), f"clipping never engaged: norms {norms}"
        # the norm also checks the gradient's scale, which AdamW itself cannot see
        torch.testing.assert_close(torch.tensor(norms), torch.tensor(ref_norms), rtol=1e-5, atol=0)
        full = zopt.full_state_dict()
        if rank == 0:
            assert_matches(full, ref, torch.float32, f"stage {stage} accum+clip dp={world_size}")
    return True


def _split_decay(model):
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() == 2)]
    return [{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0, "lr": LR / 2}]


def param_groups_body(rank, world_size, group=None):
    """Stages 1 and 2 (no overlap) on two param groups (decay/no decay, different lr)."""
    ref = make_model()
    ref_groups = _split_decay(ref)
    ref_opt = torch.optim.AdamW(ref_groups, lr=LR)
    reference_run(world_size, 3, model=ref, opt=ref_opt)
    ref_by_param = [p for g in ref_groups for p in g["params"]]
    for stage, overlap in ((1, True), (2, False)):
        model = make_model()
        zopt = ZeroOptimizer(_split_decay(model), torch.optim.AdamW, stage=stage, group=group, bucket_mb=0.0005,
                             overlap=overlap, print_plan=False, lr=LR)
        zero_run(rank, world_size, stage, torch.float32, 3, zopt=zopt, model=model)
        full = zopt.full_state_dict()
        if rank == 0:
            assert list(full) == [f"param.{i}" for i in range(len(ref_by_param))]
            for i, want in enumerate(ref_by_param):
                torch.testing.assert_close(full[f"param.{i}"], want.detach(), **TOL[torch.float32],
                                           msg=lambda m: f"stage {stage} param group test param.{i}: {m}")
    return True


def unit_granularity_body(rank, world_size, group=None):
    """Stage 3 with the root and coarser units (a class list), no overlap and no check."""
    ref = reference_run(world_size, 3)[0] if rank == 0 else None
    _, zopt, _ = zero_run(rank, world_size, 3, torch.float32, 3, group=group, units=(nn.Linear,), overlap=False,
                          check_control_flow=False)
    full = zopt.full_state_dict()
    if rank == 0:
        assert_matches(full, ref, torch.float32, "stage 3 units=(Linear,)")
    zopt.step()   # no backward since zero_grad: skipped, as torch skips .grad None
    again = zopt.full_state_dict()
    assert all(torch.equal(again[k], full[k]) for k in full), "a step without gradients changed parameters"
    return True


def save_body(rank, world_size, path):
    """Three stage-3 fp32 steps at dp=world_size, then a sharded save."""
    model, zopt, _ = zero_run(rank, world_size, 3, torch.float32, 3, group=dist.group.WORLD)
    zopt.save_sharded(path)
    full = zopt.full_state_dict()
    if rank == 0:
        assert_matches(full, reference_run(world_size, 3)[0], torch.float32, "before save")
        torch.save(full, os.path.join(path, "full.pt"))   # for the process-free reshard check
    return True


def load_body(rank, world_size, path, saved_world, stage):
    """Load into a different dp size and stage, train two more steps, compare with the reference."""
    model = make_model(seed=123)   # different init: everything must come from the checkpoint
    zopt = ZeroOptimizer(model, torch.optim.AdamW, stage=stage, group=dist.group.WORLD, bucket_mb=0.0003,
                         print_plan=False, lr=LR * 7, weight_decay=WD)
    zopt.load_sharded(path)
    assert zopt.inner.param_groups[0]["lr"] == LR, "param group hyperparameters not restored"
    loaded = zopt.full_state_dict()
    # The reference saw saved_world ranks for 3 steps; both continue with world_size ranks.
    if rank == 0:
        ref_model, ref_opt, _ = reference_run(saved_world, 3)
        assert_matches(loaded, ref_model, torch.float32, "right after load")
    zero_run(rank, world_size, stage, torch.float32, 2, start=3, zopt=zopt, model=model)
    full = zopt.full_state_dict()
    if rank == 0:
        reference_run(world_size, 2, start=3, model=ref_model, opt=ref_opt)
        assert_matches(full, ref_model, torch.float32, f"stage {stage} after resharding {saved_world}->{world_size}")
    return True


class Skipper(nn.Module):
    """Three blocks; forward(x, skip) leaves out blocks[skip] (skip=-1: none)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    def forward(self, x, skip=-1):
        for i, b in enumerate(self.blocks):
            if i != skip:
                x = b(x)
        return x


def divergent_body(group_rank, group, skip):
    """After one agreeing step, group rank 1 skips blocks[skip]: every rank must raise."""
    from hcomm.parallel.zero import ZeroControlFlowError

    torch.manual_seed(0)
    model = Skipper()
    zopt = ZeroOptimizer(model, torch.optim.AdamW, stage=3, group=group, print_plan=False, lr=LR)
    model(torch.randn(2, 4)).sum().backward()
    zopt.step()
    zopt.zero_grad()
    try:
        model(torch.randn(2, 4), skip if group_rank == 1 else -1).sum().backward()
        zopt.step()
    except ZeroControlFlowError as e:
        return str(e)
    raise AssertionError("divergent control flow was not detected")


def comm_and_memory_body(rank, world_size, group=None):
    """Collective bytes per step (2Ψ stages 1/2, 3Ψ less the unit kept from forward into
    backward + checks stage 3) and exact real bytes."""
    for stage in (1, 2, 3):
        for dtype in (torch.float32, torch.bfloat16):
            model, zopt, _ = zero_run(rank, world_size, stage, dtype, 1, group=group)
            elem = torch.empty((), dtype=dtype).element_size()
            flat = sum(s.layout.padded_numel for s in zopt.shards) * elem   # Ψ plus padding
            zopt.comm.reset_counters()
            zero_run(rank, world_size, stage, dtype, 1, start=1, zopt=zopt, model=model)
            got = zopt.comm.bytes
            gathered = (2 if stage == 3 else 1) * flat
            if stage == 3:
                # Tiny's head produces the model's output, so backward starts with its unit:
                # that unit stays gathered from forward into backward, one gather less
                head = next(u for u in zopt.engine.units if u.name == "head")
                gathered -= head.layout.padded_numel * elem
            want = {"reduce_scatter": flat, "all_gather": gathered}
            assert {k: got[k] for k in want} == want, f"stage {stage} {dtype}: {dict(got)} != {want}"
            assert set(got) <= {"reduce_scatter", "all_gather", "check"}, dict(got)
            plan = zopt.memory_plan()
            n = world_size
            shard = flat // n
            expect = {"parameters": flat // n if stage == 3 else flat,
                      "master weights": 0 if dtype == torch.float32 else shard * 4 // elem,
                      "optimizer state": 2 * shard * 4 // elem + 4 * len(zopt.shards)}   # + AdamW step
            for row, nbytes in expect.items():
                assert plan.row(row).real_bytes == nbytes, f"stage {stage} {dtype} {row}: {plan.row(row)}"
            assert "16Ψ/N" in plan.format() or stage != 3
    return True


TP_CFG = dict(vocab_size=24, seq_len=6, hidden=8, heads=2, n_layers=1, ffn_hidden=12)


def tp_composition_body(rank, world_size):
    """dp=2 x tp=2: ZeRO over the dp group of a tensor-parallel GPT equals the same TP model
    trained with AdamW on the dp-averaged gradient (each tp rank compares its own shards)."""
    from hcomm.parallel.mesh import ParallelConfig, build_mesh
    from hcomm.parallel.models import GPT, GPTConfig

    mesh = build_mesh(ParallelConfig(dp=2, tp=2))
    cfg = GPTConfig(**TP_CFG)

    def data(step, dp_rank):
        g = torch.Generator().manual_seed(100 * step + dp_rank)
        return [torch.randint(0, cfg.vocab_size, (3, cfg.seq_len), generator=g) for _ in range(2)]

    ref = GPT(cfg, group=mesh.tp_group, seed=0)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD)
    for step in range(3):
        ref_opt.zero_grad()
        for d in range(2):
            (ref(*data(step, d)) / 2).backward()
        ref_opt.step()
    for stage in (1, 2, 3):
        model = GPT(cfg, group=mesh.tp_group, seed=0)
        zopt = ZeroOptimizer(model, torch.optim.AdamW, stage=stage, group=mesh.dp_group, bucket_mb=0.002,
                             print_plan=False, lr=LR, weight_decay=WD)
        for step in range(3):
            model(*data(step, mesh.dp_rank)).backward()
            zopt.step()
            zopt.zero_grad()
        full = zopt.full_state_dict()
        if mesh.dp_rank == 0:
            want = ref.state_dict()
            assert list(full) == list(want)
            for k in want:
                torch.testing.assert_close(full[k], want[k], rtol=1e-4, atol=2e-5,
                                           msg=lambda m: f"stage {stage} tp rank {mesh.tp_rank} {k}: {m}")
    return True


def tp_clip_body(rank, world_size):
    """dp=2 x tp=2 with clipping: the norm every rank clips by is the dense model's whole
    gradient norm (summed over tp, replicated parameters once), and three AdamW steps
    equal the dense model's with torch's clip_grad_norm_ (each tp rank checks its shards)."""
    from hcomm.parallel.mesh import ParallelConfig, build_mesh
    from hcomm.parallel.models import GPT, GPTConfig
    from hcomm.parallel.tensor import shard_state_dict

    mesh = build_mesh(ParallelConfig(dp=2, tp=2))
    cfg = GPTConfig(**TP_CFG)

    def data(step, dp_rank):
        g = torch.Generator().manual_seed(100 * step + dp_rank)
        return [torch.randint(0, cfg.vocab_size, (3, cfg.seq_len), generator=g) for _ in range(2)]

    dense = GPT(cfg, seed=0)
    dense_opt = torch.optim.AdamW(dense.parameters(), lr=LR, weight_decay=WD)
    norms, clip = [], None
    for step in range(3):
        dense_opt.zero_grad()
        for d in range(2):
            (dense(*data(step, d)) / 2).backward()
        if clip is None:  # well below the first norm, so that every step clips
            clip = 0.3 * torch.nn.utils.get_total_norm([p.grad for p in dense.parameters()]).item()
        norms.append(torch.nn.utils.clip_grad_norm_(dense.parameters(), clip).item())
        dense_opt.step()
    for stage in (1, 2, 3):
        model = GPT(cfg, group=mesh.tp_group, seed=0)
        zopt = ZeroOptimizer(model, torch.optim.AdamW, stage=stage, group=mesh.dp_group, bucket_mb=0.002,
                             clip_grad_norm=clip, tp_group=mesh.tp_group, print_plan=False, lr=LR, weight_decay=WD)
        for step in range(3):
            model(*data(step, mesh.dp_rank)).backward()
            got = zopt.step()
            zopt.zero_grad()
            assert got == pytest.approx(norms[step], rel=1e-5), f"stage {stage} step {step}: {got} != {norms[step]}"
        full = zopt.full_state_dict()
        if mesh.dp_rank == 0:
            want = shard_state_dict(model, dense.state_dict(), mesh.tp_group)
            for k in want:
                torch.testing.assert_close(full[k], want[k], rtol=1e-4, atol=2e-5,
                                           msg=lambda m: f"stage {stage} tp rank {mesh.tp_rank} {k}: {m}")
    return True


# ---- jobs: one spawned world runs many cases (spawning dominates the test time) --------

def stages_job(rank, world_size):
    """dp = 1..world_size as sub-groups of one world: ranks [0, dp) run the cases with
    group=that sub-group (which also tests passing a group that is not the world)."""
    torch.set_num_threads(1)
    extra = {2: [unit_granularity_body, accumulation_clip_body], 3: [comm_and_memory_body, param_groups_body]}
    groups = {dp: dist.new_group(list(range(dp))) for dp in range(1, world_size + 1)}   # collective
    done = []
    for dp, group in groups.items():
        if rank < dp:
            for body in [equivalence_body] + extra.get(dp, []):
                body(rank, dp, group)
            done.append(dp)
    return done


def extra_job(rank, world_size, path):
    """On 4 ranks: save a stage-3 checkpoint, TP composition, then divergent control flow
    at the same time on the pairs {0, 1} (rank 1 skips the middle block) and {2, 3} (rank
    3 skips the last block, so it meets the others' forward with its backward); last, as
    it leaves those groups after an error."""
    torch.set_num_threads(1)
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    save_body(rank, world_size, path)
    tp_composition_body(rank, world_size)
    tp_clip_body(rank, world_size)
    return divergent_body(rank % 2, pairs[rank // 2], skip=1 if rank < 2 else 2)


def reshard_job(rank, world_size, path, saved_world, stages):
    torch.set_num_threads(1)
    for stage in stages:
        load_body(rank, world_size, path, saved_world, stage)
    return True
