"""optimizer_profile.py: the optimizer step per element by ZeRO stage. The split of the
least step times into what is paid per element of the rank's parameters (full) and per
element of its shard (shard) is checked on made-up times; the real measurement runs in the
profile's child (test_plan_profile.py checks its form; its figures depend on the machine)."""
import pytest

from hcomm.parallel.plan import optimizer_profile as op


def test_stage_one_pays_its_copy_of_the_whole_gradient_beside_the_shard_step():
    n = 1 << 10
    small, big = n // 8, n
    least = {(0, small): 1.0, (0, big): 1.0 + 7 * 4e-3,      # 4e-3 per n / 8 elements plain, + 1 s fixed
             (1, small): 2.0, (1, big): 2.0 + 7 * 3e-3,      # 3e-3 = 1e-3 copy + 2e-3 shard
             (2, small): 0.5, (2, big): 0.5 + 7 * 2e-3,
             (3, small): 0.7, (3, big): 0.7 + 7 * 2.5e-3}
    got = op.split_per_element(least, numel=n)
    per = 1 / (n / 8)              # the made-up differences are over 7 n / 8 elements, 7 units
    assert got["0"] == pytest.approx([4e-3 * per, 0.0])
    assert got["1"] == pytest.approx([1e-3 * per, 2e-3 * per])
    assert got["2"] == pytest.approx([0.0, 2e-3 * per])
    assert got["3"] == pytest.approx([0.0, 2.5e-3 * per])
    # a stage-1 step measured cheaper than stage 2's (noise) is no negative copy
    least[1, big] = 2.0 + 7 * 1e-3
    assert op.split_per_element(least, numel=n)["1"][0] == 0.0


def test_stage_one_cannot_be_split_without_stage_two():
    with pytest.raises(ValueError, match=r"stage 1's full-gradient copy .* lack 2"):
        op.measure_optimizer_step(None, stages=(0, 1))

