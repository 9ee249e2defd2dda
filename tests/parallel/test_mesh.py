"""ParallelConfig validation and the rank layout without processes; build_mesh on 4 ranks (hcomm)."""
import pytest
import torch

from harness import run_torch
from hcomm.parallel import mesh as mesh_module
from hcomm.parallel.mesh import (AXES, Mesh, ParallelConfig, build_mesh, coords, describe_layout, global_rank,
                                 rank_grid, rank_layout)

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
    for axis, size in zip(AXES, (pp, dp, tp)):
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


def test_axes_are_one_list():
    cfg = ParallelConfig(dp=3, tp=2, pp=4)
    assert cfg.axes == (("pp", 4), ("dp", 3), ("tp", 2))
    grid = rank_grid(cfg)
    assert tuple(grid.shape) == (4, 3, 2) and grid.flatten().tolist() == list(range(24))


@pytest.mark.parametrize("dp,tp,pp,seed", [(2, 2, 2, 0), (3, 1, 1, 1), (1, 3, 2, 2), (3, 2, 2, 3)])
def test_rank_order_places_grid_positions(dp, tp, pp, seed):
    """Position i of the (pp, dp, tp) grid is held by rank_order[i]; the groups are the
    identity layout's groups with every rank r renamed rank_order[r]."""
    n = dp * tp * pp
    grid = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).reshape(pp, dp, tp)
    for dim in range(3):   # sorted along every axis in turn stays sorted along the earlier ones
        grid = grid.sort(dim=dim).values
    order = tuple(grid.flatten().tolist())
    plain, placed = ParallelConfig(dp=dp, tp=tp, pp=pp), ParallelConfig(dp=dp, tp=tp, pp=pp, rank_order=order)
    renamed = {axis: sorted([order[r] for r in g] for g in groups) for axis, groups in rank_layout(plain).items()}
    assert rank_layout(placed) == renamed
    assert rank_grid(placed).flatten().tolist() == list(order)
    for pos in range(n):
        c = coords(plain, pos)
        assert coords(placed, order[pos]) == c
        assert global_rank(placed, c["pp"], c["dp"], c["tp"]) == order[pos]


def test_rank_order_example_of_the_docstring():
    cfg = ParallelConfig(dp=2, tp=2, pp=2, rank_order=(0, 2, 1, 3, 4, 6, 5, 7))
    layout = rank_layout(cfg)
    assert layout["tp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout["dp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout["pp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert "tp groups: [0, 2] [1, 3] [4, 6] [5, 7]" in describe_layout(cfg)


def test_rank_order_validation_and_config_key():
    cfg = ParallelConfig.from_config({"tensor_parallel_size": 2, "rank_order": [0, 2, 1, 3]}, world_size=4)
    assert cfg.rank_order == (0, 2, 1, 3) and rank_layout(cfg) == {"pp": [[0], [1], [2], [3]],
                                                                 "dp": [[0, 1], [2, 3]], "tp": [[0, 2], [1, 3]]}
    with pytest.raises(ValueError, match=r"rank_order \[3, 1, 2, 0\] puts dp group \[3, 2\] out of ascending "
                                         r"order along dp: .* \(here dp group \[2, 3\]\)"):
        ParallelConfig(dp=2, tp=2, rank_order=(3, 1, 2, 0))
    assert ParallelConfig(dp=2).rank_order is None
    with pytest.raises(ValueError, match=r"rank_order must be a permutation of range\(world_size\(4\)\) = "
                                         r"range\(dp\(2\) \* tp\(2\) \* pp\(1\)\), got \[0, 1, 1, 3\] "
                                         r"\(length 4; missing \[2\], out of range \[\], repeated \[1\]\)"):
        ParallelConfig(dp=2, tp=2, rank_order=(0, 1, 1, 3))
    with pytest.raises(ValueError, match=r"got \[0, 1, 2\] \(length 3; missing \[3\]"):
        ParallelConfig(dp=4, rank_order=(0, 1, 2))
    with pytest.raises(ValueError, match=r"out of range \[4\]"):
        ParallelConfig(dp=4, rank_order=(0, 1, 2, 4))
    with pytest.raises(TypeError, match=r"rank_order must be a tuple of ints, got \(0, '1'\)"):
        ParallelConfig(dp=2, rank_order=(0, "1"))
    with pytest.raises(ValueError, match="rank_order"):
        ParallelConfig.from_config({"tensor_parallel_size": 2, "rank_order": [0, 1]}, world_size=4)


def test_mesh_neighbours_without_processes():
    cfg = ParallelConfig(dp=1, tp=2, pp=3)
    none = {axis: None for axis in AXES}
    mid = Mesh(cfg, rank=3, world_size=6, groups=none, ranks={"tp": [2, 3], "dp": [3], "pp": [1, 3, 5]})
    assert (mid.tp_rank, mid.dp_rank, mid.pp_rank) == (1, 0, 1)
    assert (mid.pp_prev, mid.pp_next, mid.is_first_stage, mid.is_last_stage) == (1, 5, False, False)
    last = Mesh(cfg, rank=5, world_size=6, groups=none, ranks={"tp": [4, 5], "dp": [5], "pp": [1, 3, 5]})
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
    for key in LAYOUTS:
        mesh = build_mesh(ParallelConfig(*key[:3], rank_order=key[3]))
        assert mesh.device_mesh.mesh.flatten().tolist() == list(key[3] or range(4))
        assert mesh.device_mesh.mesh_dim_names == AXES
        sums = {axis: _sum_over(mesh.group(axis), rank) for axis in AXES}
        out[key] = (mesh.tp_ranks, mesh.dp_ranks, mesh.pp_ranks, mesh.pp_prev, mesh.pp_next, sums)
    with pytest.raises(ValueError, match=r"dp\(2\) \* tp\(1\) \* pp\(1\) = 2 != world_size\(4\)"):
        build_mesh(ParallelConfig(dp=2))
    return out


# (dp, tp, pp, rank_order)
LAYOUTS = ((2, 2, 1, None), (1, 2, 2, None), (1, 2, 2, (0, 2, 1, 3)))


def test_build_mesh_groups_on_4_ranks():
    results = run_torch(_mesh_body, 4)
    for rank, out in enumerate(results):
        for key, (tp, dp, pp, prev, nxt, sums) in out.items():
            cfg = ParallelConfig(*key[:3], rank_order=key[3])
            layout = rank_layout(cfg)
            mine = {axis: next(g for g in layout[axis] if rank in g) for axis in AXES}
            assert (tp, dp, pp) == (mine["tp"], mine["dp"], mine["pp"]), (rank, key)
            # an allreduce of the global rank over each group sums exactly its members
            assert sums == {axis: float(sum(mine[axis])) for axis in AXES}, (rank, key)
            c = coords(cfg, rank)
            assert prev == (None if c["pp"] == 0 else pp[c["pp"] - 1])
            assert nxt == (None if c["pp"] == cfg.pp - 1 else pp[c["pp"] + 1])
    assert results[0][LAYOUTS[0]][:3] == ([0, 1], [0, 2], [0])
    assert results[3][LAYOUTS[1]][:5] == ([2, 3], [3], [1, 3], 1, None)
    # rank_order (0, 2, 1, 3): grid (pp, tp) = (0,0) (0,1) (1,0) (1,1) held by 0 2 1 3
    assert results[0][LAYOUTS[2]][:5] == ([0, 2], [0], [0, 1], None, 1)
    assert results[1][LAYOUTS[2]][:5] == ([1, 3], [1], [0, 1], 0, None)
