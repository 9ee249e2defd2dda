"""Racks from measurement (csrc/topo/racks.h): with HCOMM_RACK unset, 4 namespace hosts
in 2 "racks" (1 Gbit/s host links on two bridges joined by a 100 Mbit/s link) are
grouped into the two racks by the init probe, so the topology, the hierarchical
algorithms and the tuner see three levels; 4 hosts on one bridge stay one rack. The
grouping rule itself is tested process-free."""
import json
import os
import sys

import numpy as np
import pytest

import hcomm
from hcomm.topology import NetnsCluster, wait_all

racks_from = hcomm._C._racks_from_times


def _times(groups, fast=1.0, slow=10.0, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    hosts = [h for g in groups for h in g]
    rack = {h: k for k, g in enumerate(groups) for h in g}
    n = len(hosts)
    t = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            t[i, j] = t[j, i] = (fast if rack[i] == rack[j] else slow) * rng.uniform(1 - noise, 1 + noise)
    return n, t.ravel().tolist()


def test_clearly_faster_pairs_form_racks():
    assert racks_from(*_times([[0, 1], [2, 3]])) == [0, 0, 1, 1]
    assert racks_from(*_times([[0, 1, 2], [3, 4]], noise=0.2, seed=3)) == [0, 0, 0, 1, 1]
    assert racks_from(*_times([[0, 1], [2]])) == [0, 0, 1]  # a rack of one beside a pair


@pytest.mark.parametrize("seed", range(5))
def test_no_grouping_within_noise(seed):
    assert racks_from(*_times([[0, 1, 2, 3]], noise=0.3, seed=seed)) == []
    assert racks_from(*_times([[0, 1], [2, 3]], fast=1.0, slow=1.5, noise=0.1, seed=seed)) == []


def test_a_noisy_pair_inside_a_rack_does_not_split_it():
    """0-1 measured 3.4x slower than 2-3 (a busy CPU), both far below the cross-rack pairs."""
    n, t = _times([[0, 1], [2, 3]], fast=2.3, slow=30.0)
    t = np.array(t).reshape(n, n)
    t[0, 1] = t[1, 0] = 8.0
    assert racks_from(n, t.ravel().tolist()) == [0, 0, 1, 1]


def test_no_grouping_when_fast_links_are_not_cliques():
    # 0-1 and 1-2 fast, 0-2 slow: no consistent rack
    t = np.full((3, 3), 10.0)
    t[0, 1] = t[1, 0] = t[1, 2] = t[2, 1] = 1.0
    assert racks_from(3, t.ravel().tolist()) == []


WORKER = r"""
import json
import hcomm
import numpy as np
comm = hcomm.init(timeout=120)
topo = hcomm.topology.topology(comm)
x = np.arange(1001, dtype=np.float64) + comm.rank
comm.allreduce(x, algo=None)
ok = bool(np.allclose(x, np.arange(1001) * comm.size + sum(range(comm.size))))
y = np.arange(1001, dtype=np.float64) + comm.rank
comm.allreduce(y, algo="hierarchical")  # over the rack level: inside each rack, then across
ok = ok and bool(np.allclose(y, np.arange(1001) * comm.size + sum(range(comm.size))))
e = hcomm.explain("allreduce", 64 << 20, comm=comm)
out = {"rank": comm.rank, "racks": {h["name"] + str(i): h["rack"] for i, h in enumerate(topo["hosts"])},
       "rack_link": topo["links"]["rack"]["source"], "ok": ok, "choice": e.chosen,
       "hierarchical": e.candidate("hierarchical").applicable}
comm.close()
print(json.dumps(out))
"""

needs_cluster = pytest.mark.skipif(NetnsCluster.unavailable() is not None,
                                   reason=f"no namespace cluster: {NetnsCluster.unavailable()}")


def _run(cluster):
    env = dict(os.environ, HCOMM_DEBUG="INFO")  # the pair times, for a failure's message
    results = wait_all(cluster.launch(1, [sys.executable, "-c", WORKER], env=env), timeout=180)
    failed = [f"rank {r}: rc {rc}\n{se[-3000:]}" for r, (rc, so, se) in enumerate(results) if rc]
    assert not failed, "\n".join(failed)
    reports = [json.loads(so.strip().splitlines()[-1]) for _, so, _ in results]
    reports[0]["log"] = [line for line in results[0][2].splitlines() if "racks:" in line]
    return reports


@needs_cluster
def test_four_hosts_in_two_racks_are_grouped(monkeypatch):
    monkeypatch.delenv("HCOMM_RACK", raising=False)
    with NetnsCluster(4, rate="1gbit", racks=[0, 0, 1, 1], rack_rate="100mbit") as cluster:
        reports = _run(cluster)
    racks = list(reports[0]["racks"].values())
    assert racks[0] == racks[1] != racks[2] == racks[3], (racks, reports[0]["log"])
    assert all(r["racks"] == reports[0]["racks"] and r["ok"] for r in reports[1:]) and reports[0]["ok"]
    assert reports[0]["rack_link"] == "measured"  # the rack class is timed like the others
    assert all(r["hierarchical"] for r in reports)  # the tuner sees the rack level


@needs_cluster
def test_four_hosts_on_one_switch_stay_one_rack(monkeypatch):
    monkeypatch.delenv("HCOMM_RACK", raising=False)
    with NetnsCluster(4, rate="1gbit") as cluster:
        reports = _run(cluster)
    assert len(set(reports[0]["racks"].values())) == 1, (reports[0]["racks"], reports[0]["log"])
    assert not any(r["hierarchical"] for r in reports)  # one rank per host, one rack: flat
