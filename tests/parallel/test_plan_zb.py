"""Zero-bubble schedules (zb-h1, zb-v) in the planner's search, without processes: where
they are offered, where their stages live, how B and W are priced, and that the model
prefers them only when the bubble, not the messages, dominates the step."""
import pytest

from hcomm.parallel.mesh import ParallelConfig
from hcomm.parallel.pipeline import build_schedule, check_schedule, schedule_for_config
from hcomm.parallel.plan import Cluster, ModelShape, enumerate_candidates, memory_of_config, plan
from hcomm.parallel.plan.cost import CostModel, Settings, chunks_of_rank
from hcomm.parallel.plan.planner import format_explain, schedule_of
from hcomm.parallel.plan.pricing import Pricer
from plan_helpers import MODEL, synthetic_profile

SIX = dict(MODEL, n_layers=6)            # 8 entries in model.layers: zb-v fits pp 2 and 4
CHEAP = "1 host x 4 ranks, 8 cores per host"
SLOW = "4 hosts x 1 ranks, 1 mbit/s between hosts, 8 cores per host"


def _pp4(cluster_text, w_s=None, gb=4, mb=1):
    """{schedule: estimate} of dp1 tp1 pp4 at m = gb / mb; w_s: every layer's measured W."""
    cluster = Cluster.describe(cluster_text)
    prof = synthetic_profile(SIX, tps=(1,), mbs=(mb,))
    if w_s is not None:
        for rows in prof["shapes"].values():
            for r in rows:
                r["w_s"] = w_s(r)
    cands = enumerate_candidates(4, gb, ModelShape.gpt(SIX), cluster.physical_order(), zero_stages=(0,),
                                 micro_batch_sizes=(mb,))
    cm = CostModel(cluster, Pricer(cluster), prof, Settings(gb, budget=1 << 40))
    return {c.schedule: cm.estimate(c) for c in cands if c.pp == 4}


@pytest.mark.parametrize("n_layers", [1, 2, 6])
def test_zero_bubble_is_offered_exactly_where_it_can_run(n_layers):
    """zb-h1: pp > 1, m >= pp; zb-v also 2 * pp <= layers (two chunks per rank); neither
    with ZeRO-2/3 (W writes .grad itself, train_gpt.py refuses the pair). Fails before
    the change: neither schedule was offered."""
    model = dict(MODEL, n_layers=n_layers)
    layers = n_layers + 2
    cands = enumerate_candidates(8, 16, ModelShape.gpt(model), list(range(8)))
    seen = {(c.dp, c.pp, c.micro_batch_size, c.schedule, c.vpp, c.zero_stage) for c in cands}
    for dp, pp in [(8, 1), (4, 2), (2, 4), (1, 8)]:
        if pp > layers:
            continue
        for mb in [b for b in range(1, 17) if (16 // dp) % b == 0]:
            m = 16 // (dp * mb)
            for z in [0, 1, 2, 3] if dp > 1 else [0]:
                h1 = pp > 1 and m >= pp and z < 2
                assert ((dp, pp, mb, "zb-h1", 1, z) in seen) == h1, (dp, pp, mb, z)
                assert ((dp, pp, mb, "zb-v", 2, z) in seen) == (h1 and 2 * pp <= layers), (dp, pp, mb, z)
    assert not any(c.schedule == "zb-v" and c.vpp != 2 for c in cands)


@pytest.mark.parametrize("pp", [2, 3, 4])
def test_zb_v_chunks_are_the_schedules_own_v_placement(pp):
    """Rank r prices stages r and 2pp-1-r (Schedule.stages_of), not the loop's s % pp.
    Rows are numbered so each stage's rows say which stage they are; 2pp + 3 layers make
    the stages uneven. Fails before the change (chunks_of_rank placed every schedule's
    stages as the loop)."""
    layers = 2 * pp + 3
    rows = [{"i": i} for i in range(layers)]
    sched = build_schedule("zb-v", pp, pp, 2)
    per_rank = chunks_of_rank(rows, pp, 2, "zb-v")
    sizes = [layers // (2 * pp) + (s < layers % (2 * pp)) for s in range(2 * pp)]
    starts = [sum(sizes[:s]) for s in range(2 * pp)]
    for r in range(pp):
        want = [[rows[starts[s] + k] for k in range(sizes[s])] for s in sched.stages_of(r)]
        assert per_rank[r] == want
    assert per_rank[0][0][0]["i"] == 0 and per_rank[0][-1][-1]["i"] == layers - 1   # input and loss on rank 0


@pytest.mark.parametrize("name,v", [("1f1b", 1), ("interleaved", 2), ("zb-h1", 1), ("zb-v", 2)])
def test_posts_per_micro_batch_are_the_schedules_messages(name, v):
    """The p2p posts priced per micro-batch equal the built schedule's own messages (two
    posts each: control block and tensor); zb-v's turn (stages p-1, p on one rank) sends
    nothing. Reference: counting the schedule's SEND/RECV actions."""
    p, m = 4, 8
    sched = build_schedule(name, p, m, v)
    cluster = Cluster.describe(CHEAP)
    cm = CostModel(cluster, Pricer(cluster), synthetic_profile(SIX), Settings(m))
    cands = enumerate_candidates(4, m, ModelShape.gpt(SIX), list(range(4)), zero_stages=(0,), micro_batch_sizes=(1,))
    cand = next(c for c in cands if c.pp == p and c.schedule == name and c.vpp == v)
    for r, acts in enumerate(sched.actions):
        forward_msgs = sum(a.op in ("SEND_F", "RECV_F") for a in acts)
        assert cm._posts_each_way(cand, r) * m == 2 * forward_msgs, (name, r)


def test_the_checker_takes_measured_w_costs():
    """Given W, the checker runs B and W at their own costs: one rank is a plain sum,
    m (F + B + W), whatever the split; a schedule that does not split runs B + W in its
    backward. Odd costs so a halving would show."""
    for name, v in [("zb-h1", 1), ("1f1b", 1)]:
        r = check_schedule(build_schedule(name, 1, 3, v), 1.3, 0.7, 0.0, w_cost=0.45)
        assert r.makespan == pytest.approx(3 * (1.3 + 0.7 + 0.45))
    halves = check_schedule(build_schedule("zb-v", 4, 6, 2), 1.0, 1.5, 0.1)
    given = check_schedule(build_schedule("zb-v", 4, 6, 2), 1.0, 0.75, 0.1, w_cost=0.75)
    assert given.makespan == pytest.approx(halves.makespan) and given.busy == pytest.approx(halves.busy)


def test_the_bubble_dominates_so_zero_bubble_wins():
    """pp 4, m 4, shared memory: W fills 1F1B's bubble (zb-h1) and the V's half-size
    chunks shorten it further (zb-v). Fails before the change: no zb candidate existed."""
    est = _pp4(CHEAP)
    assert est["zb-v"].step_s < est["zb-h1"].step_s < est["1f1b"].step_s
    assert est["zb-v"].detail["bubble"] < est["1f1b"].detail["bubble"]
    best = plan(SIX, 4, cluster=CHEAP, profile=synthetic_profile(SIX), zero_stages=(0,), micro_batch_sizes=(1,))
    first_pp4 = next(e.cand for e in best.ranked if e.cand.pp == 4)   # the plan's own ranking agrees
    assert first_pp4.schedule == "zb-v", first_pp4.name


def test_messages_dominate_so_zero_bubble_loses():
    """1 Mbit/s between single-rank hosts: a message costs more than a stage, and zb-v
    sends twice as many per micro-batch as 1F1B (each rank holds two chunks, both ends
    cross a link); 1F1B stays the cheapest pp-4 schedule."""
    est = _pp4(SLOW)
    assert min(est, key=lambda s: est[s].step_s) == "1f1b"
    assert est["zb-v"].step_s > 1.5 * est["1f1b"].step_s


def test_w_is_priced_from_the_profile_not_halved():
    """A model whose layers have no plain nn.Linear (the GPT's are tensor-parallel layers)
    has W = 0 in the runtime (wgrad.py): zb-h1 then runs 1F1B's work in 1F1B's order and
    must not be predicted faster. With W measured at half the backward it is. Fails
    before the change: the checker halved every backward, so zb-h1 was always cheaper."""
    none = _pp4(CHEAP, w_s=lambda r: 0.0)
    half = _pp4(CHEAP, w_s=lambda r: r["bwd_s"] / 2)
    assert none["zb-h1"].step_s == pytest.approx(none["1f1b"].step_s, rel=0.01)
    assert none["zb-h1"].detail["W"] == 0.0
    assert half["zb-h1"].step_s < 0.9 * half["1f1b"].step_s
    assert half["zb-h1"].detail["W"] == pytest.approx(half["zb-h1"].terms["compute backward"] / 4 / 2)


def test_activations_are_the_checkers_stash_from_f_to_w():
    """Memory: the peak number of chunks between F and W (the checker's, per rank) times
    the chunk's saved bytes."""
    est = _pp4(CHEAP)["zb-v"]
    rows = synthetic_profile(SIX, tps=(1,), mbs=(1,))["shapes"]["tp1-mb1-sp0"]
    per_rank = chunks_of_rank(rows, 4, 2, "zb-v")
    worst = max(range(4), key=lambda r: est.detail["peak_stash"][r]
                * max(sum(x["saved_bytes"] for x in ch) for ch in per_rank[r]))
    chunk = max(sum(x["saved_bytes"] for x in ch) for ch in per_rank[worst])
    assert est.memory["activations"] == est.detail["peak_stash"][worst] * chunk


def test_a_zb_v_plan_config_builds_the_trainers_schedule():
    """The chosen config carries train.schedule = zb-v and virtual_pipeline_stages = 2, and
    the trainer's reading of it (schedule_of, as examples/train_gpt.py) builds the ZB-V
    schedule with its V placement. --explain shows W beside F and B."""
    result = plan(SIX, 4, cluster=CHEAP, profile=synthetic_profile(SIX), zero_stages=(0,), micro_batch_sizes=(1,))
    est = next(e for e in result.ranked if e.cand.schedule == "zb-v")
    cfg = result.config(est)
    assert cfg["train"]["schedule"] == "zb-v" and cfg["virtual_pipeline_stages"] == 2
    pcfg = ParallelConfig.from_config({k: v for k, v in cfg.items() if k not in ("model", "train")}, 4)
    sched = schedule_for_config(pcfg, schedule_of(cfg, pcfg.vpp))
    assert (sched.name, sched.placement, sched.num_stages) == ("zb-v", "v", 2 * est.cand.pp)
    assert ", W " in format_explain(result, est)
    assert schedule_of(dict(cfg, train={"schedule": "1f1b"}), 2) == "interleaved"
    # --memory --config prices the config as the search did (zb-v's stash, not interleaved's)
    mem = memory_of_config(cfg, CHEAP, profile=synthetic_profile(SIX))
    assert mem["estimate"].cand.schedule == "zb-v" and mem["estimate"].memory == est.memory


def test_zero2_is_never_paired_with_a_split_backward():
    cands = enumerate_candidates(8, 16, ModelShape.gpt(SIX), list(range(8)))
    assert {c.zero_stage for c in cands if c.schedule.startswith("zb")} == {0, 1}
    assert {c.zero_stage for c in cands if c.schedule == "1f1b"} == {0, 1, 2, 3}


def test_a_profile_without_w_takes_half_the_backward():
    rows_half = _pp4(CHEAP, w_s=lambda r: r["bwd_s"] / 2)
    rows_none = _pp4(CHEAP)
    for s in ("zb-h1", "zb-v"):
        assert rows_none[s].step_s == pytest.approx(rows_half[s].step_s, rel=1e-6)



def test_no_measured_w_leaves_the_zero_bubble_schedules_out():
    """A profile whose every layer measured W = 0 (the GPT's tensor-parallel Linears) gets no
    zb-h1 / zb-v candidate, and the result says why; with W measured they are searched."""
    kw = dict(cluster=CHEAP, zero_stages=(0,), micro_batch_sizes=(1,))
    prof = synthetic_profile(SIX)
    for rows in prof["shapes"].values():
        for r in rows:
            r["w_s"] = 0.0
    none = plan(SIX, 4, profile=prof, **kw)
    assert not any(e.cand.schedule in ("zb-h1", "zb-v") for e in none.ranked)
    assert any("no weight-gradient work" in n for n in none.notes), none.notes
    some = plan(SIX, 4, profile=synthetic_profile(SIX), **kw)
    assert {"zb-h1", "zb-v"} <= {e.cand.schedule for e in some.ranked}
    assert not any("weight-gradient" in n for n in some.notes)
