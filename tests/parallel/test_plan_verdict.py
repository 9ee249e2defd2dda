"""benchmarks/planner_verdict.py: the accuracy benchmark's figures and what the measured
spread says about them, without processes. Each case is a set of interleaved repeats a
run can produce (seconds per step, one list per plan, one entry per repeat). Also the
benchmarks' other pure pieces: the accuracy run's order of runs, the breakdown's split
of a step into its pipeline phase and its step end."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))
from planner_verdict import (apart, median_error, misordered, rank_order, rank_verdict, spearman,  # noqa: E402
                             spread, top_plan)


def test_spearman_matches_an_independent_reference_on_random_data_with_ties():
    rng = np.random.default_rng(7)
    for n in (3, 5, 8, 13):
        a = rng.integers(0, 4, n).astype(float)        # ties on purpose
        b = rng.normal(size=n)
        # reference: Pearson of the average ranks, ranks from numpy's argsort
        def ranks(x):
            r = np.empty(n)
            r[np.argsort(x, kind="stable")] = np.arange(n)
            for v in np.unique(x):
                r[x == v] = r[x == v].mean()
            return r
        want = np.corrcoef(ranks(a), ranks(b))[0, 1]
        assert spearman(list(a), list(b)) == pytest.approx(want)
    assert rank_order([3.0, 1.0, 3.0, 2.0]) == [2.5, 0.0, 2.5, 1.0]


def test_spread_and_apart():
    assert spread([3.0, 1.0, 2.0, 5.0]) == (1.0, 2.5, 5.0)
    assert apart([1.0, 1.2], [1.3, 2.0]) and not apart([1.0, 1.4], [1.3, 2.0])
    with pytest.raises(ValueError, match="no repeat"):
        spread([])


def test_the_top_plan_within_ten_percent_is_met():
    preds = [1.0, 2.0, 3.0]
    runs = [[1.05, 1.08, 1.09], [1.0, 1.0, 1.0], [3.0, 3.1, 3.2]]
    v, ratio, best = top_plan(preds, runs)
    assert (v, best) == ("met", 1) and ratio == pytest.approx(1.08)


def test_a_top_plan_over_ten_percent_but_inside_the_spread_is_indistinguishable_not_met():
    preds = [1.0, 2.0]
    # the top plan's median is 1.5x the best's, but its fastest repeat beat the best's slowest
    assert top_plan(preds, [[1.4, 1.5, 1.6], [0.9, 1.0, 1.5]])[0] == "indistinguishable"
    # apart: every repeat of the top plan slower than every repeat of the best
    assert top_plan(preds, [[1.4, 1.5, 1.6], [0.9, 1.0, 1.1]])[0] == "missed"
    # one repeat has no spread: over 10 % is a miss
    assert top_plan(preds, [[1.5], [1.0]])[0] == "missed"


def test_misordered_pairs_are_found_and_judged_by_their_repeats():
    preds = [1.0, 2.0, 3.0]
    runs = [[2.0, 2.1, 2.2], [1.0, 1.5, 2.05], [3.0, 3.0, 3.0]]     # 0 and 1 swapped, ranges overlap
    assert misordered(preds, runs) == [(0, 1, False)]
    runs[1] = [1.0, 1.5, 1.6]                                       # now apart
    assert misordered(preds, runs) == [(0, 1, True)]
    assert misordered(preds, [[1.0], [1.0], [1.0]]) == []           # ties are no order


def test_spearman_below_target_with_every_misordering_inside_the_spread_is_indistinguishable():
    preds = [1.0, 2.0, 3.0, 4.0]
    # measured medians reversed pairwise (rho 0.6), each swapped pair overlapping
    runs = [[1.9, 2.0, 2.6], [1.5, 1.7, 2.1], [3.9, 4.0, 4.4], [3.3, 3.6, 4.0]]
    v, rho, per_repeat, pairs, real = rank_verdict(preds, runs)
    assert rho == pytest.approx(0.6) and (v, pairs, real) == ("indistinguishable", 2, 0)
    assert per_repeat == (pytest.approx(0.6), pytest.approx(0.6))    # each repeat alone swaps the same pairs
    runs[1] = [1.0, 1.1, 1.2]                      # one swapped pair apart: a real miss
    v, rho, _, pairs, real = rank_verdict(preds, runs)
    assert (v, pairs, real) == ("missed", 2, 1)


def test_spearman_at_target_is_met_whatever_the_spread():
    preds = [1.0, 2.0, 3.0, 4.0, 5.0]
    runs = [[1.0, 1.1], [2.0, 2.1], [3.0, 3.1], [4.0, 4.1], [5.0, 5.1]]
    v, rho, per_repeat, pairs, real = rank_verdict(preds, runs)
    assert (v, pairs, real) == ("met", 0, 0) and rho == pytest.approx(1.0) and per_repeat == (1.0, 1.0)


def test_median_error_on_the_medians_and_its_range_over_repeats():
    preds = [1.0, 2.0, 4.0]
    runs = [[1.0, 2.0, 1.25], [2.0, 2.5, 4.0], [4.0, 4.0, 8.0]]
    whole, (lo, hi) = median_error(preds, runs)
    # medians 1.25, 2.5, 4.0 -> errors 0.2, 0.2, 0 -> median 0.2
    assert whole == pytest.approx(0.2)
    # repeat 0: errors 0, 0, 0; repeat 1: 0.5, 0.2, 0; repeat 2: 0.2, 0.5, 0.5
    assert (lo, hi) == (pytest.approx(0.0), pytest.approx(0.5))


def test_bad_input_names_what_is_wrong():
    with pytest.raises(ValueError, match="one prediction per measured plan"):
        top_plan([1.0], [[1.0], [2.0]])
    with pytest.raises(ValueError, match=r"plans \[1\] have no repeat"):
        rank_verdict([1.0, 2.0], [[1.0], []])
    with pytest.raises(ValueError, match="lists of 2 and 3"):
        spearman([1, 2], [1, 2, 3])


def test_the_benchmark_runs_every_plan_once_per_repeat_each_repeat_rotated():
    from planner_accuracy import interleaved

    order = interleaved(["a", "b", "c"], 3)
    assert order == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 0), (2, 2), (2, 0), (2, 1)]
    for rep in range(3):     # each repeat holds every plan exactly once
        assert sorted(i for r, i in order if r == rep) == [0, 1, 2]
    assert [i for r, i in order if r == 1][0] != [i for r, i in order if r == 0][0]


def test_the_breakdown_splits_a_step_at_the_last_world_all_gather_before_the_optimizer():
    from planner_breakdown import phases

    w = "coll allgather n2"
    # rank 0: a ZeRO-3 world gather inside its forward, then the status gather and its wait
    r0 = [("step", 0.0, 10.0), ("forward", 0.0, 1.0), (w, 1.0, 1.5), ("backward", 1.5, 4.0), (w, 4.0, 4.1),
          ("wait", 4.1, 6.0), ("optimizer", 6.0, 9.0)]
    r1 = [("step", 0.5, 9.5), ("forward", 0.5, 2.0), (w, 2.0, 2.2), ("backward", 2.2, 5.9), (w, 5.9, 6.1),
          ("optimizer", 6.1, 9.5)]
    pipe, end = phases([r0, r1], 2)
    assert pipe == pytest.approx(6.1) and end == pytest.approx(3.9)
    assert phases([[("step", 0.0, 1.0), ("forward", 0.0, 1.0)]], 2) is None     # no status gather: no split


def test_each_repeat_against_its_own_calibrations_prediction():
    from planner_verdict import matched_error

    # the load doubled between the repeats, and the second calibration saw it
    preds = [[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]]
    runs = [[1.1, 2.2], [2.0, 4.0], [3.3, 6.6]]
    whole, (lo, hi), (rlo, rhi) = matched_error(preds, runs)
    assert whole == pytest.approx(1 / 11) and (lo, hi) == (pytest.approx(1 / 11), pytest.approx(1 / 11))
    assert (rlo, rhi) == (pytest.approx(1.0), pytest.approx(1.0))
    # against the first calibration alone the second repeat is off by half
    assert median_error([p[0] for p in preds], runs)[1][1] == pytest.approx(6 / 11)
    with pytest.raises(ValueError, match="one prediction per repeat"):
        matched_error([[1.0], [2.0, 4.0], [3.0, 6.0]], runs)
