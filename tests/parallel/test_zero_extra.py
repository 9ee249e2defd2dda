"""ZeRO beyond the single-group equivalence: sharded checkpoints with resharding 4 -> 2
(and 2 -> 3 across stages), composition with tensor parallelism (dp=2 x tp=2), and the
clear error for divergent control flow under stage 3."""
import importlib.util
import os

import pytest

from harness import run_torch

import test_zero_helpers as h


def test_checkpoint_round_trip_and_reshard(tmp_path):
    """Save at dp=4 (stage 3); load at dp=2 into stages 3 and 1 and at dp=3 into stage 2;
    the loaded state and two more steps match the unsharded reference."""
    path = str(tmp_path / "ckpt")
    assert run_torch(h.save_body, 4, args=(path,)) == [True] * 4
    files = sorted(os.listdir(path))
    assert files == ["meta.json"] + [f"shard-{r:05d}-of-00004.pt" for r in range(4)], files
    assert run_torch(h.reshard_bodies, 2, args=(path, 4, (3, 1))) == [True] * 2
    assert run_torch(h.reshard_bodies, 3, args=(path, 4, (2,))) == [True] * 3


@pytest.mark.skipif(importlib.util.find_spec("hcomm.parallel.models") is None,
                    reason="needs hcomm.parallel.models (tensor parallelism)")
def test_composes_with_tensor_parallelism():
    assert run_torch(h.tp_composition_body, 4) == [True] * 4


def test_divergent_control_flow_names_module_and_ranks():
    msgs = run_torch(h.divergent_body, 2)
    for m in msgs:
        assert "divergent control flow" in m and "'blocks.1'" in m, m
        assert "ranks [0]" in m and "ranks [1]" in m and "'blocks.2'" in m, m
