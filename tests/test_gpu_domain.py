"""GPU domains, the level below the host: ranks on GPUs joined by NVLink (or sharing one
GPU) from a topology file's per-host "gpus" list or from the probe's NVLink peers; the
nvlink link class in the tuner; hcomm-topo's tree; and hierarchical allreduce,
broadcast and allgatherv over three levels (GPU domain, host, hosts) against numpy on a
simulated 2 hosts x 4 GPUs. Everything but the last test is process-free."""
import json

import numpy as np
import pytest

import hcomm
from hcomm import _C, topology, topo_cli
from harness import run_comm
from reference import check, copy, make, reduce_ref, zeros


def cluster(domains_per_host=((0, 0, 1, 1), (0, 0, 1, 1)), links=None):
    """One host per tuple, one rank per GPU, each GPU's NVLink domain label as given."""
    hosts, r = [], 0
    for h, labels in enumerate(domains_per_host):
        ranks = list(range(r, r + len(labels)))
        gpus = [{"ranks": [q], "domain": d} for q, d in zip(ranks, labels)] if labels and labels[0] is not None else []
        hosts.append({"name": f"node{h}", "ranks": ranks, **({"gpus": gpus} if gpus else {})})
        r += len(labels)
    return {"hosts": hosts, **({"links": links} if links else {})}


def _gpu(index, bus, peers=(), nvswitch=False):
    return {"index": index, "name": "fake", "bus_id": bus, "nvlink_peers": list(peers), "nvswitch": nvswitch}


def _dump(gpus, uses):
    """A dump whose ranks all sit on one host with `gpus` probed; rank r uses GPU uses[r]."""
    ranks = [{"rank": r, "hostname": "n0", "host_id": "id0", "host": "n0", "rack": "", "numa": 0, "cpus": "0",
              "nics": [], "gpus": gpus, "gpu": g} for r, g in enumerate(uses)]
    return {"hosts": [{"name": "n0", "ranks": list(range(len(uses)))}], "ranks": ranks}


# ---------------------------------------------------------------- the topology

def test_file_schema_groups_ranks_into_domains():
    t = topology.load(cluster())
    assert topology.gpu_domains(t) == {("node0", 0): [0, 1], ("node0", 1): [2, 3],
                                       ("node1", 0): [4, 5], ("node1", 1): [6, 7]}
    assert [r["gpu"] for r in t["ranks"]] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert set(t["links"]) == {"shm", "tcp", "rack", "nvlink"} and t["links"]["nvlink"]["source"] == "default"
    # a dump loads back to the same domains (the hosts' "gpus" are written in the file's schema)
    assert topology.gpu_domains(topology.load(t)) == topology.gpu_domains(t)


def test_file_schema_shared_gpu_index_and_default_domain():
    # ranks 0 and 1 share one GPU; gpu "index" given; no "domain": each GPU alone;
    # rank 3 is on no GPU at all
    f = {"hosts": [{"name": "a", "ranks": [0, 1, 2, 3],
                    "gpus": [{"index": 5, "ranks": [0, 1]}, {"index": 7, "ranks": [2]}]}]}
    t = topology.load(f)
    assert topology.gpu_domains(t) == {("a", 5): [0, 1], ("a", 7): [2]}
    assert [r["gpu"] for r in t["ranks"]] == [5, 5, 7, -1]


@pytest.mark.parametrize("gpus, message", [
    ([{"ranks": [0]}, {"ranks": [0, 1]}], "rank 0 is on two GPUs"),
    ([{"ranks": [0, 9]}], "lists rank 9, which the host"),
    ([{"rank": 0}], "has no \"ranks\" list"),
    ([{"ranks": [1], "domain": -2}], "must be >= 0"),
])
def test_bad_gpus_lists_are_refused(gpus, message):
    with pytest.raises(hcomm.Error, match=message):
        topology.load({"hosts": [{"name": "a", "ranks": [0, 1], "gpus": gpus}]})


def test_probe_nvlink_peers_make_domains():
    # four GPUs: 0-1 and 2-3 joined by NVLink (peers by bus id, listed on one side only
    # for 2-3), rank 4 shares GPU 3 with rank 3
    gpus = [_gpu(0, "A", ["B"]), _gpu(1, "B", ["A"]), _gpu(2, "C", ["D"]), _gpu(3, "D")]
    t = topology.load(_dump(gpus, [0, 1, 2, 3, 3]))
    assert topology.gpu_domains(t) == {("n0", 0): [0, 1], ("n0", 2): [2, 3, 4]}
    # a chain 0-1-2 is one domain; GPU 3 without links is its own
    gpus = [_gpu(0, "A", ["B"]), _gpu(1, "B", ["C"]), _gpu(2, "C"), _gpu(3, "D")]
    assert topology.gpu_domains(topology.load(_dump(gpus, [0, 1, 2, 3]))) == {("n0", 0): [0, 1, 2], ("n0", 3): [3]}
    # every GPU on an NVSwitch: one domain
    gpus = [_gpu(i, f"B{i}", nvswitch=True) for i in range(4)]
    assert topology.gpu_domains(topology.load(_dump(gpus, [3, 2, 1, 0]))) == {("n0", 0): [0, 1, 2, 3]}
    # ranks whose GPU is unknown (gpu -1) are in no domain
    assert topology.gpu_domains(topology.load(_dump(gpus, [-1, -1]))) == {}


def test_live_probe_gpu_choice(monkeypatch):
    # no NVML here: no GPUs, so LOCAL_RANK picks nothing and HCOMM_GPU names nothing
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert topology.probe_local()["gpu"] == -1
    monkeypatch.setenv("HCOMM_GPU", "3")
    with pytest.raises(hcomm.Error, match="HCOMM_GPU='3' names no GPU of this host"):
        topology.probe_local()


# ---------------------------------------------------------------- the tuner

def _hier(topo, collective="allreduce", nbytes=64 << 20, ranks=None):
    return topology.explain(collective, nbytes, topology=topo, ranks=ranks).candidate("hierarchical")


def test_tuner_prices_the_nvlink_class_inside_domains_only():
    slow = {"nvlink": {"alpha": 1e-3, "beta": 1e-8}}
    for collective in ("allreduce", "broadcast", "allgather"):
        base = _hier(cluster(), collective).seconds
        assert _hier(cluster(links=slow), collective).seconds > base, collective
        no_gpus = cluster(((None,) * 4, (None,) * 4))
        assert _hier(no_gpus, collective).seconds == _hier({**no_gpus, "links": slow}, collective).seconds


def test_domain_level_changes_the_hierarchical_model():
    # With nvlink priced exactly like shm, only the extra level (domain reduce-scatter,
    # then hosts) can make 2x(2+2) differ from the same hosts without GPUs; one domain
    # per host (labels all 0) adds no level: the same prediction as no GPUs.
    same = {"nvlink": {"alpha": 2e-6, "beta": 1 / 8e9}, "shm": {"alpha": 2e-6, "beta": 1 / 8e9}}
    two = _hier(cluster(links=same)).seconds
    one = _hier(cluster(((0,) * 4, (0,) * 4), links=same)).seconds
    none = _hier(cluster(((None,) * 4, (None,) * 4), links=same)).seconds
    assert one == none and two != none


def test_hierarchy_applies_on_one_host_with_two_domains():
    split = topology.explain("allreduce", 64 << 20, topology=cluster(((0, 0, 1, 1),)))
    assert split.candidate("hierarchical").applicable and split.domains == 2
    assert "1 host(s), 2 GPU domain(s)" in str(split)
    whole = topology.explain("allreduce", 64 << 20, topology=cluster(((0, 0, 0, 0),)))
    assert not whole.candidate("hierarchical").applicable
    # a subset of ranks counts only its own domains
    assert topology.explain("allreduce", 1 << 20, topology=cluster(), ranks=[0, 1, 4]).domains == 2


def test_hcomm_topo_prints_domains(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cluster()))
    assert topo_cli.main(["--topology", str(path), "--explain", "allreduce", "64M"]) == 0
    out = capsys.readouterr().out
    assert "    gpu domain 0: gpu0 (ranks 4), gpu1 (ranks 5)" in out
    assert "    gpu domain 1: gpu2 (ranks 2), gpu3 (ranks 3)" in out
    assert "nvlink" in out and "8 ranks, 2 host(s), 4 GPU domain(s)" in out
    assert "      rank 6  cpus ?  uses gpu2" in out
    with pytest.raises(SystemExit, match="--measure needs running ranks"):
        topo_cli.main(["--topology", str(path), "--explain", "allreduce", "1M", "--measure"])


# ---------------------------------------------------------------- three levels, numpy

def _three_level_body(comm, counts):
    seed = 0
    for dtype, op in (("float32", "sum"), ("float64", "sum"), ("int32", "max"), ("float64", "prod")):
        for count in counts:
            seed += 1
            inputs = [make(dtype, count, q, seed, op) for q in range(comm.size)]
            x = copy(inputs[comm.rank])
            b = np.asarray(x)
            comm._c.allreduce(b.ctypes.data, b.ctypes.data, b.size, dtype, op, 1.0, "hierarchical", False)
            check(x, reduce_ref(inputs, op, dtype), dtype, comm.size, f"allreduce {dtype} {op} n={count}")
    for root in sorted({0, comm.size // 2, comm.size - 1}):
        want = make("float64", 1001, root, 50 + root)
        x = want.copy() if comm.rank == root else zeros("float64", 1001)
        comm.broadcast(x, root=root, algo="hierarchical")
        assert np.array_equal(x, want), f"broadcast root={root}"
    vc = [(q * 5 + 3) % 7 for q in range(comm.size)]  # unequal, one zero
    parts = [make("int32", vc[q], q, 90) for q in range(comm.size)]
    out = zeros("int32", sum(vc))
    comm.allgatherv(parts[comm.rank], out, vc, algo="hierarchical")
    assert np.array_equal(out, np.concatenate(parts)), f"allgatherv {vc}"
    return comm._c.last_algorithm()  # close() delivers what was sent: no meeting needed first


# Threads share one process (cheap); the second layout runs as 8 forked processes, so
# shm and tcp join separate address spaces as on a cluster. One host split into two
# domains (2+3): the host level above them does not split, the top runs flat.
@pytest.mark.parametrize("labels, mode", [(((0, 0, 1, 1), (0, 0, 1, 1)), "thread"),
                                          (((0, 1, 0, 1), (0, 0, 0, 1)), "process"),
                                          (((0, 0, 1, 1, 1),), "thread")],
                         ids=["2x(2+2)-threads", "interleaved-and-3+1-processes", "1x(2+3)-threads"])
def test_three_levels_match_numpy(labels, mode, tmp_path, monkeypatch):
    path = tmp_path / "topo.json"
    path.write_text(json.dumps(cluster(labels)))
    monkeypatch.setenv("HCOMM_TOPO_FILE", str(path))
    monkeypatch.setenv("HCOMM_PROBE", "0")
    n = sum(len(h) for h in labels)
    assert run_comm(_three_level_body, n, mode=mode, args=([1, 7, 1001, 20_011],)) == ["hierarchical"] * n


def test_deterministic_bits_with_the_domain_level(tmp_path, monkeypatch):
    # HCOMM_DETERMINISTIC=1: the extra level must not change the rank-order sum, bit for
    # bit, for any algorithm (test_deterministic.py's body and check on this layout)
    from test_deterministic import _body, _check

    path = tmp_path / "topo.json"
    path.write_text(json.dumps(cluster(((0, 1, 0, 1), (0, 0, 1)))))  # 4 + 3 ranks: odd world
    monkeypatch.setenv("HCOMM_TOPO_FILE", str(path))
    monkeypatch.setenv("HCOMM_DETERMINISTIC", "1")
    for dtype, seed in (("float32", 11), ("bfloat16", 12)):
        _check(run_comm(_body, 7, args=(dtype, seed)), dtype, 7, seed, f"gpu domains {dtype}")
