"""The calibrated parts of the cost model without processes: the compute factor by the
number of ranks active at once, and the per-call collective overheads (calibrate.py's
tables written by hand here; what they hold on a real machine is measured by
benchmarks/planner_breakdown.py and planner_accuracy.py, not asserted)."""
import dataclasses

import pytest

from hcomm.parallel.plan import Cluster, ModelShape, enumerate_candidates
from hcomm.parallel.plan.cost import WAIT_CPU_SHARE, CostModel, Settings
from hcomm.parallel.plan.pricing import Pricer
from hcomm.parallel.plan.profile import shape_key
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


# ------------------------------------------------------------- issue 19, fourth round

def test_a_call_pays_the_overhead_measured_on_its_own_group_size():
    """calibrate.py now times bursts of tiny calls per group size with every rank running
    (call_s); a tp2 plan's calls pay the 2-rank figure. The old model read the residual
    table at all of the machine's ranks (here it would charge 5 ms, or nothing when only
    the new tables are present)."""
    cal = {"call_s": {"1": 0.0, "2": 1e-3, "4": 5e-3}, "call_async_s": {"1": 0.0, "2": 2e-3, "4": 7e-3}}
    charged = dataclasses.replace(Cluster.describe("1 hosts x 4 ranks, 2 cores per host"), calibration=cal)
    pick = dict(dp=2, tp=2, pp=1, zero_stage=0, micro_batch_size=2, sequence_parallel=False)
    plain, est = _one(Cluster.describe("1 hosts x 4 ranks, 2 cores per host"), **pick), _one(charged, **pick)
    rows = synthetic_profile()["shapes"]["tp2-mb2-sp0"]
    calls = sum(len(r["fwd_collectives"]) + len(r["bwd_collectives"]) for r in rows)
    m = 8 // (2 * 2)
    assert est.terms["tp collectives"] - plain.terms["tp collectives"] == pytest.approx(m * calls * 1e-3)
    assert charged.collective_overhead(3, async_op=True) == pytest.approx(4.5e-3)    # between measured sizes


def _chain(post_s, schedule):
    cluster = Cluster.describe("1 hosts x 4 ranks, 4 cores per host")     # f = 1, no call overhead
    if post_s:
        cluster = dataclasses.replace(cluster, calibration={"post_s": post_s})
    return _one(cluster, dp=1, tp=1, pp=4, schedule=schedule, zero_stage=0, micro_batch_size=8)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_every_p2p_post_is_paid_on_the_posting_ranks_own_timeline(schedule):
    """One micro-batch through 4 stages is a chain of 3 forward and 3 backward messages;
    each is posted by its sender and its receiver, and each post is two (control block,
    then the tensor): 24 posts of post_s each on the chain, beyond its message latency.
    The old model charged p2p as latency only."""
    base = _chain(0.0, schedule)
    assert base.detail["microbatches"] == 1 and base.detail["compute_factor"] == 1.0
    post = base.detail["makespan"] / 100
    est = _chain(post, schedule)
    pp = 4
    expect = base.detail["makespan"] + 2 * (pp - 1) * 2 * 2 * post
    assert est.detail["makespan"] == pytest.approx(expect, rel=1e-2)
    # a middle stage receives and sends each way: 8 posts per micro-batch on its own time
    assert est.terms["p2p posting"] == pytest.approx(8 * post)


def _zero(cluster_text, stage, mb):
    cluster = Cluster.describe(cluster_text)
    est = next(e for c, e in _estimates(cluster, dp=2, tp=2, pp=1, zero_stage=stage, micro_batch_size=mb,
                                        sequence_parallel=False).items() if c.rank_order == (0, 1, 2, 3))
    return cluster, est


TWO_HOSTS = "2 hosts x 2 ranks, 1 Gbit/s between hosts, 2 cores per host"   # dp groups {0, 2}, {1, 3} cross


def test_zero2_reduce_scatter_across_hosts_hides_behind_the_next_micro_batch():
    """The wire time of ZeRO-2's async reduce-scatter over a network link hides behind the
    next micro-batch's compute (measured: 27-34 ms alone added ~10 ms to 200-260 ms of
    compute issued after it), except the last micro-batch's, which the optimizer step
    waits for; over shared memory nothing hides. The old model hid nothing on either."""
    rows = synthetic_profile()["shapes"]["tp2-mb1-sp0"]
    nbytes = sum(r["params"] for r in rows) * 4
    for text, remote in ((TWO_HOSTS, True), ("1 hosts x 4 ranks, 2 cores per host", False)):
        cluster, est = _zero(text, 2, 1)
        m, f = est.detail["microbatches"], est.detail["compute_factor"]
        wire = Pricer(cluster).collective("reduce_scatter", nbytes, est.detail["groups"]["dp"])
        compute = f * sum(r["fwd_s"] + r["bwd_s"] for r in rows)
        hidden = (m - 1) * min(wire, compute) if remote else 0.0
        assert m == 4 and (hidden > 0.5 * m * wire or not remote)
        assert est.terms["dp ZeRO per micro-batch"] == pytest.approx(m * wire - hidden)


def test_zero3_prefetched_gathers_across_hosts_hide_behind_the_unit_before():
    """ZeRO-3 prefetches the next unit's all-gather when a unit starts: across hosts its
    wire time hides behind that unit's compute (forward in unit order, backward in
    reverse); the reduce-scatters and control checks hide nothing (the next unit's
    blocking check follows on the same group)."""
    rows = synthetic_profile()["shapes"]["tp2-mb1-sp0"]
    cluster, est = _zero(TWO_HOSTS, 3, 1)
    m, f, dp = est.detail["microbatches"], est.detail["compute_factor"], est.detail["groups"]["dp"]
    price = Pricer(cluster).collective
    seq = []
    for r in rows:
        u = max(1, r["units"])
        seq += [(r["params"] * 4 / u, f * r["fwd_s"] / u, f * r["bwd_s"] / u)] * u
    full = sum(2 * price("allgather", b, dp) + 2 * price("allgather", 48, dp) + price("reduce_scatter", b, dp)
               for b, _, _ in seq)
    hidden = sum(min(price("allgather", seq[i][0], dp), seq[i - 1][1]) for i in range(1, len(seq)))
    hidden += sum(min(price("allgather", seq[i][0], dp), seq[i + 1][2]) for i in range(len(seq) - 1))
    assert hidden > 0
    assert est.terms["dp ZeRO per micro-batch"] == pytest.approx(m * (full - hidden))


# -------------------------------------------------------------- issue 19, fifth round

@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_each_pipeline_message_is_priced_on_its_own_link(schedule):
    """Hosts of 3 + 1 ranks (planner_accuracy.py's case c), pp 4: only the link between
    stages 2 and 3 crosses hosts. One micro-batch is a chain with one message over each
    link each way, so it gains 2 x (shm + shm + tcp). The old model priced every message
    at the slowest pair's (2 x 3 x tcp: dp1 pp4 mb8 charged 1.86 ms a message where four
    of the six cost 1.33)."""
    # f = 1; a slow link, so that the link's price is a visible share of the chain
    cluster = Cluster.describe("hosts of 3+1 ranks, 10 Mbit/s between hosts, 4 cores per host")
    est = next(e for c, e in _estimates(cluster, dp=1, tp=1, pp=4, schedule=schedule, zero_stage=0,
                                        micro_batch_size=8).items() if c.rank_order == (0, 1, 2, 3))
    assert est.detail["microbatches"] == 1 and est.detail["compute_factor"] == 1.0
    stages = _train_gpt_stage_rows(synthetic_profile()["shapes"]["tp1-mb8-sp0"], 4)
    chain = sum(r["fwd_s"] + r["bwd_s"] for rows in stages for r in rows)
    out = max(rows[-1]["out_bytes"] for rows in stages) + 64 * 8
    price = [Pricer(cluster).collective("send", out, [[a, b]]) for a, b in ((0, 1), (1, 2), (2, 3))]
    assert price[2] > 10 * price[0] and price[0] == price[1]       # tcp against shared memory
    assert est.detail["p2p_per_link"][:3] == pytest.approx(price)
    assert est.detail["makespan"] == pytest.approx(chain + 2 * sum(price), rel=1e-2)
    assert chain + 2 * 3 * price[2] > est.detail["makespan"] * 1.3     # what the old model charged


def test_a_pipeline_message_pays_its_delivery_not_the_async_call_overhead():
    """calibrate.py's message_s (a message's one-way time to a waiting rank) replaces the
    2-rank async call overhead on every pipeline message: that overhead holds the partners
    arriving apart, which the schedule checker already simulates (1.0-5.2 ms a call against
    0.11-0.70 ms delivered, load 4-9). A file calibrated before message_s existed keeps the
    old charge."""
    base = Cluster.describe("1 hosts x 4 ranks, 4 cores per host")            # f = 1
    slow_calls = {"call_s": {"2": 0.0, "4": 0.0}, "call_async_s": {"2": 5e-3, "4": 5e-3}}
    pick = dict(dp=1, tp=1, pp=4, schedule="1f1b", zero_stage=0, micro_batch_size=8)
    plain = _one(base, **pick)
    new = _one(dataclasses.replace(base, calibration=dict(slow_calls, message_s=2e-4)), **pick)
    old_file = _one(dataclasses.replace(base, calibration=slow_calls), **pick)
    price = plain.detail["p2p_s"]
    assert price > 0 and new.detail["p2p_per_link"][:3] == pytest.approx([price + 2e-4] * 3)
    assert new.detail["makespan"] - plain.detail["makespan"] == pytest.approx(6 * 2e-4, rel=2e-2)
    assert old_file.detail["p2p_s"] == pytest.approx(price + 5e-3)


@pytest.mark.parametrize("pick", [dict(dp=1, tp=1, pp=4, schedule="1f1b", micro_batch_size=8),
                                  dict(dp=2, tp=1, pp=2, schedule="1f1b", micro_batch_size=1),
                                  dict(dp=4, tp=1, pp=1, micro_batch_size=2)])
def test_a_plan_is_priced_at_the_active_ranks_its_own_step_implies(pick):
    """The compute factor depends on how many ranks compute at once, and that on the step
    it predicts: the estimate is made at the fixed point, where the ranks' busy share of the
    predicted step is the count it was made with. With f(k) = k (one core), the earlier
    three rounds halfway each priced one micro-batch through four stages at 1.75 active
    ranks where its own step says 1. A rank's wait counts busy at WAIT_CPU_SHARE (4 ranks
    on one core: it polls and yields on the core the others need)."""
    cluster = Cluster.describe("1 hosts x 4 ranks, 1 cores per host")     # f = active ranks
    est = _one(cluster, zero_stage=0, **pick)
    (k,) = est.detail["active_ranks"].values()
    busy = [min(1.0, b / est.step_s) for b in est.detail["busy"]]
    share = max(1.0, sum(b + WAIT_CPU_SHARE * (1 - b) for b in busy))
    assert share == pytest.approx(k, rel=0.03)
    assert est.detail["compute_factor"] == pytest.approx(k)



def test_the_optimizer_step_runs_at_the_factor_of_every_rank_busy():
    """A pipeline's idle ranks leave the cores to the others during the micro-batches, but
    at the step end every rank is busy (the first stages still in their last backward
    while the last ones update), so the optimizer pays f(all of the machine's ranks), not
    the step's average (measured: dp2 pp2 mb4 on 4 ranks / 2 cores, optimizer 8.7-10.9 ms
    against 2.9 priced at the pipeline's 2.1 active ranks). Two machines that differ only
    in how fast fewer than all of their ranks compute price the optimizer alike."""
    pick = dict(dp=2, tp=1, pp=2, schedule="1f1b", zero_stage=1, micro_batch_size=4)
    linear = _one(_cluster(lambda k: k * REP), **pick)
    flat_until_full = _one(_cluster(lambda k: (4 if k == 4 else 1) * REP), **pick)
    (k,) = linear.detail["active_ranks"].values()
    assert k < 3.5                                               # the pipeline phase idles ...
    assert flat_until_full.detail["compute_factor"] < linear.detail["compute_factor"]  # ... and is priced so
    opt = "optimizer step + bookkeeping"
    assert linear.terms[opt] > 0
    assert flat_until_full.terms[opt] == pytest.approx(linear.terms[opt])


def test_the_optimizer_update_pays_the_calibrated_factor_of_every_rank_updating():
    """The per-element update is memory-bound: the compute factor's piece (a matmul in
    cache) does not see the ranks' updates slow each other. Where calibrate.py measured
    the update with every rank stepping at once (opt_elem_s), the update pays that over
    the profile's own per-element time, not f(all ranks) (measured: dp2 pp2 z1 mb4 of the
    wide GPT, 4 ranks / 2 cores, opt.step 8.1-9.3 ms of CPU per rank against 3.2 in the
    profile; wall 10.6-25 ms against 6.7 priced at f(4) = 2.07)."""
    pick = dict(dp=4, tp=1, pp=1, zero_stage=1, micro_batch_size=2)
    per_element = _profile()["optimizer_s_per_element"]
    plain = _cluster(lambda k: k * REP)                               # f(4) = 4
    measured = dataclasses.replace(plain, calibration=dict(plain.calibration, opt_elem_s=10 * per_element))
    opt = "optimizer step + bookkeeping"
    a, b = _one(plain, **pick), _one(measured, **pick)
    psi = sum(row["params"] for row in _profile()["shapes"][shape_key(1, 2, False)])
    # the synthetic profile has no bookkeeping overheads: the term is the update alone
    assert a.terms[opt] == pytest.approx(psi / 4 * per_element * 4)
    assert b.terms[opt] == pytest.approx(psi / 4 * per_element * 10)
    # and nothing else moves where the factor is not used
    assert b.terms["compute forward"] == pytest.approx(a.terms["compute forward"])


def test_the_step_is_the_sum_of_the_terms_explain_prints():
    """--explain's terms add up to the step: the per-micro-batch ones (whose sum with the
    bubble is the makespan) and the step end's. ZeRO-2/3's per-micro-batch collectives
    were counted once inside the makespan and again at the step end (dp2 pp2 z2 mb4 of
    the small GPT: 28.8 ms predicted where its terms summed to 26.9)."""
    ests = _estimates(_cluster(coll=1e-3), dp=2)
    assert {c.zero_stage for c in ests} == {0, 1, 2, 3}
    for c, est in ests.items():
        parts = sum(v for k, v in est.terms.items() if k != "total")
        # within the schedule checker's report cache (costs kept to 3 significant digits)
        assert est.terms["total"] == pytest.approx(parts, rel=5e-3), c.name
        assert est.detail["makespan"] <= est.terms["total"]


def test_the_optimizer_step_prices_what_each_zero_stage_touches():
    """Per element of the rank's parameters psi (optimizer_profile.py): stage 0 plain AdamW
    and the clip's norm over psi; stage 1 the whole gradient copied into its buckets (psi)
    then the shard's norm and fused AdamW (psi / dp); stages 2 and 3 the shard's only.
    Pricing every ZeRO stage as psi / dp elements of plain AdamW (before) priced ZeRO-1's
    copy of the whole gradient and ZeRO-0's clip norm as nothing.
    Figures here are made up and far apart so that each part shows."""
    full0, copy1, shard = 4e-9, 1e-9, 0.5e-9
    profile = dict(_profile(), optimizer_step_s={"0": [full0, 0.0], "1": [copy1, shard], "2": [0.0, shard],
                                                 "3": [0.0, 3 * shard]})
    plain = _cluster(lambda k: k * REP)
    cluster = dataclasses.replace(plain, calibration=dict(plain.calibration, opt_elem_s=6 * 2e-9))   # factor 6
    cands = enumerate_candidates(4, 8, ModelShape.gpt(MODEL), cluster.physical_order())
    cm = CostModel(cluster, Pricer(cluster), profile, Settings(8, budget=1 << 40))
    psi = sum(row["params"] for row in profile["shapes"][shape_key(1, 2, False)])
    want = {0: psi * full0, 1: psi * copy1 + psi / 4 * shard, 2: psi / 4 * shard, 3: psi / 4 * 3 * shard}
    opt = "optimizer step + bookkeeping"
    for z, elements_s in want.items():
        c = next(c for c in cands if (c.dp, c.tp, c.pp, c.zero_stage, c.micro_batch_size) == (4, 1, 1, z, 2))
        # the synthetic profile has no bookkeeping overheads: the term is the per-element work
        assert cm.estimate(c).terms[opt] == pytest.approx(elements_s * 6), z
    # a profile measured before the stages' figures prices as before: psi / dp plain AdamW
    old = CostModel(cluster, Pricer(cluster), _profile(), Settings(8, budget=1 << 40))
    c = next(c for c in cands if (c.dp, c.tp, c.pp, c.zero_stage, c.micro_batch_size) == (4, 1, 1, 2, 2))
    assert old.estimate(c).terms[opt] == pytest.approx(psi / 4 * 2e-9 * 6)


MEASURED_F = {1: 1.00, 2: 1.99, 3: 3.09, 4: 4.23}     # one calibration, 4 ranks on 2 cores (steeper than k)


@pytest.mark.parametrize("rep_per_k", [lambda k: k * REP, lambda k: MEASURED_F[k] * REP],
                         ids=["f=k", "f measured"])
def test_a_larger_bubble_is_never_priced_under_1f1b(rep_per_k):
    """dp1 pp4 mb1, m = 8, no W to place (w_s = 0: zb-h1 is 1F1B's work in a worse order,
    bubble 0.46 against 0.37; GPipe 0.40): with compute dominating, the plan with the
    larger bubble must cost more. Before waits counted as partly busy
    (cost.WAIT_CPU_SHARE) the larger bubble lowered the active ranks and the compute
    factor by about as much as the bubble cost: zb-h1 within 0.1 % of 1F1B here with
    both tables (3 % under it on the wide GPT's profile, where it ran 21 % over)."""
    cluster = _cluster(rep_per_k)
    prof = _profile()
    for rows in prof["shapes"].values():
        for r in rows:
            r["w_s"] = 0.0
    cands = enumerate_candidates(4, 8, ModelShape.gpt(MODEL), cluster.physical_order(), zero_stages=(0,),
                                 micro_batch_sizes=(1,))
    cm = CostModel(cluster, Pricer(cluster), prof, Settings(8, budget=1 << 40))
    est = {c.schedule: cm.estimate(c) for c in cands if c.pp == 4 and c.vpp == 1}
    assert est["zb-h1"].detail["bubble"] > est["gpipe"].detail["bubble"] > est["1f1b"].detail["bubble"]
    assert est["zb-h1"].step_s > est["1f1b"].step_s * 1.01
    assert est["gpipe"].step_s > est["1f1b"].step_s
