"""calibrate.py's reductions of the measured call times, without processes (a fake comm
whose allreduce adds the other ranks' arrays); what they read on a machine is measured by
benchmarks/planner_breakdown.py, not asserted."""
import numpy as np
import pytest

from hcomm.parallel.plan import calibrate


class _FakeComm:
    """Rank `rank` of `size`: allreduce adds the other ranks' contributions in place."""

    def __init__(self, rank, size, others):
        self.rank, self.size, self.others = rank, size, others

    def allreduce(self, x, op="sum"):
        assert op == "sum"
        x += self.others


def test_group_sizes_are_the_divisors_of_the_world():
    assert calibrate._group_sizes(12) == [1, 2, 3, 4, 6, 12]
    assert calibrate._group_sizes(3) == [1, 3]


def test_call_overhead_is_the_slowest_groups_median_burst_of_group_means():
    rng = np.random.default_rng(0)
    size, bursts, calls = 6, 5, 7
    times = rng.exponential(1e-3, (size, bursts, calls))
    blocks = [[0, 1, 2], [3, 4, 5]]
    others = times.copy()
    others[2] = 0.0                               # what rank 2 contributes itself
    got = calibrate._group_means(_FakeComm(2, size, others), times[2], blocks)
    # reference: for each group, per burst the mean over its ranks and calls; median over bursts
    ref = max(np.median([np.mean([times[r, b] for r in blk]) for b in range(bursts)]) for blk in blocks)
    assert got == pytest.approx(ref)
    # a rank that waits 50 ms more in every call of group 0 adds 50 / 3 ms: the group's
    # mean, not its slowest rank's time (which holds the partner's compute skew)
    slow = times.copy()
    slow[0] += 0.05
    others = slow.copy()
    others[2] = 0.0
    group0 = np.median([np.mean([times[r, b] for r in blocks[0]]) for b in range(bursts)])
    assert calibrate._group_means(_FakeComm(2, size, others), slow[2], blocks) == pytest.approx(group0 + 0.05 / 3)
