"""benchmarks/tuner_verdict.py: the validation's verdict on a point, from its passes'
times, without processes. Each case is a set of passes a run can produce."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from tuner_verdict import band, best_forced, counts, median, tally, verdict  # noqa: E402


def test_the_best_picked_is_within():
    passes = {"ring": [3.0, 2.0, 2.5], "direct": [4.0, 3.9, 4.1]}
    assert best_forced(passes) == "ring"
    assert verdict(passes, "ring") == ("within", 1.0, "ring")


def test_a_pick_within_ten_percent_of_the_best_median_is_within():
    passes = {"ring": [1.0, 1.0, 1.0], "direct": [1.09, 1.10, 1.5]}
    v, ratio, best = verdict(passes, "direct")
    assert (v, best) == ("within", "ring") and ratio == pytest.approx(1.10)


def test_overlapping_ranges_over_ten_percent_are_indistinguishable_not_met():
    # direct's median is 1.5x ring's, but its fastest pass beat ring's slowest: the
    # difference is inside this point's run-to-run spread
    passes = {"ring": [1.0, 1.0, 2.0], "direct": [1.5, 1.5, 1.8]}
    assert verdict(passes, "direct")[0] == "indistinguishable"
    # apart: every pass of the pick slower than every pass of the best
    passes = {"ring": [1.0, 1.0, 1.2], "direct": [1.5, 1.5, 1.8]}
    assert verdict(passes, "direct")[0] == "missed"


def test_one_pass_has_no_spread_so_over_ten_percent_is_a_miss():
    assert verdict({"ring": [1.0], "direct": [1.2]}, "direct")[0] == "missed"
    assert verdict({"ring": [1.0], "direct": [1.05]}, "direct")[0] == "within"


def test_auto_is_judged_by_its_own_passes_against_the_forced_best():
    passes = {"ring": [1.0, 1.1, 1.2], "direct": [2.0, 2.1, 2.2]}
    assert verdict(passes, "ring", times=[1.5, 1.6, 1.7])[0] == "missed"      # auto slower than ring forced
    assert verdict(passes, "ring", times=[1.0, 1.05, 1.3])[0] == "within"


def test_bad_input_names_what_is_wrong():
    with pytest.raises(ValueError, match="tree.*was not measured.*ring"):
        verdict({"ring": [1.0]}, "tree")
    with pytest.raises(ValueError, match="no passes"):
        median([])
    with pytest.raises(ValueError, match="no forced algorithm"):
        best_forced({})


def test_bands_and_counts():
    assert [band(b) for b in (8, 4 << 10, 32 << 10, 256 << 10, 2 << 20, 64 << 20)] == \
        ["8B-4K", "8B-4K", "32K-256K", "32K-256K", "2M-64M", "2M-64M"]
    points = [{"c": "a", "v": "within"}, {"c": "a", "v": "missed"}, {"c": "b", "v": "indistinguishable"}]
    t = tally(points, lambda p: p["c"], lambda p: p["v"])
    assert counts(t["a"]) == "1/0/1" and counts(t["b"]) == "0/1/0"
    assert median([3, 1, 2, 10]) == 2.5
