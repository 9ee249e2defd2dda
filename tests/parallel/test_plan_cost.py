"""The calibrated parts of the cost model without processes: the compute factor by the
number of ranks active at once, and the per-call collective overheads (calibrate.py's
tables written by hand here; what they hold on a real machine is measured by
benchmarks/planner_breakdown.py and planner_accuracy.py, not asserted)."""
import dataclasses

import pytest

from hcomm.parallel.plan import Cluster, ModelShape, enumerate_candidates
from hcomm.parallel.plan.cost import CostModel, Settings
from hcomm.parallel.plan.pricing import Pricer
from plan_helpers import MODEL, synthetic_profile

REP = 1e-5                       # the profile's seconds per repetition of the calibration piece


def _cluster(rep_per_k=lambda k: k * REP, coll=0.0, coll_async=None):
    base = Cluster.describe("1 hosts x 4 ranks, 2 cores per host")
    ks = range(1, 5)
    cal = {"rep_s": {str(k): rep_per_k(k) for k in ks}, "coll_s": {str(k): coll for k in ks},
           "coll_async_s": {str(k): coll if coll_async is None else coll_async for k in ks}}
    return dataclasses.replace(base, calibration=cal)


def _profile():
    return dict(synthetic_profile(), piece_rep_s=REP)


def _estimates(cluster, **pick):
    cands = enumerate_candidates(4, 8, ModelShape.gpt(MODEL), cluster.physical_order())
    cm = CostModel(cluster, Pricer(cluster), _profile(), Settings(8, budget=1 << 40))
    chosen = [c for c in cands if all(getattr(c, k) == v for k, v in pick.items())]
    assert chosen, pick
    return {c: cm.estimate(c) for c in chosen}


def _one(cluster, **pick):
    return next(iter(_estimates(cluster, **pick).values()))


def test_idle_pipeline_ranks_leave_the_cores_to_the_others():
    cluster = _cluster()
    dp = _one(cluster, dp=4, tp=1, pp=1, zero_stage=0, micro_batch_size=2)
    pipe = _one(cluster, dp=1, tp=1, pp=4, schedule="gpipe", zero_stage=0, micro_batch_size=8)  # m = 1
    (k_dp,), (k_pipe,) = dp.detail["active_ranks"].values(), pipe.detail["active_ranks"].values()
    assert 3 < k_dp <= 4 and 1 <= k_pipe < 2.5          # one micro-batch through 4 stages: mostly idle
    assert pipe.detail["compute_factor"] < dp.detail["compute_factor"]
    # f(k) = k here: the factor is the measured table at the plan's own active count
    assert dp.detail["compute_factor"] == pytest.approx(k_dp, rel=0.35)


def test_a_busier_machine_never_makes_a_plan_cheaper():
    calm, busy = _cluster(lambda k: k * REP), _cluster(lambda k: 1.5 * k * REP)
    a, b = _estimates(calm, zero_stage=1), _estimates(busy, zero_stage=1)
    assert all(b[c].step_s >= a[c].step_s * (1 - 1e-9) for c in a)


def test_each_blocking_call_pays_the_measured_overhead():
    pick = dict(dp=1, tp=4, pp=1, micro_batch_size=2, sequence_parallel=False)
    plain, charged = _one(_cluster(), **pick), _one(_cluster(coll=1e-3), **pick)
    rows = synthetic_profile()["shapes"]["tp4-mb2-sp0"]
    calls = sum(len(r["fwd_collectives"]) + len(r["bwd_collectives"]) for r in rows)
    m = 8 // 2
    extra = charged.terms["tp collectives"] - plain.terms["tp collectives"]
    assert extra == pytest.approx(m * calls * 1e-3)


def test_zero3_collectives_pay_the_async_overhead_and_tp_ones_do_not():
    pick = dict(dp=2, tp=2, pp=1, zero_stage=3, micro_batch_size=2, sequence_parallel=False)
    base = _one(_cluster(coll=1e-4, coll_async=1e-4), **pick)
    slow_async = _one(_cluster(coll=1e-4, coll_async=2e-3), **pick)
    assert slow_async.terms["tp collectives"] == pytest.approx(base.terms["tp collectives"])
    rows = synthetic_profile()["shapes"]["tp2-mb2-sp0"]
    units = sum(r["units"] for r in rows)
    m = 8 // (2 * 2)
    # per unit: gather forward, gather + reduce-scatter backward (async); the checks are blocking
    extra = slow_async.terms["dp ZeRO per micro-batch"] - base.terms["dp ZeRO per micro-batch"]
    assert extra == pytest.approx(m * units * 3 * (2e-3 - 1e-4))


def test_a_described_cluster_scales_by_ranks_per_core():
    cluster = Cluster.describe("1 hosts x 4 ranks, 2 cores per host")
    est = _one(cluster, dp=4, tp=1, pp=1, zero_stage=0, micro_batch_size=2)
    assert est.detail["compute_factor"] == pytest.approx(max(1.0, list(est.detail["active_ranks"].values())[0] / 2))
    assert est.detail["call_overhead_s"] == 0.0


def _train_gpt_stage_rows(rows, pp):
    """Each pp rank's layers as examples/train_gpt.py cuts model.layers (its own function)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "train_gpt.py"
    spec = importlib.util.spec_from_file_location("train_gpt_for_cut", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out, at = [], 0
    for n in mod.balanced_sizes(len(rows), pp):
        out.append(rows[at:at + n])
        at += n
    return out


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_one_micro_batch_walks_every_stage_at_its_own_cost(schedule):
    """With one micro-batch a pipeline is a chain: each stage's forward in turn, then each
    backward in reverse, one message between neighbours each way. Its length is the sum of
    the stages' own costs; the old model priced every stage at the slowest one's, which put
    p x the heaviest stage on the critical path (6 layers over 4 stages are cut 2, 2, 1, 1:
    +35-39 % on the wide GPT's dp1 pp4 plans, measured)."""
    cluster = Cluster.describe("1 hosts x 4 ranks, 2 cores per host")     # f = active ranks / cores, no overhead
    pp = 4
    est = _one(cluster, dp=4 // pp, tp=1, pp=pp, schedule=schedule, zero_stage=0,
               micro_batch_size=8 // (4 // pp))
    assert est.detail["microbatches"] == 1
    f = est.detail["compute_factor"]
    stages = _train_gpt_stage_rows(synthetic_profile()["shapes"][f"tp1-mb{8 // (4 // pp)}-sp0"], pp)
    chain = sum(f * (r["fwd_s"] + r["bwd_s"]) for rows in stages for r in rows)
    expect = chain + 2 * (pp - 1) * est.detail["p2p_s"]
    assert est.detail["makespan"] == pytest.approx(expect, rel=1e-2)
    heaviest = max(sum(f * (r["fwd_s"] + r["bwd_s"]) for r in rows) for rows in stages)
    assert pp * heaviest > expect * 1.05          # the stages really differ: the old model would fail here
