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


class _RecordingGroup:
    """A process group of one side of a pair that records when each operation is posted
    and waited; waits return at once (the ordering is what is checked, not the bytes)."""

    class _Work:
        def __init__(self, log, op):
            self.log, self.op, self.waited = log, op, False

        def wait(self):
            assert not self.waited, f"{self.op} waited twice"
            self.waited = True
            self.log.append(("wait", self.op))

    def __init__(self):
        self.log, self.works = [], []

    def _post(self, kind, tensors, peer, tag):
        assert len(tensors) == 1 and tag == 0
        work = self._Work(self.log, (kind, len(self.works)))
        self.works.append(work)
        self.log.append(("post", work.op, [w.op for w in self.works if w.op[0] == "recv" and not w.waited]))
        return work

    def send(self, tensors, peer, tag):
        return self._post("send", tensors, peer, tag)

    def recv(self, tensors, peer, tag):
        return self._post("recv", tensors, peer, tag)


@pytest.mark.parametrize("rank", [0, 1])
def test_every_send_is_posted_with_a_receive_outstanding_as_the_pipeline_posts(rank):
    # The Exchanger posts the next batch's receives before computing, so its sends find a
    # receive outstanding; the old calibration posted a send with nothing outstanding, and
    # such sends cost 0.36-1.7 ms a post against 0.05-0.26 with one (4 ranks, 2 cores).
    pg, computed = _RecordingGroup(), []
    times = calibrate._post_times(pg, rank ^ 1, rank, 10, lambda: computed.append(len(pg.log)), lambda: [0] * 64,
                                  clock=iter(range(1000)).__next__)
    sends = [entry for entry in pg.log if entry[0] == "post" and entry[1][0] == "send"]
    recvs = [entry for entry in pg.log if entry[0] == "post" and entry[1][0] == "recv"]
    assert all(outstanding for _, _, outstanding in sends), pg.log
    assert len(sends) == 5 + 1 and len(recvs) == 1 + 5          # half of 10 each way, plus the final match
    assert all(w.waited for w in pg.works)                       # nothing left in flight
    assert times == [1] * 10                                     # one timed post per message
    assert len(computed) == 10                                   # and one piece of compute each
    # the peer's sends match these receives in order: as many receives as the peer sends
    peer_sends = sum(1 for i in range(10) if ((rank ^ 1) + i) % 2 == 0) + 1
    assert len(recvs) == peer_sends


def test_message_time_is_half_the_median_bursts_round_trip_less_the_price():
    rng = np.random.default_rng(3)
    rtt = rng.exponential(1e-3, (7, 20))
    ref = np.median([np.mean(b) for b in rtt]) / 2 - 1e-5
    assert calibrate._one_way(rtt, 1e-5) == pytest.approx(ref)
    assert calibrate._one_way(rtt, 1.0) == 0.0                   # never below zero


def test_the_echoing_side_keeps_a_receive_posted_ahead_of_every_message():
    # the Exchanger's receiver has its receive posted before the message comes; so does
    # the echo, so that what is timed is the delivery to a waiting rank
    pg = _RecordingGroup()
    calibrate._echo(pg, 1, 6, lambda: [0] * 64)
    posts = [e for e in pg.log if e[0] == "post"]
    assert [op[0] for _, op, _ in posts].count("send") == 6 and [op[0] for _, op, _ in posts].count("recv") == 6
    waits = [op for kind, op in ((e[0], e[1]) for e in pg.log) if kind == "wait" and op[0] == "recv"]
    for op in waits[:-1]:       # when a message is taken, the next receive is posted before the echo is sent
        after = pg.log[pg.log.index(("wait", op)) + 1]
        assert after[0] == "post" and after[1][0] == "recv"
    assert all(w.waited for w in pg.works)
    pinger = _RecordingGroup()
    times = calibrate._round_trips(pinger, 0, 5, lambda: None, lambda: [0] * 64, clock=iter(range(100)).__next__)
    assert times == [1] * 5 and all(w.waited for w in pinger.works)
    sends = [e for e in pinger.log if e[0] == "post" and e[1][0] == "send"]
    assert all(outstanding for _, _, outstanding in sends)     # the echo's receive is posted first


class _LineUpComm:
    """Counts the line-up allreduces; the result row takes the max with another rank's."""

    def __init__(self, other):
        self.other, self.lineups, self.barriers = other, 0, 0

    def barrier(self):
        self.barriers += 1

    def allreduce(self, x, op="sum"):
        if op == "max":
            np.maximum(x, self.other, out=x)
        else:
            self.lineups += 1


def test_the_optimizer_is_timed_per_element_by_whole_rounds_and_the_slowest_rank_counts():
    comm = _LineUpComm(other=0.0)
    mine = calibrate.optimizer_seconds(comm, rounds=5, numel=1 << 18)
    assert comm.lineups == 2 * 5 and comm.barriers == 2        # every step starts lined up, two sizes
    assert 0 < mine < 1e-6                                    # seconds per element, not per step
    n = 1 << 10
    slow = _LineUpComm(other=np.array([0.0, 1.0]))            # another rank slower: its round times
    assert calibrate.optimizer_seconds(slow, rounds=3, numel=n) == pytest.approx(1.0 / (n - n // 8), rel=1e-2)
    # the round is timed, the line-up's wait included: a rank that waits 1 ms in every
    # allreduce for the others of a step of numel, and none for a step of numel / 8, pays
    # that wait per element (timing the step alone read the one-process figure)
    waits = _LineUpComm(other=0.0)
    clock = {"t": 0.0, "n": 0}
    real = waits.allreduce

    def allreduce(x, op="sum"):
        real(x, op)
        if op != "max":
            clock["n"] += 1
            clock["t"] += 1e-3 if clock["n"] > 5 else 0.0     # the first 5 rounds are the short steps
    waits.allreduce = allreduce
    got = calibrate.optimizer_seconds(waits, rounds=5, numel=n, clock=lambda: clock["t"])
    assert got == pytest.approx(1e-3 / (n - n // 8))


def _pass(short, long_, opt, call, post):
    """One calibration pass as _report records it (4 ranks on one machine, groups 1/2/4)."""
    return {"round_s": {k: [short * k, long_ * k] for k in (1, 2, 3, 4)}, "opt_round_s": list(opt),
            "call_s": {g: call * g for g in (1, 2, 4)}, "call_async_s": {g: 2 * call * g for g in (1, 2, 4)},
            "post_s": post, "message_s": 3 * post}


def test_a_burst_in_two_passes_of_three_does_not_move_a_ranks_own_work():
    # Recorded shape of a burst (accuracy run 12, case a): another job's load lands on some
    # passes of some measurements and only ever adds time. Quiet: 1 ms short rounds and
    # 5 ms long per active rank (rep_s[k] = 4k ms / 180 reps), optimizer rounds 1 / 8 ms,
    # calls 0.2 ms per group rank, posts 0.1 ms.
    span = calibrate.PIECE_REPS - calibrate.SHORT_REPS
    opt_span = calibrate.OPT_ELEMENTS - calibrate.OPT_ELEMENTS // 8
    quiet = _pass(1e-3, 5e-3, (1e-3, 8e-3), 2e-4, 1e-4)
    long_burst = _pass(1e-3, 11e-3, (1e-3, 20e-3), 9e-4, 4e-4)      # the burst in the long rounds
    short_burst = _pass(4e-3, 9e-3, (6e-3, 15e-3), 5e-4, 3e-4)       # later, from the short rounds on
    for order in ([quiet, long_burst, short_burst], [long_burst, short_burst, quiet]):
        cal = calibrate.combine_passes(order)
        for k in (1, 2, 3, 4):
            assert cal["rep_s"][k] == pytest.approx(4e-3 * k / span)
        assert cal["share"] == pytest.approx(4.0)
        assert cal["opt_elem_s"] == pytest.approx(7e-3 / opt_span)
        assert cal["post_s"] == pytest.approx(1e-4)
        # what waits for partners keeps the middle pass: its least is a lucky lockstep
        assert cal["call_s"] == pytest.approx({1: 5e-4, 2: 1e-3, 4: 2e-3})
        assert cal["call_async_s"] == pytest.approx({1: 1e-3, 2: 2e-3, 4: 4e-3})
        assert cal["message_s"] == pytest.approx(9e-4)
    # the rule before, each pass's slope and then the median of the passes, reads the burst:
    # rep_s[2] 2 x 5 ms (the short burst's pass), not 2 x 4 ms
    slopes = sorted((p["round_s"][2][1] - p["round_s"][2][0]) / span for p in (quiet, long_burst, short_burst))
    assert slopes[1] == pytest.approx(10e-3 / span)


def test_a_burst_that_lowers_a_passs_slope_is_not_taken_for_a_faster_machine():
    # a burst on the short rounds alone makes that pass's slope small (here 0); the least
    # slope of the passes would take it, the least rounds do not
    span = calibrate.PIECE_REPS - calibrate.SHORT_REPS
    pairs = [[1e-3, 5e-3], [5e-3, 5.5e-3], [1.2e-3, 5.1e-3]]
    assert calibrate.least_slope(pairs, span) == pytest.approx(4e-3 / span)
    assert calibrate.least_slope([[3e-3, 2e-3]], span) == 0.0          # never below zero
