"""Pipeline schedules, the checker, stage splitting and message encoding: no processes."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from hcomm.parallel.pipeline import (Action, Schedule, ScheduleError, build_schedule, check_schedule, gpipe,
                                     interleaved_1f1b, one_f_one_b)
from hcomm.parallel.pipeline.p2p import (ACTIVATION, FAILED, GRADIENT, OK, RESHAPED, Message, ProtocolError,
                                          encode_control, parse_control)
from hcomm.parallel.pipeline.runtime import PipelineRuntime, split_microbatches
from hcomm.parallel.pipeline.schedules import stage_ranks, with_comms
from hcomm.parallel.pipeline.zero_bubble import zb_h1, zb_v
from hcomm.parallel.pipeline.stage import StageChain, split_layers, stages_for_rank


def _all_configs():
    for p in range(1, 6):
        for m in range(1, 10):
            yield "gpipe", p, m, 1
            yield "1f1b", p, m, 1
            for v in (2, 3):
                if m >= p and m % p == 0:
                    yield "interleaved", p, m, v


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "interleaved"])
def test_generated_schedules_are_deadlock_free_with_the_textbook_bubble(name):
    for kind, p, m, v in _all_configs():
        if kind != name:
            continue
        report = check_schedule(build_schedule(name, p, m, v))
        ideal = ((p - 1) / v) / (m + (p - 1) / v)   # v = 1: (p-1)/(m+p-1)
        assert report.bubble_fraction == pytest.approx(ideal, abs=1e-12), (name, p, m, v)
        if name == "1f1b":
            assert report.peak_in_flight == [min(p - r, m) for r in range(p)], (p, m)
        if name == "gpipe":
            assert report.peak_in_flight == [m] * p
        if name == "interleaved":   # stage chunks, each 1/v of a rank's layers
            assert max(report.peak_in_flight) <= v * p + 2 * (p - 1), (p, m, v, report.peak_in_flight)


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 8])
def test_zb_h1_is_deadlock_free_and_idles_a_third_of_1f1b(p):
    """With F = B = W (fwd_cost 1, bwd_cost 2 split in halves) a rank of ZB-H1 idles
    (p-1)(F+B-W) = p - 1 per step, a third of 1F1B's (p-1)(F+B+W) = 3(p-1), once m >= p
    (fewer micro-batches cannot fill the pipeline); as the runtime runs it (buffered sends)."""
    for m in (1, 2, 3, p, p + 1, 2 * p + 1, 16):
        sched = build_schedule("zb-h1", p, m)
        assert sched.split_backward and sum(a.op == "W" for acts in sched.actions for a in acts) == p * m
        zb, base = check_schedule(sched), check_schedule(one_f_one_b(p, m))
        assert base.makespan == pytest.approx(3 * (m + p - 1))
        idle = zb.as_run.makespan - 3 * m
        if m >= p:
            assert idle == pytest.approx(p - 1), (p, m, zb.as_run.makespan)
        assert idle <= (base.makespan - 3 * m) / 3 + 1e-9 or m < p, (p, m)
        # a forward only while < p - r micro-batches await B and fewer than the least cap
        # from p up reaching the paper's makespan (bound 2p-1-r) are between F and W
        assert max(zb.peak_in_flight) <= 2 * p - 1, zb.peak_in_flight
        if p == 2 and m % 2 == 0:   # the benchmarks' case: 1F1B's own peak, p
            assert max(zb.peak_in_flight) == max(base.peak_in_flight) == p, zb.peak_in_flight
        assert zb.bubble_as_run <= base.bubble_fraction + 1e-12


def test_zb_h1_held_caps_micro_batches_between_f_and_w():
    """An explicit held bounds every rank; held = p at p = 4, m = 8 keeps 1F1B's peak but
    idles more than a third of 1F1B (why the default may pick p + 1 there)."""
    zb, base = check_schedule(zb_h1(4, 8, held=4)), check_schedule(one_f_one_b(4, 8))
    assert zb.peak_in_flight == [4, 4, 4, 4] and max(base.peak_in_flight) == 4
    assert zb.as_run.makespan - 24 > (base.makespan - 24) / 3
    assert check_schedule(zb_h1(4, 8)).peak_in_flight == [5, 5, 5, 5]
    with pytest.raises(ValueError, match=r"zb-h1 needs held >= p=4 .* got 3"):
        zb_h1(4, 8, held=3)


def test_zb_h1_actions_split_the_backward():
    text = build_schedule("zb-h1", 3, 4).format(compute_only=True)
    assert text.splitlines()[0] == "zb-h1: p=3 v=1 m=4"
    first = text.splitlines()[1].split()[2:]
    assert first[:4] == ["F0.0", "F1.0", "F2.0", "B0.0"] and "W0.0" in first
    with pytest.raises(ValueError, match=r"zb-h1 runs one stage per rank \(v=1\), got v=2"):
        build_schedule("zb-h1", 2, 4, 2)


def test_placement_is_data_loop_and_v():
    loop = interleaved_1f1b(4, 8, 2)
    assert loop.placement == "loop" and [loop.stage_rank(s) for s in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert loop.stages_of(1) == (1, 5)
    vee = zb_v(4, 8)
    assert vee.placement == "v" and [vee.stage_rank(s) for s in range(8)] == [0, 1, 2, 3, 3, 2, 1, 0]
    assert [vee.stages_of(r) for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]
    assert vee.format().splitlines()[0] == "zb-v: p=4 v=2 m=8 placement=v"
    with pytest.raises(ValueError, match=r"placement 'v' needs num_stages = 2 \* p = 6 .* got num_stages=9"):
        stage_ranks("v", 3, 9)
    with pytest.raises(ValueError, match=r"unknown placement 'zigzag'; choose one of loop, v"):
        Schedule("x", 2, 4, 1, ((), ()), "zigzag")


def test_list_scheduler_names_caps_that_leave_nothing_to_run():
    """One chunk between F and W cannot hold a micro-batch's two chunks on one rank."""
    from hcomm.parallel.pipeline.zero_bubble import list_schedule
    with pytest.raises(ValueError, match=r"memory caps \[\(inf, 1\), \(inf, 1\)\] leave no rank an action"):
        list_schedule(2, 4, "v", 4, [(float("inf"), 1)] * 2)
    assert list_schedule(2, 4, "v", 4, [(float("inf"), 2)] * 2).makespan > 0


def _idle(report, m: int) -> float:
    """Idle time per rank and step of the slowest rank, in units of one whole-stage F (= B = W)."""
    return report.makespan - 3 * m


@pytest.mark.parametrize("p", [2, 3, 4, 5, 6, 7, 8])
def test_zb_v_is_deadlock_free_within_1f1b_memory_and_idles_under_a_third(p):
    """Every m from p to 4p: the checker proves it (rendezvous sends), each rank holds at
    most 2p chunks of 1/(2p) of the model between F and W, 1F1B's p micro-batches of 1/p,
    and it idles at most a third of 1F1B (ZB-H1's own ratio with F = B = W); a sixth
    when p divides m, where the list scheduler finds the V's pattern (each rank waits r
    half-size F at the start and fills the rest with W)."""
    worst = 0.0
    for m in range(p, 4 * p + 1):
        sched = build_schedule("zb-v", p, m, 2)
        assert (sched.num_stages, sched.virtual_stages, sched.split_backward) == (2 * p, 2, True)
        zb, base = check_schedule(sched), check_schedule(one_f_one_b(p, m))
        assert max(zb.peak_in_flight) / (2 * p) <= max(base.peak_in_flight) / p, (m, zb.peak_in_flight)
        ratio = _idle(zb.as_run, m) / _idle(base, m)
        assert _idle(zb, m) == pytest.approx(_idle(zb.as_run, m)), m   # rendezvous costs no wait
        assert ratio < 1 / 3, (m, ratio)
        if m % p == 0:
            assert ratio == pytest.approx(1 / 6), (m, ratio)
        worst = max(worst, ratio)
    print(f"zb-v p={p} m={p}..{4 * p}: idle at most {worst:.3f} of 1F1B's; "
          f"{check_schedule(build_schedule('zb-v', p, 2 * p, 2)).format()}")


def test_zb_v_turns_locally_and_sends_only_to_neighbours():
    p, m = 4, 6
    sched = zb_v(p, m)
    sends = [(r, a) for r, acts in enumerate(sched.actions) for a in acts if a.op.startswith("SEND")]
    assert all(abs(r - a.peer) == 1 for r, a in sends)            # never the wrap-around link
    # stage p-1 -> p stays on rank p-1: no activation leaves stage p-1, no gradient leaves stage p
    assert not [a for _, a in sends if (a.op, a.stage) in (("SEND_F", p - 1), ("SEND_B", p))]
    assert sched.stages_of(0) == (0, 2 * p - 1)                   # the loss next to the input
    assert sum(a.op == "W" for acts in sched.actions for a in acts) == 2 * p * m


def test_zb_v_needs_its_timed_message_placement():
    """The same compute orders with every receive right before its consumer (with_comms)
    make a rank receive a channel's messages out of the order they were sent: the checker
    refuses it, which is why zb_v stamps messages with the simulated time."""
    good = zb_v(2, 3)
    compute = [[a for a in acts if a.is_compute] for acts in good.actions]
    with pytest.raises(ScheduleError, match=r"order mismatch on channel 0 -> 1"):
        check_schedule(with_comms("naive", compute, 2, 4, 3, placement="v"))
    check_schedule(good)


@pytest.mark.parametrize("call, message", [
    (lambda: zb_v(4, 8, 1), r"zb-v runs exactly two chunks per rank \(v=2\), got v=1"),
    (lambda: build_schedule("zb-v", 4, 8, 3), r"got v=3"),
    (lambda: zb_v(4, 3), r"zb-v needs at least p micro-batches: m=3 < p=4"),
    (lambda: zb_v(1, 4), r"zb-v needs p >= 2 pipeline ranks, got p=1"),
    (lambda: zb_v(2, 0), r"m must be a positive int, got 0"),
    (lambda: zb_h1(2, 4, 2), r"use 'zb-v' for two chunks per rank"),
])
def test_zb_v_bad_input_names_the_parameter(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_report_names_the_schedule_and_prediction():
    text = check_schedule(one_f_one_b(4, 8)).format()
    assert "1f1b" in text and "deadlock-free" in text and "0.273" in text and "4 3 2 1" in text


def _replace(sched: Schedule, rank: int, acts) -> Schedule:
    lists = list(sched.actions)
    lists[rank] = tuple(acts)
    return Schedule(sched.name, sched.num_ranks, sched.num_stages, sched.num_microbatches, tuple(lists),
                    sched.placement)


def _swap_first_two(sched: Schedule, rank: int, op: str) -> Schedule:
    acts = list(sched.actions[rank])
    i, j = [k for k, a in enumerate(acts) if a.op == op][:2]
    acts[i], acts[j] = acts[j], acts[i]
    return _replace(sched, rank, acts)


def test_checker_rejects_receives_in_the_wrong_order():
    bad = _swap_first_two(one_f_one_b(3, 4), 2, "RECV_F")
    with pytest.raises(ScheduleError, match=r"order mismatch on channel 1 -> 2: rank 1 action \d+ SEND_F\(mb=0.*"
                                            r"meets rank 2 action 0 RECV_F\(mb=1"):
        check_schedule(bad)


def test_checker_rejects_a_deadlock_naming_rank_action_and_op():
    # rank 0 waits for the gradient of mb 0 before it has sent mb 0's activation
    F, B = (lambda mb: Action("F", mb, 0)), (lambda mb: Action("B", mb, 0))
    rank0 = [F(0), Action("RECV_B", 0, 0, 1), F(1), Action("SEND_F", 0, 0, 1), Action("SEND_F", 1, 0, 1),
             B(0), Action("RECV_B", 1, 0, 1), B(1)]
    bad = _replace(gpipe(2, 2), 0, rank0)
    with pytest.raises(ScheduleError) as err:
        check_schedule(bad)
    text = str(err.value)
    assert "deadlocks" in text
    assert "rank 0 action 1 RECV_B(mb=0, stage=0, peer=1) is unmatched" in text
    assert "rank 1 action 0 RECV_F(mb=0, stage=1, peer=0) is unmatched" in text


def test_checker_finds_the_deadlock_of_naive_comm_placement_in_interleaved():
    """Placing each send right after its compute deadlocks interleaved 1F1B once m > p
    (the looped rank p-1 -> 0 traffic); the real generator batches sends differently."""
    good = interleaved_1f1b(2, 4, 2)
    compute = [[a for a in acts if a.is_compute] for acts in good.actions]
    naive = with_comms("naive", compute, 2, 4, 4)
    with pytest.raises(ScheduleError, match="deadlocks"):
        check_schedule(naive)
    check_schedule(good)


@pytest.mark.parametrize("fault, message", [
    ("drop_recv", r"rank 1 action \d+ B\(mb=1, stage=1\) runs before its output gradient was received"),
    ("wrong_peer", r"rank 0 action 1 SEND_F\(mb=0, stage=0, peer=2\): neighbour stage 1 lives on rank 1"),
    ("missing_b", r"rank 2 never runs B\(mb=3, stage=2\)"),
    ("wrong_rank", r"rank 0 action 0 F\(mb=0, stage=1\): stage 1 lives on rank 1"),
    ("repeat", r"rank 0 action 2 F\(mb=0, stage=0\) repeats rank 0 action 0"),
    ("b_before_f", r"rank 2 action 1 B\(mb=0, stage=2\) runs before F\(mb=0, stage=2\) ran"),
])
def test_checker_rejects_planted_faults(fault, message):
    sched = one_f_one_b(3, 4)
    acts = list(sched.actions[{"drop_recv": 1, "missing_b": 2, "b_before_f": 2}.get(fault, 0)])
    if fault == "drop_recv":
        del acts[[k for k, a in enumerate(acts) if a.op == "RECV_B"][1]]
    elif fault == "wrong_peer":
        acts[1] = Action("SEND_F", 0, 0, 2)
    elif fault == "missing_b":
        acts = [a for a in acts if not (a.op == "B" and a.mb == 3)]
    elif fault == "wrong_rank":
        acts[0] = Action("F", 0, 1)
    elif fault == "repeat":
        acts[2] = acts[0]
    elif fault == "b_before_f":
        acts[1], acts[2] = acts[2], acts[1]
    rank = {"drop_recv": 1, "missing_b": 2, "b_before_f": 2}.get(fault, 0)
    with pytest.raises(ScheduleError, match=message):
        check_schedule(_replace(sched, rank, acts))


@pytest.mark.parametrize("call, message", [
    (lambda: interleaved_1f1b(4, 3, 2), r"at least p micro-batches: m=3 < p=4"),
    (lambda: interleaved_1f1b(4, 6, 2), r"m divisible by p: m=6 % p=4 = 2"),
    (lambda: interleaved_1f1b(2, 4, 1), r"v >= 2"),
    (lambda: gpipe(2, 4, 2), r"gpipe runs one stage per rank"),
    (lambda: one_f_one_b(2, 4, 3), r"1f1b runs one stage per rank"),
    (lambda: build_schedule("zb", 2, 4), r"unknown schedule 'zb'"),
    (lambda: one_f_one_b(0, 4), r"p must be a positive int"),
    (lambda: gpipe(2, 0), r"m must be a positive int"),
])
def test_impossible_schedules_raise_before_running(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_schedule_from_a_parallel_config():
    from hcomm.parallel.mesh import ParallelConfig
    from hcomm.parallel.pipeline import schedule_for_config

    cfg = ParallelConfig(dp=2, pp=4, vpp=2, micro_batch_size=3, global_batch_size=48)
    sched = schedule_for_config(cfg)
    assert (sched.name, sched.num_ranks, sched.virtual_stages, sched.num_microbatches) == ("interleaved", 4, 2, 8)
    assert schedule_for_config(ParallelConfig(dp=1, pp=3, global_batch_size=5)).name == "1f1b"
    with pytest.raises(ValueError, match=r"m=6 % p=4 = 2"):
        schedule_for_config(ParallelConfig(dp=1, pp=4, vpp=2, global_batch_size=6))
    vee = schedule_for_config(ParallelConfig(dp=1, pp=4, vpp=2, global_batch_size=6), "zb-v")
    assert (vee.name, vee.placement, vee.num_stages, vee.num_microbatches) == ("zb-v", "v", 8, 6)
    with pytest.raises(ValueError, match=r"zb-v runs exactly two chunks per rank \(v=2\), got v=1"):
        schedule_for_config(ParallelConfig(dp=1, pp=4, global_batch_size=8), "zb-v")


def test_split_layers_even_uneven_and_errors():
    layers = [nn.Linear(3, 3) for _ in range(6)]
    stages = split_layers(nn.Sequential(*layers), 3)
    assert [len(s.layers) for s in stages] == [2, 2, 2]
    assert stages[1].layers[0] is layers[2]          # the same modules, not copies
    assert [len(s.layers) for s in split_layers(layers, 2, sizes=[1, 5])] == [1, 5]
    with pytest.raises(ValueError, match=r"6 layers cannot be split evenly into 4 stages \(6 % 4 = 2\)"):
        split_layers(layers, 4)
    with pytest.raises(ValueError, match=r"sum to 5, but there are 6 layers"):
        split_layers(layers, 2, sizes=[2, 3])
    with pytest.raises(TypeError, match="layer 1 is a str"):
        split_layers([layers[0], "relu"], 2)
    sched = interleaved_1f1b(2, 2, 3)
    mine = stages_for_rank(split_layers(layers, 6), 1, sched)
    assert sorted(mine) == [1, 3, 5]
    with pytest.raises(ValueError, match=r"3 stage modules for a schedule of 6 stages"):
        stages_for_rank(stages, 0, sched)


def test_stage_chain_unpacks_tuples_like_the_pipeline():
    class Two(nn.Module):
        def forward(self, a, b):
            return a + b, a * b

    x, y = torch.randn(3), torch.randn(3)
    out = StageChain([Two(), Two()])(x, y)
    torch.testing.assert_close(out[0], (x + y) + x * y)


def test_runtime_rejects_a_stage_set_that_does_not_match_the_schedule():
    sched = interleaved_1f1b(2, 2, 2)
    mods = {0: nn.Linear(2, 2), 1: nn.Linear(2, 2)}
    with pytest.raises(ValueError, match=r"pp rank 0 must hold stages \[0, 2\] of 4"):
        PipelineRuntime(mods, sched, None, pp_rank=0, pp_ranks=[0, 1])
    with pytest.raises(ValueError, match=r"pp_ranks \[0, 1, 2\] has 3 ranks for a schedule of p=2"):
        PipelineRuntime({0: mods[0], 2: mods[1]}, sched, None, pp_rank=0, pp_ranks=[0, 1, 2])
    vee = zb_v(2, 2)
    with pytest.raises(ValueError, match=r"pp rank 0 must hold stages \[0, 3\] of 4 \(placement 'v'"):
        PipelineRuntime({0: mods[0], 2: mods[1]}, vee, None, pp_rank=0, pp_ranks=[0, 1])
    mesh = SimpleNamespace(cfg=SimpleNamespace(pp=2, vpp=1, dp=1))
    with pytest.raises(ValueError, match=r"schedule has p=2, v=2 but the mesh has pp\(2\), vpp\(1\)"):
        PipelineRuntime.from_mesh(mesh, {0: mods[0], 2: mods[1]}, sched, None)


def test_split_microbatches():
    x, idx = torch.randn(6, 4), torch.arange(6)
    parts = split_microbatches((x, idx), 3, "inputs")
    assert len(parts) == 3 and torch.equal(parts[1][1], torch.tensor([2, 3]))
    assert torch.equal(split_microbatches(x, 2, "targets")[1], x[3:])
    with pytest.raises(ValueError, match=r"inputs\[1\] has batch size 5, not divisible into m=2"):
        split_microbatches((x, torch.arange(5)), 2, "inputs")


def test_control_block_round_trip_and_errors():
    tensors = (torch.randn(2, 3, dtype=torch.float64), torch.arange(5), torch.ones(4, 1, 2, dtype=torch.bfloat16))
    ctrl = encode_control(Message(ACTIVATION, 3, 1, tensors), 64)
    status, spec = parse_control(ctrl, ACTIVATION, 3, 1)
    assert status == OK and spec == tuple((t.dtype, tuple(t.shape)) for t in tensors)
    assert parse_control(encode_control(Message(GRADIENT, 0, 2, None), 16), GRADIENT, 0, 2) == (FAILED, ())
    failed = encode_control(Message(GRADIENT, 0, 2, tensors[:1], failed=True), 16)
    assert parse_control(failed, GRADIENT, 0, 2)[0] == FAILED
    reshaped = encode_control(Message(ACTIVATION, 3, 1, tensors), 64, reshaped=True)
    assert parse_control(reshaped, ACTIVATION, 3, 1) == (RESHAPED, spec)
    unknown = failed.clone()
    unknown[1] = 7   # status word
    with pytest.raises(ProtocolError, match="expected gradients of mb 0 from stage 2"):
        parse_control(unknown, GRADIENT, 0, 2)
    with pytest.raises(ProtocolError, match="expected activations of mb 4 from stage 1"):
        parse_control(ctrl, ACTIVATION, 4, 1)
    with pytest.raises(ValueError, match=r"need 18 control words > header_words=16"):
        encode_control(Message(ACTIVATION, 0, 0, tensors), 16)
    with pytest.raises(TypeError, match="sends a list at position 0"):
        encode_control(Message(ACTIVATION, 0, 0, ([1],)), 64)


def _gpipe_makespan(fwd, bwd, m):
    """GPipe with free messages, as a recurrence over (stage, micro-batch): a forward starts
    when the stage's previous forward and the previous stage's same forward are done; the
    backwards run after the stage's last forward, in micro-batch order, each after the next
    stage's same backward."""
    p = len(fwd)
    f_end = [[0.0] * m for _ in range(p)]
    for s in range(p):
        for i in range(m):
            f_end[s][i] = max(f_end[s][i - 1] if i else 0.0, f_end[s - 1][i] if s else 0.0) + fwd[s]
    b_end = [[0.0] * m for _ in range(p)]
    for s in reversed(range(p)):
        for i in range(m):
            ready = max(b_end[s][i - 1] if i else f_end[s][m - 1], b_end[s + 1][i] if s < p - 1 else 0.0)
            b_end[s][i] = ready + bwd[s]
    return max(b_end[s][m - 1] for s in range(p))


def test_ranks_of_unequal_cost_follow_the_gpipe_recurrence():
    gen = torch.Generator().manual_seed(5)
    for p, m in [(2, 3), (3, 5), (4, 4), (5, 2)]:
        fwd = (torch.rand(p, generator=gen) * 3 + 0.1).tolist()
        bwd = (torch.rand(p, generator=gen) * 5 + 0.1).tolist()
        report = check_schedule(gpipe(p, m), fwd, bwd)
        assert report.makespan == pytest.approx(_gpipe_makespan(fwd, bwd, m))
        assert report.busy == pytest.approx([m * (f + b) for f, b in zip(fwd, bwd)])


def test_per_rank_costs_of_the_wrong_length_are_named():
    with pytest.raises(ValueError, match="fwd_cost has 2 entries for 3 ranks"):
        check_schedule(gpipe(3, 2), [1.0, 2.0], 1.0)


def test_each_message_takes_its_own_links_cost():
    # One micro-batch is a chain: every stage's forward in turn, then every backward in
    # reverse, one message over each link each way. Links of unequal cost (a pipeline
    # whose stages straddle a host boundary at one link only) add each their own, twice.
    gen = torch.Generator().manual_seed(7)
    for p in (2, 3, 4, 5):
        fwd = (torch.rand(p, generator=gen) * 3 + 0.1).tolist()
        bwd = (torch.rand(p, generator=gen) * 5 + 0.1).tolist()
        links = (torch.rand(p, generator=gen) * 2).tolist()     # entry p - 1: the wrap-around, unused here
        for sched in (gpipe(p, 1), one_f_one_b(p, 1)):
            report = check_schedule(sched, fwd, bwd, links)
            assert report.makespan == pytest.approx(sum(fwd) + sum(bwd) + 2 * sum(links[:p - 1]))
    with pytest.raises(ValueError, match="comm_cost has 2 entries for 3 ranks"):
        check_schedule(gpipe(3, 2), 1.0, 1.0, [0.5, 0.5])


def test_only_interleaved_schedules_use_the_wrap_around_link():
    # Link p - 1 joins the last rank and the first: interleaved 1F1B's chunk boundary
    # crosses it, plain 1F1B never does.
    p, m, wrap = 3, 6, [0.1, 0.1, 5.0]
    plain = build_schedule("1f1b", p, m, 1)
    same = check_schedule(plain, 1.0, 2.0, 0.1).makespan
    assert check_schedule(plain, 1.0, 2.0, wrap).makespan == pytest.approx(same)
    inter = build_schedule("interleaved", p, m, 2)
    assert check_schedule(inter, 1.0, 2.0, wrap).makespan > check_schedule(inter, 1.0, 2.0, 0.1).makespan + 5.0
