"""ZeRO beyond the single-group equivalence: sharded checkpoints with resharding 4 -> 2
(end to end) and 4 -> 3 (the arithmetic, without processes), composition with tensor
parallelism (dp=2 x tp=2), and the clear error for divergent control flow under stage 3."""
import os

import torch

from harness import run_torch

import test_zero_helpers as h
from hcomm.parallel.zero.checkpoint import _load_buffer, _OldShards
from hcomm.parallel.zero.flat import FlatLayout
from hcomm.parallel.zero.shards import ShardState


def test_checkpoint_tp_and_divergent_control_flow(tmp_path):
    """One 4-rank world: save at dp=4 (stage 3), ZeRO x TP, divergent control flow; then
    load at dp=2 into stages 3 and 1: the loaded state and two more steps match the reference."""
    path = str(tmp_path / "ckpt")
    msgs = run_torch(h.extra_job, 4, args=(path,), timeout=300)
    files = sorted(f for f in os.listdir(path) if f.startswith(("shard", "meta")))
    assert files == ["meta.json"] + [f"shard-{r:05d}-of-00004.pt" for r in range(4)], files
    for m in msgs[:2]:   # rank 1 skipped blocks.1: it is at blocks.2 while rank 0 is at blocks.1
        assert "divergent control flow" in m, m
        assert "ranks [0] are at forward of module 'blocks.1'" in m, m
        assert "ranks [1] are at forward of module 'blocks.2'" in m, m
    for m in msgs[2:]:   # rank 3 skipped the last block and went on to its backward
        assert "ranks [2] are at forward of module 'blocks.2'" in m, m
        assert "ranks [3] are at backward of module 'blocks.1'" in m, m
    assert run_torch(h.reshard_job, 2, args=(path, 4, (3, 1)), timeout=300) == [True] * 2
    _check_reshard_without_processes(path, new_world=3)


def _check_reshard_without_processes(path, new_world):
    """Reshard the dp=4 checkpoint to new_world ranks with one flat buffer, reassemble every
    parameter from the new shards, and compare with the consolidated state and with exp_avg
    read straight from the old shards."""
    old = _OldShards(path)
    full = torch.load(os.path.join(path, "full.pt"))
    shapes = [(s.name, s.shape) for lay in old.layouts for s in lay.slots]
    lay = FlatLayout.build(shapes, new_world)
    flat = {"master": torch.zeros(lay.padded_numel), "exp_avg": torch.zeros(lay.padded_numel)}
    for r in range(new_world):
        shard = ShardState(lay, r, torch.zeros(lay.shard_numel))
        master, state = _load_buffer(old, shard, r)
        lo, hi = lay.shard_range(r)
        flat["master"][lo:hi], flat["exp_avg"][lo:hi] = master, state["exp_avg"]
        assert int(state["step"]) == 3
    for s in lay.slots:
        got = flat["master"][s.offset:s.offset + s.numel].view(s.shape)
        torch.testing.assert_close(got, full[s.name], rtol=0, atol=0)
        want_m = old.read(s.name, 0, s.numel, "exp_avg")
        torch.testing.assert_close(flat["exp_avg"][s.offset:s.offset + s.numel], want_m, rtol=0, atol=0)
