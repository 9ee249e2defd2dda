"""ParallelConfig validation and the rank layout without processes; build_mesh on 4 ranks."""
import pytest
import torch

from harness import run_torch
from hcomm.parallel import mesh as mesh_module
from hcomm.parallel.mesh import (AXES, Mesh, ParallelConfig, build_mesh, coords, describe_layout, global_rank,
                                 rank_layout)

ISSUE_EXAMPLE = {"parallel_strategy": "MODEL_PARALLEL", "micro_batch_size": 1, "global_batch_size": 4096,
                 "pipeline_stages": 8, "tensor_parallel_size": 4, "zero_stage": 2}


def test_layout_of_the_docstring_example():
    layout = rank_layout(ParallelConfig(dp=2, tp=2, pp=2))
    assert layout == {"tp": [[0, 1], [2, 3], [4, 5], [6, 7]],
                      "dp": [[0, 2], [1, 3], [4, 6], [5, 7]],
                      "pp": [[0, 4], [1, 5], [2, 6], [3, 7]]}


def test_docstring_example_is_what_describe_layout_prints():
    doc_lines = [line.strip() for line in mesh_module.__doc__.splitlines()]
    for line in describe_layout(ParallelConfig(dp=2, tp=2, pp=2)).splitlines():
        assert not line or any(d.startswith(line) for d in doc_lines), line


@pytest.mark.parametrize("dp,tp,pp", [(1, 1, 1), (3, 1, 1), (1, 4, 1), (1, 1, 5), (2, 3, 2), (3, 2, 4)])
def test_layout_partitions_ranks_with_tp_adjacent(dp, tp, pp):
    cfg = ParallelConfig(dp=dp, tp=tp, pp=pp)
    layout = rank_layout(cfg)
    for axis, size in zip(AXES, (tp, dp, pp)):
        groups = layout[axis]
        assert sorted(r for g in groups for r in g) == list(range(cfg.world_size)), axis
        assert all(len(g) == size for g in groups) and len(groups) == cfg.world_size // size
        for g in groups:   # members differ only along `axis`, in order along it
            cs = [coords(cfg, r) for r in g]
            assert [c[axis] for c in cs] == list(range(size))
            assert all({a: c[a] for a in AXES if a != axis} == {a: cs[0][a] for a in AXES if a != axis}
                       for c in cs)
    assert all(g == list(range(g[0], g[0] + tp)) for g in layout["tp"])   # adjacent ranks
    for r in range(cfg.world_size):
        c = coords(cfg, r)
        assert global_rank(cfg, c["pp"], c["dp"], c["tp"]) == r


def test_validation_errors_show_the_arithmetic():
    with pytest.raises(ValueError, match=r"^dp\(2\) \* tp\(2\) \* pp\(3\) = 12 != world_size\(8\)$"):
        ParallelConfig(dp=2, tp=2, pp=3).validate(8)
    with pytest.raises(ValueError, match=r"global_batch_size\(10\) is not divisible by "
                                         r"micro_batch_size\(2\) \* dp\(3\) = 6"):
        ParallelConfig(dp=3, micro_batch_size=2, global_batch_size=10)
    with pytest.raises(ValueError, match=r"zero_stage must be 0, 1, 2 or 3, got 4"):
        ParallelConfig(dp=1, zero_stage=4)
    with pytest.raises(ValueError, match=r"tp must be >= 1, got 0"):
        ParallelConfig(dp=1, tp=0)
    with pytest.raises(TypeError, match=r"tp must be an int, got '2'"):
        ParallelConfig(dp=1, tp="2")
    with pytest.raises(ValueError, match=r"vpp\(2\) > 1 needs pipeline parallelism, but pp\(1\)"):
        ParallelConfig(dp=1, vpp=2)


def test_good_configs_and_accumulation():
    cfg = ParallelConfig(dp=3, tp=2, pp=2, vpp=2, micro_batch_size=2, global_batch_size=30)
    assert cfg.validate(12) is cfg and cfg.grad_accum_steps == 5 and cfg.world_size == 12
    default = ParallelConfig(dp=4, micro_batch_size=3)
    assert default.global_batch_size == 12 and default.grad_accum_steps == 1


def test_from_config_issue_example():
    cfg = ParallelConfig.from_config(ISSUE_EXAMPLE, world_size=64)
    assert (cfg.dp, cfg.tp, cfg.pp, cfg.zero_stage) == (2, 4, 8, 2)
    assert cfg.grad_accum_steps == 4096 // (1 * 2)
    assert ParallelConfig.from_config(ISSUE_EXAMPLE, world_size=32).grad_accum_steps == 4096
    with pytest.raises(ValueError, match=r"world_size\(48\) is not divisible by tp\(4\) \* pp\(8\) = 32"):
        ParallelConfig.from_config(ISSUE_EXAMPLE, world_size=48)


def test_from_config_keys():
    d = {"pipeline_parallel_size": 2, "virtual_pipeline_stages": 3, "learning_rate": 3e-4, "num_layers": 12,
         "micro_batch_size": 2, "global_batch_size": 16, "gradient_accumulation_steps": 4,
         "parallel_strategy": "hybrid"}
    cfg = ParallelConfig.from_config(d, world_size=4)
    assert (cfg.dp, cfg.tp, cfg.pp, cfg.vpp, cfg.grad_accum_steps) == (2, 1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"'tensor_paralel_size'.*did you mean 'tensor_parallel_size'"):
        ParallelConfig.from_config({"tensor_paralel_size": 2}, world_size=4)
    with pytest.raises(ValueError, match=r"unknown parallelism key 'expert_parallel_size'"):
        ParallelConfig.from_config({"expert_parallel_size": 2}, world_size=4)
    with pytest.raises(ValueError, match=r"pipeline_stages=2 but pipeline_parallel_size=4"):
        ParallelConfig.from_config({"pipeline_stages": 2, "pipeline_parallel_size": 4}, world_size=4)
    with pytest.raises(ValueError, match=r"dp\(4\) \* tp\(2\) \* pp\(1\) = 8 != world_size\(4\)"):
        ParallelConfig.from_config({"data_parallel_size": 4, "tensor_parallel_size": 2}, world_size=4)
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps\(3\) != global_batch_size\(16\)"):
        ParallelConfig.from_config({**d, "gradient_accumulation_steps": 3}, world_size=4)


@pytest.mark.parametrize("strategy,d,ok", [
    ("DATA_PARALLEL", {}, True),
    ("DATA_PARALLEL", {"tensor_parallel_size": 2}, False),
    ("MODEL_PARALLEL", {}, False),
    ("MODEL_PARALLEL", {"tensor_parallel_size": 4}, True),
    ("HYBRID", {"tensor_parallel_size": 4}, False),      # dp would be 1
    ("HYBRID", {"tensor_parallel_size": 2}, True),
    ("TENSOR_PARALLEL", {"pipeline_stages": 2}, False),
    ("PIPELINE_PARALLEL", {"pipeline_stages": 2}, True),
    ("FANCY_PARALLEL", {}, False),
])
def test_parallel_strategy_consistency(strategy, d, ok):
    if ok:
        ParallelConfig.from_config({**d, "parallel_strategy": strategy}, world_size=4)
    else:
        with pytest.raises(ValueError, match="parallel_strategy"):
            ParallelConfig.from_config({**d, "parallel_strategy": strategy}, world_size=4)


def test_mesh_neighbours_without_processes():
    cfg = ParallelConfig(dp=1, tp=2, pp=3)
    mid = Mesh(cfg, rank=3, world_size=6, tp_group=None, dp_group=None, pp_group=None,
               tp_ranks=[2, 3], dp_ranks=[3], pp_ranks=[1, 3, 5])
    assert (mid.tp_rank, mid.dp_rank, mid.pp_rank) == (1, 0, 1)
    assert (mid.pp_prev, mid.pp_next, mid.is_first_stage, mid.is_last_stage) == (1, 5, False, False)
    last = Mesh(cfg, rank=5, world_size=6, tp_group=None, dp_group=None, pp_group=None,
                tp_ranks=[4, 5], dp_ranks=[5], pp_ranks=[1, 3, 5])
    assert (last.pp_next, last.is_last_stage) == (None, True)


def test_build_mesh_needs_init():
    with pytest.raises(RuntimeError, match="init_process_group"):
        build_mesh(ParallelConfig(dp=1))


def _sum_over(group, rank):
    import torch.distributed as dist

    t = torch.tensor([float(rank)])
    dist.all_reduce(t, group=group)
    return t.item()


def _mesh_body(rank, world_size):
    torch.set_num_threads(1)   # ranks share 2 cores: avoid oversubscription
    out = {}
    for dp, tp, pp in ((2, 2, 1), (1, 2, 2)):
        mesh = build_mesh(ParallelConfig(dp=dp, tp=tp, pp=pp))
        sums = {axis: _sum_over(mesh.group(axis), rank) for axis in AXES}
        out[(dp, tp, pp)] = (mesh.tp_ranks, mesh.dp_ranks, mesh.pp_ranks, mesh.pp_prev, mesh.pp_next, sums)
    with pytest.raises(ValueError, match=r"dp\(2\) \* tp\(1\) \* pp\(1\) = 2 != world_size\(4\)"):
        build_mesh(ParallelConfig(dp=2))
    return out


def test_build_mesh_groups_on_4_ranks():
    results = run_torch(_mesh_body, 4)
    for rank, out in enumerate(results):
        for key, (tp, dp, pp, prev, nxt, sums) in out.items():
            cfg = ParallelConfig(*key)
            layout = rank_layout(cfg)
            mine = {axis: next(g for g in layout[axis] if rank in g) for axis in AXES}
            assert (tp, dp, pp) == (mine["tp"], mine["dp"], mine["pp"]), (rank, key)
            # an allreduce of the global rank over each group sums exactly its members
            assert sums == {axis: float(sum(mine[axis])) for axis in AXES}, (rank, key)
            c = coords(cfg, rank)
            assert prev == (None if c["pp"] == 0 else pp[c["pp"] - 1])
            assert nxt == (None if c["pp"] == cfg.pp - 1 else pp[c["pp"] + 1])
    assert results[0][(2, 2, 1)][:3] == ([0, 1], [0, 2], [0])
    assert results[3][(1, 2, 2)][:5] == ([2, 3], [3], [1, 3], 1, None)
