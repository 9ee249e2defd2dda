"""The tuner's price for NCCL's own collectives (topo/native_cost.h), without processes.

A measured NCCL cost (alpha seconds + beta seconds per allreduce byte) adds a "native"
row to the tuner's table for a described topology; the choice between it and hcomm's
algorithms must follow the prices: native where its price is the lowest, and the
crossover size must move when the measured cost changes. The reference here is the
plain model's table (hcomm.explain without NCCL) and the documented alpha-beta formula,
computed in Python.
"""
import pytest

import hcomm
from hcomm import _C

NVLINK = {"hosts": [{"name": "h0", "ranks": [0, 1, 2, 3]}],
          "links": {"shm": {"alpha": 2e-6, "beta": 1 / 8e9}, "tcp": {"alpha": 5e-5, "beta": 8e-9}}}
SIZES = [8, 1 << 10, 16 << 10, 256 << 10, 4 << 20, 64 << 20, 512 << 20]
COLLECTIVES = ["allreduce", "broadcast", "allgather", "reduce_scatter", "reduce"]


def native_seconds(collective, nbytes, n, alpha, beta):
    """The documented scaling: per rank, a ring moves 2(n-1)/n S for allreduce, (n-1)/n S
    for allgather / reduce_scatter (S the total), about S for broadcast / reduce."""
    scale = {"allreduce": 1.0, "allgather": 0.5, "reduce_scatter": 0.5}.get(collective, n / (2 * (n - 1)))
    return alpha + beta * scale * nbytes


def priced(collective, nbytes, alpha, beta, topo=NVLINK):
    import json

    return _C._price_native_on(json.dumps(topo), collective, nbytes, [], alpha, beta)


@pytest.mark.parametrize("collective", COLLECTIVES)
@pytest.mark.parametrize("alpha,beta", [(30e-6, 1 / 100e9), (5e-6, 1 / 5e9), (1e-3, 1 / 500e9)])
def test_native_is_chosen_exactly_where_its_price_is_lowest(collective, alpha, beta):
    for nbytes in SIZES:
        plain = hcomm.explain(collective, nbytes, topology=NVLINK)
        hcomm_rows = {c.algo: c.seconds for c in plain.candidates if c.applicable}
        d = priced(collective, nbytes, alpha, beta)
        rows = {c["algo"]: c["seconds"] for c in d["candidates"]}
        want_native = native_seconds(collective, nbytes, 4, alpha, beta)
        assert rows["native"] == pytest.approx(want_native, rel=1e-12)
        for algo, seconds in hcomm_rows.items():  # hcomm's own rows are the model's, unchanged
            assert rows[algo] == pytest.approx(seconds, rel=1e-12)
        best = min(hcomm_rows, key=hcomm_rows.get)
        expect = "native" if want_native < hcomm_rows[best] else best
        assert d["chosen"] == expect, (collective, nbytes, rows)


def _crossover(alpha, beta):
    """The smallest size of SIZES where native wins allreduce (None: never)."""
    return next((s for s in SIZES if priced("allreduce", s, alpha, beta)["chosen"] == "native"), None)


def test_the_crossover_moves_with_the_measured_cost():
    # A slow start and a fast wire: NCCL loses small messages and wins large ones.
    base = _crossover(200e-6, 1 / 400e9)
    assert base not in (None, SIZES[0]), base
    assert _crossover(2000e-6, 1 / 400e9) > base  # ten times the latency: wins only later
    assert _crossover(20e-6, 1 / 400e9) < base    # a tenth: wins earlier
    assert _crossover(200e-6, 1 / 0.1e9) is None  # a slow wire and a slow start: never
    assert _crossover(0.0, 0.0) == SIZES[0]       # free: always


def test_a_forced_choice_is_not_overridden_by_the_price():
    import json

    # NCCL free of charge, but ring asked for: the native row is priced, ring is run.
    d = _C._price_native_on(json.dumps(NVLINK), "allreduce", 64 << 20, [], 0.0, 0.0, "ring")
    assert d["chosen"] == "ring" and d["why"] == "requested"
    assert [c["seconds"] for c in d["candidates"] if c["algo"] == "native"] == [0.0]


def test_unknown_collective_is_refused():
    with pytest.raises(hcomm.Error, match="no native NCCL collective 'alltoall'"):
        priced("alltoall", 1 << 20, 1e-5, 1e-10)
