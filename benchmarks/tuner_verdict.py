"""The verdict of benchmarks/tuner_validation.py on each point, honest about noise.

A point (collective, size, cluster) has, for every forced algorithm, the times of its
interleaved passes (A B C auto, then rotated: a drift in the machine's load hits every
algorithm alike). A model's pick is compared with the best forced algorithm (the lowest
median pass):

- within:            the pick's median is at most 10 % over the best's (the pick is the
                     best, or close enough);
- indistinguishable: more than 10 % over, but the two algorithms' pass ranges overlap
                     (the pick's fastest pass is no slower than the best's slowest): the
                     difference is inside this point's run-to-run spread, so the run can
                     neither confirm nor refute the pick;
- missed:            more than 10 % over and the ranges are apart.

Indistinguishable is never counted as met; the summary reports it beside the other two.
One pass (a 64 MiB point on a slow link) has no spread: over 10 % is then a miss.
Pure functions of the measured times, tested without processes (tests/test_tuner_verdict.py).
"""
from collections import Counter

WITHIN = 1.10
VERDICTS = ("within", "indistinguishable", "missed")
# Size bands of the ladder: alpha- and wake-up-bound, mixed, bandwidth-bound.
BANDS = ((32 << 10, "8B-4K"), (2 << 20, "32K-256K"), (float("inf"), "2M-64M"))


def median(xs):
    s = sorted(xs)
    if not s:
        raise ValueError("median of no passes")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def best_forced(passes):
    """The forced algorithm with the lowest median pass. passes: {algo: [seconds, ...]},
    without the automatic call's entry."""
    if not passes:
        raise ValueError("no forced algorithm measured")
    return min(passes, key=lambda a: median(passes[a]))


def verdict(passes, pick, times=None):
    """(verdict, median ratio pick/best, best) for `pick` among the forced `passes`.
    times: the pick's own passes when they are not a forced algorithm's (the automatic
    call's), else passes[pick]."""
    if pick not in passes and times is None:
        raise ValueError(f"pick {pick!r} was not measured (measured: {', '.join(passes)})")
    mine = passes[pick] if times is None else times
    best = best_forced(passes)
    ratio = median(mine) / median(passes[best])
    if ratio <= WITHIN:
        return "within", ratio, best
    if min(mine) <= max(passes[best]):
        return "indistinguishable", ratio, best
    return "missed", ratio, best


def band(nbytes):
    for upper, name in BANDS:
        if nbytes < upper:
            return name
    raise ValueError(nbytes)


def tally(points, group, judge):
    """{group value: Counter of verdicts}; points: dicts, group(point) -> key,
    judge(point) -> verdict."""
    out = {}
    for p in points:
        out.setdefault(group(p), Counter())[judge(p)] += 1
    return out


def counts(c):
    """'within/indistinguishable/missed' of a Counter, e.g. '25/6/5'."""
    return "/".join(str(c.get(v, 0)) for v in VERDICTS)
