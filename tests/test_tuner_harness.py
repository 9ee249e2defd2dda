"""benchmarks/tuner_validation.py's harness logic, without processes: which points are
warmed before they are timed, and the per-call verdict's inputs (docs/tuner.md, round 8)."""
import itertools
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from tuner_validation import LADDER, RATES, WARM_UNDER_S, rate_bits, schedule  # noqa: E402

MIB = 1 << 20


def _sizes():
    from hcomm.topology import parse_size

    return [parse_size(s) for s in LADDER.split(",")]


def test_a_64_mib_pass_at_1_gbit_is_warmed_before_it_is_timed():
    # Round 7's "unwarmed pass": one call of 0.4-0.7 s, timed cold, so the algorithm that
    # first mapped its 64 MiB of scratch in that pass paid for it (forced hierarchical
    # reduce_scatter 600-617 ms, auto running it right after 486-505).
    calls, passes, warm = schedule(64 * MIB, "1gbit", 3)
    assert (calls, passes, warm) == (1, 1, True)


@pytest.mark.parametrize("rate", RATES)
def test_every_point_but_a_multi_second_call_is_warmed(rate):
    for nbytes in _sizes():
        calls, passes, warm = schedule(nbytes, rate, 3)
        wire = nbytes * 8 / rate_bits(rate)
        assert calls >= 1 and passes >= 1
        assert warm or wire >= WARM_UNDER_S, f"{nbytes} B at {rate}: a {wire:.2f} s call timed cold"


def test_only_multi_second_calls_at_100_mbit_are_left_cold_on_the_ladder():
    cold = [(n, r) for r in RATES for n in _sizes() if not schedule(n, r, 3)[2]]
    assert cold == [(16 * MIB, "100mbit"), (64 * MIB, "100mbit")]


class _FakeComm:
    """Records what tuner_validation._point does: which algorithm each collective call
    forced ("" = auto) and where the barriers fall. No processes, no clocks."""

    size, rank = 2, 0

    def __init__(self):
        self.events = []
        self._c = self

    def allreduce(self, *args, **kwargs):  # both comm.allreduce(t, op=) and _c.allreduce(...)
        if "op" not in kwargs:
            self.events.append(args[6])

    def barrier(self):
        self.events.append("|")

    def last_algorithm(self):
        return "ring"


def _per_algorithm(events):
    """[(algo, untimed calls, timed calls)]: the calls before a barrier are the warm-up of
    the algorithm they force, the run of it right after the barrier its timed calls."""
    segments = [[]]
    for e in events:
        segments.append([]) if e == "|" else segments[-1].append(e)
    out, warm = [], segments[0]
    for seg in segments[1:]:
        timed = len(seg) - len(list(itertools.dropwhile(lambda e: e == warm[0], seg)))
        out.append((warm[0], len(warm), timed))
        warm = seg[timed:]
    return out


@pytest.mark.parametrize("nbytes,rate", [(64 * MIB, "1gbit"), (4 << 10, "10gbit")])
def test_every_algorithm_gets_the_same_warm_up_before_its_first_timed_pass(nbytes, rate):
    from tuner_validation import ALGOS, WARM_FIRST, _point

    comm = _FakeComm()
    _point(comm, "allreduce", nbytes, rate, repeats=2, per_call=False)
    calls, passes, _ = schedule(nbytes, rate, 2)
    seen = _per_algorithm(comm.events)
    order = ALGOS["allreduce"] + ("",)
    assert [a for a, _, _ in seen] == list(order) + list(order[1:] + order[:1])[: len(seen) - len(order)]
    assert [(w, t) for _, w, t in seen[: len(order)]] == [(WARM_FIRST, calls)] * len(order)
    assert [(w, t) for _, w, t in seen[len(order):]] == [(1, calls)] * (len(seen) - len(order))
    assert len(seen) == passes * len(order) and WARM_FIRST >= 3


def test_per_call_times_judge_the_pick_beside_the_back_to_back_verdict():
    from tuner_validation import judge

    # Round 7's 2 x 2 broadcast of 8 B, in us: back to back binomial is faster (its root
    # posts and moves on), aligned hierarchical is (one shm hop for a second tcp hop).
    row = {"passes": {"binomial": [8e-6, 12e-6, 15e-6], "hierarchical": [17e-6, 19e-6, 20e-6],
                      "auto": [18e-6, 19e-6, 21e-6]},
           "aligned": {"binomial": [50e-6, 55e-6, 61e-6], "hierarchical": [37e-6, 45e-6, 48e-6],
                       "auto": [38e-6, 44e-6, 49e-6]},
           "auto_algo": "hierarchical", "picks": {"no_sock": "hierarchical"}}
    j = judge(row)
    assert j["pick"][0] == "missed" and j["pick"][2] == "binomial"
    assert j["call"] == ("within", 1.0, "hierarchical")


def test_a_point_timed_only_back_to_back_has_no_per_call_verdict():
    from tuner_validation import judge

    row = {"passes": {"ring": [1.0], "direct": [1.2], "auto": [1.0]}, "auto_algo": "ring",
           "picks": {"no_sock": "ring"}}
    assert "call" not in judge(row) and judge(row)["pick"][0] == "within"
