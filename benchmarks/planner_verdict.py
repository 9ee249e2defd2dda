"""The accuracy benchmark's figures, honest about noise (benchmarks/planner_accuracy.py).

Every plan is run in R repeats interleaved across the plans (plan 1, 2, .., 8, then again
in a rotated order: a drift in the machine's load hits every plan alike); a repeat's
figure is its median step. A plan's measurement is the median of its repeats, its spread
the repeats' min and max. The issue's targets keep their meaning (on the medians); beside
each, what the spread says:

- top plan:  within (the top predicted plan's median is at most 10 % over the best
             measured plan's), indistinguishable (more than 10 % over, but the two plans'
             ranges overlap: the top plan's fastest repeat is no slower than the best's
             slowest, so this run can neither confirm nor refute the pick), missed (apart).
- Spearman:  met (>= 0.8 on the medians), indistinguishable (below, but every pair of
             plans the prediction orders against the medians has overlapping ranges: each
             misordering is inside the run-to-run spread), missed (some misordered pair is
             apart). The Spearman of each repeat alone is reported as its range.
- median error: the median over plans of |pred - meas| / meas on the medians, and its
             range over the repeats taken alone.

Indistinguishable is never counted as met. One repeat has no spread: then over 10 % or a
misordered pair is a miss. Pure functions of the measured times, tested without processes
(tests/parallel/test_plan_verdict.py), in the manner of benchmarks/tuner_verdict.py.
"""
import statistics

TOP_WITHIN = 1.10       # the "within 10 % of the best measured"
SPEARMAN_TARGET = 0.8
ERROR_TARGET = 0.15
VERDICTS = ("met", "indistinguishable", "missed")


def spread(runs):
    """(min, median, max) of one plan's repeats (seconds)."""
    if not runs:
        raise ValueError("a plan with no repeat measured has no spread")
    return min(runs), statistics.median(runs), max(runs)


def apart(a, b):
    """True when the repeats of a and b do not overlap: every repeat of one is faster than
    every repeat of the other."""
    return max(a) < min(b) or max(b) < min(a)


def rank_order(xs):
    """Ranks 0..n-1 of xs, ties averaged (Spearman's ranks)."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a, b):
    """Spearman's rank correlation of two equal-length lists (nan below 3 entries or when
    one list is constant)."""
    if len(a) != len(b):
        raise ValueError(f"spearman of lists of {len(a)} and {len(b)} entries")
    if len(a) < 3:
        return float("nan")
    ra, rb = rank_order(a), rank_order(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def top_plan(preds, runs):
    """(verdict, median ratio top / best, index of the best) for the top predicted plan
    (the lowest prediction) against the best measured (the lowest median)."""
    _check(preds, runs)
    top = min(range(len(preds)), key=lambda i: preds[i])
    best = min(range(len(runs)), key=lambda i: statistics.median(runs[i]))
    ratio = statistics.median(runs[top]) / statistics.median(runs[best])
    if ratio <= TOP_WITHIN:
        return "met", ratio, best
    if min(runs[top]) <= max(runs[best]):
        return "indistinguishable", ratio, best
    return "missed", ratio, best


def misordered(preds, runs):
    """Pairs (i, j) that the prediction orders one way and the measured medians the other
    (ties in either are no order), each with whether their repeats are apart."""
    _check(preds, runs)
    meds = [statistics.median(r) for r in runs]
    out = []
    for i in range(len(preds)):
        for j in range(i + 1, len(preds)):
            if (preds[i] - preds[j]) * (meds[i] - meds[j]) < 0:
                out.append((i, j, apart(runs[i], runs[j])))
    return out


def rank_verdict(preds, runs):
    """(verdict, Spearman on the medians, (least, greatest) Spearman of a repeat alone,
    misordered pairs, of them apart)."""
    _check(preds, runs)
    rho = spearman(preds, [statistics.median(r) for r in runs])
    per_repeat = [spearman(preds, [r[k] for r in runs]) for k in range(min(len(r) for r in runs))]
    pairs = misordered(preds, runs)
    real = sum(1 for *_, far in pairs if far)
    if rho >= SPEARMAN_TARGET:
        v = "met"
    else:
        v = "missed" if real or min(len(r) for r in runs) < 2 else "indistinguishable"
    return v, rho, (min(per_repeat), max(per_repeat)), len(pairs), real


def median_error(preds, runs):
    """(median over plans of |pred - median| / median, (least, greatest) of the same with
    each repeat alone)."""
    _check(preds, runs)
    def err(meas):
        return statistics.median(abs(p - m) / m for p, m in zip(preds, meas))
    whole = err([statistics.median(r) for r in runs])
    per_repeat = [err([r[k] for r in runs]) for k in range(min(len(r) for r in runs))]
    return whole, (min(per_repeat), max(per_repeat))


def _check(preds, runs):
    if len(preds) != len(runs) or not preds:
        raise ValueError(f"need one prediction per measured plan, got {len(preds)} and {len(runs)}")
    empty = [i for i, r in enumerate(runs) if not r]
    if empty:
        raise ValueError(f"plans {empty} have no repeat measured")


def matched_error(preds, runs):
    """With a prediction per repeat (the plans priced again on a calibration taken right
    before each repeat): (median over plans of the median over repeats of |pred - meas| /
    meas, (least, greatest) over repeats of the median over plans, (least, greatest)
    Spearman of a repeat against its own predictions). What is left of the error when
    the load of the calibration and of the runs is the same."""
    _check(preds, runs)
    if any(len(p) != len(r) for p, r in zip(preds, runs)):
        raise ValueError("need one prediction per repeat of every plan")
    per_plan = [statistics.median(abs(p - m) / m for p, m in zip(ps, rs)) for ps, rs in zip(preds, runs)]
    reps = range(min(len(r) for r in runs))
    per_repeat = [statistics.median(abs(ps[k] - rs[k]) / rs[k] for ps, rs in zip(preds, runs)) for k in reps]
    rho = [spearman([ps[k] for ps in preds], [rs[k] for rs in runs]) for k in reps]
    return statistics.median(per_plan), (min(per_repeat), max(per_repeat)), (min(rho), max(rho))
