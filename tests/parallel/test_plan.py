"""The planner without processes: enumeration, placement, costs and errors on described
topologies (2 x 8, 4 racks x 2 x 4, uneven hosts), as torchtitan tests ParallelDims."""
import itertools

import pytest

from hcomm.parallel.mesh import ParallelConfig, rank_layout
from hcomm.parallel.plan import Cluster, ModelShape, enumerate_candidates, plan
from hcomm.parallel.plan.cost import CostModel, Settings
from hcomm.parallel.plan.pricing import Pricer
from hcomm.parallel.plan.space import groups, placements
from plan_helpers import MODEL, synthetic_profile

CLUSTERS = {
    "2x8": "2 hosts x 8 ranks, 1 Gbit/s between hosts, 8 cores per host",
    "4racks": "4 racks x 2 hosts x 4 ranks, 10 Gbit/s between hosts, 1 Gbit/s between racks, 4 cores per host",
    "uneven": "hosts of 5+3 ranks, 1 Gbit/s between hosts, 8 cores per host",
}
BIG = dict(MODEL, n_layers=6, heads=8)          # 8 layers in model.layers; tp up to 8


def _reference_space(world, gb, model):
    """Every valid (dp, tp, pp, vpp, schedule, zero, mb, sp), by brute force over all
    integers up to the world size with the rules written out once more."""
    layers, out = model["n_layers"] + 2, set()
    ffn = 4 * model["hidden"]
    for dp, tp, pp in itertools.product(range(1, world + 1), repeat=3):
        if dp * tp * pp != world or pp > layers or gb % dp:
            continue
        if model["heads"] % tp or model["vocab_size"] % tp or ffn % tp:
            continue
        for mb in range(1, gb + 1):
            if (gb // dp) % mb:
                continue
            m = gb // (dp * mb)
            scheds = [("1f1b", 1)] if pp == 1 else [("1f1b", 1), ("gpipe", 1)] + [
                ("interleaved", v) for v in range(2, 5) if pp * v <= layers and m % pp == 0]
            if pp > 1 and m >= pp:      # zero-bubble: m >= pp; zb-v two chunks per rank
                scheds += [("zb-h1", 1)] + ([("zb-v", 2)] if 2 * pp <= layers else [])
            for (s, v), z, sp in itertools.product(scheds, range(4), (False, True)):
                if (z and dp == 1) or (sp and (tp == 1 or model["seq_len"] % tp)):
                    continue
                if z >= 2 and s.startswith("zb"):   # W writes .grad: no ZeRO-2/3 hooks
                    continue
                out.add((dp, tp, pp, v, s, z, mb, sp))
    return out


@pytest.mark.parametrize("name", list(CLUSTERS))
def test_enumeration_is_valid_and_complete(name):
    cluster = Cluster.describe(CLUSTERS[name])
    world, gb = cluster.world_size, 32
    cands = enumerate_candidates(world, gb, ModelShape.gpt(BIG), cluster.physical_order())
    assert {c.rank_order for c in cands} != {tuple(range(world))}     # placements are searched
    got = {(c.dp, c.tp, c.pp, c.vpp, c.schedule, c.zero_stage, c.micro_batch_size, c.sequence_parallel)
           for c in cands}
    assert got == _reference_space(world, gb, BIG)
    for c in cands:
        assert sorted(c.rank_order) == list(range(world))
        pcfg = ParallelConfig.from_config(c.config(gb), world)      # the mesh accepts the placement
        assert (pcfg.dp, pcfg.tp, pcfg.pp, pcfg.vpp) == (c.dp, c.tp, c.pp, c.vpp)
        assert rank_layout(pcfg) == {a: sorted(g) for a, g in groups(c.rank_order, c.dp, c.tp, c.pp).items()}
    # each degree triple has its placements once each, all distinct
    by_degrees = {}
    for c in cands:
        by_degrees.setdefault((c.dp, c.tp, c.pp), set()).add(c.rank_order)
    for (dp, tp, pp), orders in by_degrees.items():
        assert len(orders) == len(placements(cluster.physical_order(), dp, tp, pp))


def test_identity_placement_gives_the_mesh_layout():
    for dp, tp, pp in [(2, 2, 2), (1, 4, 2), (4, 1, 2), (2, 4, 1)]:
        order = tuple(range(dp * tp * pp))
        want = rank_layout(ParallelConfig(dp=dp, tp=tp, pp=pp))
        got = groups(order, dp, tp, pp)
        assert {a: sorted(g) for a, g in got.items()} == want


def test_placements_cut_hosts_as_the_docstring_says():
    physical = list(range(8))
    found = dict(placements(physical, 2, 2, 2))
    assert groups(found["tp<dp<pp"], 2, 2, 2)["tp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert found["pp<dp<tp"] == (0, 4, 2, 6, 1, 5, 3, 7)
    assert groups(found["pp<dp<tp"], 2, 2, 2)["tp"] == [[0, 4], [2, 6], [1, 5], [3, 7]]
    # a physical order that is not the rank numbering (hosts hold ranks {0,2,4,6} and {1,3,5,7})
    cluster = Cluster(topology=_interleaved_hosts())
    order = dict(placements(cluster.physical_order(), 1, 4, 2))["tp<dp<pp"]
    host = cluster.host_of()
    assert all(len({host[r] for r in g}) == 1 for g in groups(order, 1, 4, 2)["tp"])


def _interleaved_hosts():
    from hcomm.topology import load

    return load({"hosts": [{"name": "a", "ranks": [0, 2, 4, 6]}, {"name": "b", "ranks": [1, 3, 5, 7]}]})


def _model(cluster, profile=None):
    return CostModel(cluster, Pricer(cluster), profile or synthetic_profile(BIG), Settings(32, budget=1 << 40))


def _cheapest_placement(cm, cands):
    return min(cands, key=lambda c: cm.estimate(c).step_s)


@pytest.mark.parametrize("name", ["2x8", "4racks", "uneven"])
def test_tp_lands_inside_hosts_when_links_between_hosts_are_slow(name):
    # tp against dp (pp = 1): tp's per-layer allreduces outweigh dp's one gradient sync
    # per step, so the cheapest placement keeps tp in a host. (With pp > 1 the costs may
    # rightly send tp across hosts to keep a long pipeline's p2p on shared memory: on
    # 4 racks, dp2 tp2 pp8 prices tp across racks 15 ms cheaper than tp inside hosts.)
    cluster = Cluster.describe(CLUSTERS[name])
    cm = _model(cluster)
    cands = enumerate_candidates(cluster.world_size, 32, ModelShape.gpt(BIG), cluster.physical_order(),
                                 zero_stages=(1,), micro_batch_sizes=(2,))
    host = cluster.host_of()
    crossing = lambda c: sum(len({host[r] for r in g}) > 1  # noqa: E731
                             for g in groups(c.rank_order, c.dp, c.tp, c.pp)["tp"])
    checked = 0
    key = lambda c: (c.dp, c.tp, c.pp, c.vpp, c.schedule, c.sequence_parallel)  # noqa: E731
    for k, group in itertools.groupby(sorted(cands, key=key), key=key):
        group = list(group)
        if k[1] == 1 or k[2] > 1:
            continue
        best = _cheapest_placement(cm, group)
        # as few tp groups across hosts as any placement allows (none when tp divides the hosts)
        assert crossing(best) == min(crossing(c) for c in group), (best.name, crossing(best))
        checked += 1
    assert checked >= 2


def test_placement_is_decided_by_costs_not_a_rule():
    # Same degrees, two clusters: with a slow link between hosts tp stays inside a host;
    # with inter-host links much faster than shared memory the tuner's prices no longer
    # favour it, and the cheapest placement puts tp groups across hosts.
    shape = ModelShape.gpt(BIG)
    picks = {}
    for label, links in (("slow", None), ("fast", {"tcp": {"alpha": 1e-7, "beta": 1e-13}})):
        cluster = Cluster.from_hosts([4, 4], links=links or {"tcp": {"alpha": 3e-5, "beta": 8e-9}}, cores=8)
        cands = enumerate_candidates(8, 32, shape, cluster.physical_order(), zero_stages=(0,),
                                     micro_batch_sizes=(4,))
        cands = [c for c in cands if (c.dp, c.tp, c.pp, c.schedule, c.sequence_parallel) == (1, 4, 2, "1f1b", False)]
        best = _cheapest_placement(_model(cluster), cands)
        host = cluster.host_of()
        picks[label] = all(len({host[r] for r in g}) == 1 for g in groups(best.rank_order, 1, 4, 2)["tp"])
    assert picks == {"slow": True, "fast": False}


@pytest.mark.parametrize("name", ["2x8", "uneven"])
def test_a_slower_link_never_makes_a_cross_host_tp_plan_cheaper(name):
    text = CLUSTERS[name]
    times = {}
    for rate in ("100 Gbit/s", "10 Gbit/s", "1 Gbit/s", "0.1 Gbit/s"):
        cluster = Cluster.describe(text.replace("1 Gbit/s", rate))
        cm = _model(cluster)
        cands = enumerate_candidates(cluster.world_size, 32, ModelShape.gpt(BIG), cluster.physical_order(),
                                     zero_stages=(0, 2), micro_batch_sizes=(1, 4))
        host = cluster.host_of()
        for c in cands:
            if c.tp > 1 and any(len({host[r] for r in g}) > 1 for g in groups(c.rank_order, c.dp, c.tp, c.pp)["tp"]):
                times.setdefault(c, []).append(cm.estimate(c).step_s)
    assert len(times) > 10
    for c, ts in times.items():
        assert all(a <= b * (1 + 1e-12) for a, b in zip(ts, ts[1:])), (c.name, ts)


def test_more_ranks_per_core_never_makes_compute_cheaper():
    prof = synthetic_profile(BIG)
    steps = []
    for cores in (8, 4, 2, 1):
        cluster = Cluster.describe(f"2 hosts x 4 ranks, 1 Gbit/s between hosts, {cores} cores per host")
        cands = enumerate_candidates(8, 32, ModelShape.gpt(BIG), cluster.physical_order(), zero_stages=(0,),
                                     micro_batch_sizes=(4,))
        cm = _model(cluster, prof)
        steps.append([cm.estimate(c).terms["compute forward"] for c in cands])
    for a, b in zip(steps, steps[1:]):
        assert all(x <= y for x, y in zip(a, b))


# ------------------------------------------------------------------------ errors

def test_budget_too_small_names_the_smallest_plans_need():
    with pytest.raises(ValueError, match=r"no plan fits the memory budget of 1\.0 MiB per rank: the smallest, .*needs"):
        plan(BIG, 32, cluster=CLUSTERS["2x8"], memory_budget=1 << 20, profile=synthetic_profile(BIG),
             placement=True)


def test_world_size_no_plan_divides():
    # 7 ranks: tp=7 divides no head count, pp=7 exceeds the 6 entries of model.layers,
    # dp=7 does not divide the batch of 8.
    small = dict(MODEL, n_layers=4)
    with pytest.raises(ValueError, match=r"no valid plan for world_size 7: tp=7 does not divide heads\(4\)"):
        plan(small, 8, cluster="hosts of 7 ranks", profile=synthetic_profile(small))


def test_unknown_model_key_and_bad_inputs():
    with pytest.raises(ValueError, match=r"unknown model key\(s\) 'hiden'"):
        plan(dict(MODEL, hiden=3), 8, cluster="2 hosts x 2 ranks")
    with pytest.raises(ValueError, match="cannot read a cluster from 'two boxes'"):
        plan(MODEL, 8, cluster="two boxes")
    with pytest.raises(ValueError, match=r"world_size\(8\) != the cluster's 4 ranks"):
        plan(MODEL, 8, cluster="2 hosts x 2 ranks", world_size=8)
    with pytest.raises(ValueError, match="global_batch_size must be a positive int"):
        plan(MODEL, 0, cluster="2 hosts x 2 ranks", profile=synthetic_profile())
    with pytest.raises(ValueError, match="dtype must be one of"):
        plan(MODEL, 8, cluster="2 hosts x 2 ranks", dtype="float16")
    with pytest.raises(ValueError, match="every host needs at least one rank"):
        Cluster.from_hosts([2, 0])


def test_best_plan_is_a_config_train_gpt_accepts():
    result = plan(BIG, 32, cluster=CLUSTERS["4racks"], profile=synthetic_profile(BIG), placement=True)
    cfg = result.config()
    pcfg = ParallelConfig.from_config({k: v for k, v in cfg.items() if k not in ("model", "train")},
                                      result.cluster.world_size)
    assert pcfg.dp * pcfg.tp * pcfg.pp == 32
    assert cfg["model"] == BIG and cfg["train"]["schedule"] == result.best.cand.schedule
    assert [e.step_s for e in result.ranked if e.fits] == sorted(e.step_s for e in result.ranked if e.fits)
    assert result.seconds < 60


def test_namespace_hosts_of_one_machine_stay_apart():
    # a dump of 2 namespace hosts on one 2-core machine: both hosts carry the hostname
    ranks = [{"rank": r, "hostname": "vm", "host": "vm", "host_id": f"boot/vm/net:[{r // 2}]", "rack": "",
              "numa": 0, "cpus": "0-1", "nics": [], "gpus": []} for r in range(4)]
    dump = {"hosts": [{"name": "vm", "rack": "", "ranks": [0, 1]}, {"name": "vm", "rack": "", "ranks": [2, 3]}],
            "links": {"tcp": {"alpha": 3e-5, "beta": 8e-9}}, "ranks": ranks}
    result = plan(MODEL, 8, cluster=dump, profile=synthetic_profile())
    cluster = result.cluster
    assert cluster.host_of() == ["vm#0", "vm#0", "vm#1", "vm#1"] and cluster.machine_of() == ["vm"] * 4
    assert cluster.compute_share_of_rank(0) == 2.0           # 4 ranks on the machine's 2 cores
    pricer = Pricer(cluster)
    assert pricer.collective("allreduce", 1 << 20, [[0, 2]]) > 5 * pricer.collective("allreduce", 1 << 20, [[0, 1]])
