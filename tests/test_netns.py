"""Ranks in separate network namespaces count as separate hosts: they talk tcp over
rate-limited veth links (tc tbf), shared memory inside their namespace, and the
hierarchical allreduce is right there. Root and iproute2 only; skipped otherwise."""
import json
import os
import sys

import pytest

import hcomm
from hcomm.topology import NetnsCluster, wait_all

pytestmark = pytest.mark.skipif(NetnsCluster.unavailable() is not None,
                                reason=f"no namespace cluster: {NetnsCluster.unavailable()}")

# Runs in every rank (python -c): init from the torchrun-style environment the cluster
# sets, check the transports, allreduce against numpy, print one JSON line.
WORKER = r"""
import json, os
import numpy as np
import hcomm

comm = hcomm.init(timeout=60)
host = int(os.environ["HCOMM_NETNS_HOST"])
per = int(os.environ["LOCAL_WORLD_SIZE"])
expect = ["shm" if q // per == host else "tcp" for q in range(comm.size)]
assert comm.transports() == expect, (comm.transports(), expect)
results = {}
for algo in ("hierarchical", "ring", "auto"):
    for count in (1, 1001, 65537):
        inputs = [np.random.default_rng([q, count]).standard_normal(count).astype(np.float32)
                  for q in range(comm.size)]
        x = inputs[comm.rank].copy()
        comm._c.allreduce(x.ctypes.data, x.ctypes.data, count, "float32", "sum", 1.0, algo, False)
        np.testing.assert_allclose(x, np.sum(inputs, axis=0, dtype=np.float64), rtol=1e-5, atol=1e-5)
    results[algo] = comm._c.last_algorithm()
topo = hcomm.topology.topology(comm)
rank = comm.rank
comm.close()
print(json.dumps({"rank": rank, "algos": results, "hosts": len(topo["hosts"]),
                  "links": {k: v["source"] for k, v in topo["links"].items()}}))
"""


def test_namespaces_are_hosts_and_hierarchical_is_right():
    code = WORKER
    with NetnsCluster(2, rate="1gbit") as cluster:
        namespaces = [cluster.namespace(h) for h in range(2)]
        results = wait_all(cluster.launch(2, [sys.executable, "-c", code]), timeout=90)
    failed = [f"rank {r}: rc {rc}\n{se}" for r, (rc, so, se) in enumerate(results) if rc]
    assert not failed, "\n".join(failed)
    reports = [json.loads(so.strip().splitlines()[-1]) for _, so, _ in results]
    for rep in reports:
        assert rep["hosts"] == 2
        assert rep["algos"]["hierarchical"] == "hierarchical"
        assert rep["links"]["tcp"] == "measured" and rep["links"]["shm"] == "measured"
    # torn down, namespaces included
    listed = os.popen("ip netns list").read()
    assert not any(ns in listed for ns in namespaces)


def test_cluster_is_torn_down_after_a_failure():
    cluster = NetnsCluster(2, rate="1gbit")
    with pytest.raises(RuntimeError, match="boom"):
        with cluster:
            raise RuntimeError("boom")
    listed = os.popen("ip netns list").read()
    assert cluster.prefix not in listed


def test_half_built_cluster_is_torn_down():
    cluster = NetnsCluster(2, rate="not-a-rate")  # tc rejects the rate after the namespaces exist
    with pytest.raises(RuntimeError, match="tc"):
        cluster.__enter__()
    assert cluster.prefix not in os.popen("ip netns list").read()


UNEVEN = r"""
import json, os
import numpy as np
import hcomm

comm = hcomm.init(timeout=60)
results = {}
for algo in ("hierarchical", "ring", "auto"):
    inputs = [np.random.default_rng([q, 7]).standard_normal(1001).astype(np.float32) for q in range(comm.size)]
    x = inputs[comm.rank].copy()
    comm._c.allreduce(x.ctypes.data, x.ctypes.data, x.size, "float32", "sum", 1.0, algo, False)
    np.testing.assert_allclose(x, np.sum(inputs, axis=0, dtype=np.float64), rtol=1e-5, atol=1e-5)
rank, transports = comm.rank, comm.transports()
comm.close()
print(json.dumps({"rank": rank, "transports": transports, "local": os.environ["LOCAL_RANK"],
                  "local_size": os.environ["LOCAL_WORLD_SIZE"], "host": os.environ["HCOMM_NETNS_HOST"]}))
"""


def test_uneven_hosts_two_plus_one():
    """launch([2, 1]): two ranks on host 0, one on host 1 (benchmarks/tuner_validation.py's
    uneven layout); rank 2 reaches both others over tcp, ranks 0 and 1 share memory."""
    with NetnsCluster(2, rate="1gbit") as cluster:
        results = wait_all(cluster.launch([2, 1], [sys.executable, "-c", UNEVEN]), timeout=90)
    failed = [f"rank {r}: rc {rc}\n{se}" for r, (rc, so, se) in enumerate(results) if rc]
    assert not failed, "\n".join(failed)
    reps = [json.loads(so.strip().splitlines()[-1]) for _, so, _ in results]
    assert [(r["host"], r["local"], r["local_size"]) for r in reps] == [("0", "0", "2"), ("0", "1", "2"),
                                                                          ("1", "0", "1")]
    assert reps[0]["transports"] == ["shm", "shm", "tcp"]
    assert reps[2]["transports"] == ["tcp", "tcp", "shm"]


@pytest.mark.parametrize("bad", [[2], [2, 0], [1, 1, 1], "2"])
def test_launch_refuses_a_layout_that_does_not_fit(bad):
    cluster = NetnsCluster(2)  # not entered: launch checks before it starts anything
    with pytest.raises(hcomm.InvalidArgument, match="ranks_per_host"):
        cluster.launch(bad, [sys.executable, "-c", "pass"])
