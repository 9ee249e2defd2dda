"""ZeRO stages 1-3 against unsharded torch AdamW, on 1-4 hcomm ranks.

Every rank trains on different seeded data; the reference is a plain torch model with
torch.optim.AdamW on the average of all ranks' gradients (test_zero_helpers.py). One
spawned 4-rank world runs every dp size as a sub-group (spawning dominates the cost).
Checkpoints, resharding, TP composition and divergent control flow: test_zero_extra.py.
"""
import pytest
import torch

from harness import run_torch

import test_zero_helpers as h
from hcomm.parallel.zero.flat import FlatLayout, padded, split_into_buckets


def test_stages_match_unsharded_adamw():
    """dp=1..4 (sub-groups of one 4-rank world) x stages 1-3 x fp32/bf16, five steps; plus
    at dp=2 coarse stage-3 units and gradient accumulation with clipping, at dp=3
    communication bytes per step, the real bytes of the memory plan and param groups."""
    assert run_torch(h.stages_job, 4, timeout=300) == [[1, 2, 3, 4], [2, 3, 4], [3, 4], [4]]


# ---- sharding arithmetic, no processes -------------------------------------------------

def test_layout_pieces_cover_every_element_once():
    for n in (1, 2, 3, 4, 7):
        lay = FlatLayout.build([("a", (3,)), ("b", (2, 2)), ("c", ()), ("d", (5, 1))], n)
        assert lay.numel == 13 and lay.padded_numel == padded(13, n) and lay.padded_numel % n == 0
        seen = {s.name: [0] * s.numel for s in lay.slots}
        for r in range(n):
            lo, hi = lay.shard_range(r)
            assert hi - lo == lay.shard_numel
            for pc in lay.pieces(r):
                assert lo + pc.shard_lo == pc.slot.offset + pc.param_lo
                for i in range(pc.param_lo, pc.param_hi):
                    seen[pc.slot.name][i] += 1
        assert all(c == [1] * len(c) for c in seen.values()), (n, seen)
        assert FlatLayout.from_dict(lay.to_dict()) == lay


def test_layout_example_from_docstring():
    lay = FlatLayout.build([("a", (3,)), ("b", (4,))], 2)
    assert (lay.padded_numel, lay.shard_numel) == (8, 4)
    def pieces(rank):
        return [(p.slot.name, p.param_lo, p.param_hi, p.shard_lo) for p in lay.pieces(rank)]
    assert pieces(0) == [("a", 0, 3, 0), ("b", 0, 1, 3)]
    assert pieces(1) == [("b", 1, 4, 0)]


def test_bucketing_never_splits_a_parameter():
    assert split_into_buckets([4, 4, 100, 4], 8) == [[0, 1], [2], [3]]
    assert split_into_buckets([], 8) == []
    with pytest.raises(ValueError, match="bucket size must be > 0"):
        split_into_buckets([1], 0)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        FlatLayout.build([("a", (1,))], 0)


def test_bad_arguments_raise_before_any_collective():
    from hcomm.parallel.zero import ZeroOptimizer

    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3, got 4"):
        ZeroOptimizer(model, torch.optim.AdamW, stage=4)
    with pytest.raises(ValueError, match="mixed_precision must be None"):
        ZeroOptimizer(model, torch.optim.AdamW, stage=1, mixed_precision=torch.float16)
    with pytest.raises(ValueError, match="bucket_mb must be > 0"):
        ZeroOptimizer(model, torch.optim.AdamW, stage=2, bucket_mb=0)
    with pytest.raises(ValueError, match="clip_grad_norm must be None or > 0"):
        ZeroOptimizer(model, torch.optim.AdamW, stage=2, clip_grad_norm=-1)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_group_none_is_one_rank_without_torch_distributed(stage):
    """group=None means no data parallelism (as in hcomm.parallel.tensor): one process,
    no process group, exactly the plain optimizer's result."""
    import torch.distributed as dist

    assert not dist.is_initialized()
    ref, _, _ = h.reference_run(1, 3)
    _, zopt, _ = h.zero_run(0, 1, stage, torch.float32, 3, group=None)
    assert zopt.comm.size == 1
    h.assert_matches(zopt.full_state_dict(), ref, torch.float32, f"stage {stage} group=None")


def test_inner_optimizer_runs_fused_unless_the_caller_chooses():
    """AdamW gets fused=True over the flat shards (same result as torch's default loop on
    the unsharded model); a caller's foreach/fused choice and optimizers without a fused
    kernel are left alone."""
    from hcomm.parallel.zero import ZeroOptimizer

    ref, _, _ = h.reference_run(1, 3)
    _, zopt, _ = h.zero_run(0, 1, 1, torch.float32, 3, group=None)
    assert zopt.inner.defaults["fused"] is True
    h.assert_matches(zopt.full_state_dict(), ref, torch.float32, "fused AdamW")
    model = h.make_model()
    chosen = ZeroOptimizer(model, torch.optim.AdamW, stage=1, print_plan=False, foreach=False, lr=1e-3)
    assert not chosen.inner.defaults.get("fused")
    plain = ZeroOptimizer(h.make_model(), torch.optim.Adadelta, stage=1, print_plan=False)
    assert not plain.inner.defaults.get("fused")
