"""The algorithms added for issue 20's "every collective tuned": hierarchical
reduce-scatter(v) and Bruck alltoall, forced per call, against numpy for every dtype
and op, odd counts and world sizes 2-8 on simulated hosts (a topology file places ranks
on hosts: shm inside, tcp across); and the tuner's choice of them, process-free."""
import json

import numpy as np
import pytest

import hcomm
from harness import run_comm
from reference import DTYPES, check, copy, empty_like, make, ops_for, premul, reduce_ref

# ranks per simulated host, in rank order: world sizes 2 to 8, equal and unequal hosts
LAYOUTS = {"1+1": [1, 1], "2+1": [2, 1], "2x2": [2, 2], "3+2": [3, 2], "3x2": [2, 2, 2], "4+3": [4, 3],
           "4x2": [4, 4]}


def topo_file(tmp_path, sizes):
    hosts, r = [], 0
    for h, n in enumerate(sizes):
        hosts.append({"name": f"host{h}", "ranks": list(range(r, r + n))})
        r += n
    path = tmp_path / "topo.json"
    path.write_text(json.dumps({"hosts": hosts}))
    return str(path)


def _slice(x, a, b):
    return x[a:b]


def _reduce_scatter_body(comm, counts_list):
    """Every dtype and op, equal and ragged counts, hierarchical forced per call."""
    seed = 0
    n = comm.size
    for dtype in DTYPES:
        for op in ops_for(dtype):
            for counts in counts_list(n):
                seed += 1
                total = sum(counts)
                inputs = [make(dtype, total, q, seed, op) for q in range(n)]
                start = sum(counts[:comm.rank])
                ref = reduce_ref(inputs, op, dtype)[start:start + counts[comm.rank]]
                out = empty_like(inputs[comm.rank][:counts[comm.rank]])
                factor = premul(dtype) if op == "premul_sum" else None
                comm.reduce_scatterv(copy(inputs[comm.rank]), out, counts, op=op, factor=factor,
                                     algo="hierarchical")
                check(out, ref, dtype, n, f"{dtype} {op} counts={counts}")
                assert comm._c.last_algorithm() == "hierarchical"
    return True


def _counts(n):
    return [[3] * n, [2 * r + 1 for r in range(n)], [0] + [5] * (n - 1)]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reduce_scatter_hierarchical_matches_numpy(layout, tmp_path, monkeypatch):
    sizes = LAYOUTS[layout]
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, sizes))
    monkeypatch.setenv("HCOMM_PROBE", "0")
    assert run_comm(_reduce_scatter_body, sum(sizes), args=(_counts,)) == [True] * sum(sizes)


def _one_host_body(comm):
    x = np.arange(7 * comm.size, dtype=np.float64) * (comm.rank + 1)
    out = np.empty(7)
    comm.reduce_scatter(x, out, algo="hierarchical")
    full = np.arange(7 * comm.size, dtype=np.float64) * sum(range(1, comm.size + 1))
    np.testing.assert_array_equal(out, full[7 * comm.rank:7 * comm.rank + 7])
    return True


def test_reduce_scatter_hierarchical_on_one_host_is_the_ring_inside():
    assert run_comm(_one_host_body, 3) == [True] * 3


def _alltoall_body(comm, algo):
    seed = 100
    n = comm.size
    for dtype in DTYPES:
        for count in (0, 1, 5, 33):
            seed += 1
            inputs = [make(dtype, count * n, q, seed) for q in range(n)]
            out = empty_like(inputs[comm.rank])
            comm.alltoall(copy(inputs[comm.rank]), out, algo=algo)
            expect = np.concatenate([np.asarray(_as_np(inputs[q]))[comm.rank * count:(comm.rank + 1) * count]
                                     for q in range(n)]) if count else np.asarray(_as_np(inputs[0]))[:0]
            np.testing.assert_array_equal(np.asarray(_as_np(out)), expect, err_msg=f"{dtype} count={count}")
            if count:
                assert comm._c.last_algorithm() == algo
    # in place: out is x
    x = np.arange(3 * n, dtype=np.int32) + 100 * comm.rank
    comm.alltoall(x, x, algo=algo)
    np.testing.assert_array_equal(x, np.concatenate([np.arange(3 * comm.rank, 3 * comm.rank + 3) + 100 * q
                                                     for q in range(n)]))
    return True


def _as_np(x):
    import torch

    return x.view(torch.int16).numpy() if isinstance(x, torch.Tensor) else x


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8])
def test_alltoall_bruck_matches_numpy(n):
    assert run_comm(_alltoall_body, n, args=("bruck",)) == [True] * n


@pytest.mark.parametrize("layout", ["2+1", "3+2"])
def test_alltoall_bruck_across_simulated_hosts(layout, tmp_path, monkeypatch):
    sizes = LAYOUTS[layout]
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, sizes))
    monkeypatch.setenv("HCOMM_PROBE", "0")
    assert run_comm(_alltoall_body, sum(sizes), args=("bruck",)) == [True] * sum(sizes)


def _ragged_bruck_body(comm):
    n = comm.size
    sc = [r + 1 for r in range(n)]
    rc = [comm.rank + 1] * n
    x = np.zeros(sum(sc), np.float32)
    out = np.zeros(sum(rc), np.float32)
    with pytest.raises(hcomm.Error, match="bruck.*equal counts"):
        comm.alltoallv(x, out, sc, rc, algo="bruck")
    comm.alltoallv(x, out, sc, rc)  # the automatic choice takes pairwise
    assert comm._c.last_algorithm() == "pairwise"
    return True


def test_alltoallv_ragged_refuses_bruck_and_runs_pairwise():
    assert run_comm(_ragged_bruck_body, 3) == [True] * 3


def test_unknown_alltoall_and_reduce_scatter_algorithms_are_refused_with_the_list():
    assert "bruck" in hcomm._C.algorithms()["alltoall"]
    assert "hierarchical" in hcomm._C.algorithms()["reduce_scatter"]

    def body(comm):
        x = np.zeros(2 * comm.size, np.float32)
        with pytest.raises(hcomm.InvalidArgument, match="pairwise, bruck"):
            comm.alltoall(x, x.copy(), algo="ring")
        with pytest.raises(hcomm.InvalidArgument, match="ring, direct, hierarchical"):
            comm.reduce_scatter(x, np.zeros(2, np.float32), algo="bruck")
        return True

    assert run_comm(body, 2) == [True, True]
