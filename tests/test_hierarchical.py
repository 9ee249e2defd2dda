"""Hierarchical allreduce on simulated hosts (a topology file places ranks on hosts and
racks, so ranks of one host talk shm and the others tcp) against numpy, the tuner on a
real communicator, deterministic bits, topology dumps and the micro-probe switch."""
import json

import numpy as np
import pytest

import hcomm
from harness import run_comm
from reference import DTYPES, check, copy, make, ops_for, premul, reduce_ref

# ranks per host, in rank order
LAYOUTS = {"2x2": [2, 2], "2x3": [3, 3], "3x2": [2, 2, 2], "3+1": [3, 1]}


def topo_file(tmp_path, sizes, racks=None):
    hosts, r = [], 0
    for h, n in enumerate(sizes):
        hosts.append({"name": f"host{h}", "rack": racks[h] if racks else "", "ranks": list(range(r, r + n))})
        r += n
    path = tmp_path / "topo.json"
    path.write_text(json.dumps({"hosts": hosts}))
    return str(path)


def _allreduce(comm, x, op, algo):
    """Through the core, so algo='hierarchical' can be forced (comm.allreduce's own
    check lists the flat algorithms only)."""
    from hcomm._buffers import as_buffer

    b = as_buffer(x, "input", writable=True)
    factor = premul(b.dtype) if op == "premul_sum" else 1.0
    comm._c.allreduce(b.ptr, b.ptr, b.count, b.dtype, op, float(factor), algo, False)


def _matrix_body(comm, hosts, counts):
    seed = 0
    for dtype in DTYPES:
        for op in ops_for(dtype):
            for count in counts:
                seed += 1
                inputs = [make(dtype, count, q, seed, op) for q in range(comm.size)]
                x = copy(inputs[comm.rank])
                _allreduce(comm, x, op, "hierarchical")
                check(x, reduce_ref(inputs, op, dtype), dtype, comm.size, f"{dtype} {op} n={count}")
    expect = ["shm" if hosts[q] == hosts[comm.rank] else "tcp" for q in range(comm.size)]
    assert comm.transports() == expect
    algo = comm._c.last_algorithm()
    _settle(comm)
    return algo


def _hosts_of(sizes):
    return [h for h, n in enumerate(sizes) for _ in range(n)]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_hierarchical_matches_numpy(layout, tmp_path, monkeypatch):
    sizes = LAYOUTS[layout]
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, sizes))
    monkeypatch.setenv("HCOMM_PROBE", "0")
    counts = [0, 1, 7, 1001] if sum(sizes) <= 4 else [5, 1001]
    algos = run_comm(_matrix_body, sum(sizes), args=(_hosts_of(sizes), counts))
    assert algos == ["hierarchical"] * sum(sizes)


def _big_body(comm, count):
    inputs = [make("float32", count, q, 77) for q in range(comm.size)]
    x = copy(inputs[comm.rank])
    _allreduce(comm, x, "sum", "hierarchical")
    check(x, reduce_ref(inputs, "sum", "float32"), "float32", comm.size)
    _settle(comm)
    return True


def test_two_levels_racks_and_hosts_with_remainders(tmp_path, monkeypatch):
    # rack r0: host0 (ranks 0, 1) and host1 (rank 2); rack r1: host2 (rank 3). Level 0
    # keeps one block per host (smallest host has 1 rank; rank 1 only reduce-scatters
    # and allgathers); level 1 reduces inside rack r0 over tcp, then across racks.
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [2, 1, 1], racks=["r0", "r0", "r1"]))
    monkeypatch.setenv("HCOMM_PROBE", "0")
    assert all(run_comm(_big_body, 4, args=(300_007,)))
    assert all(run_comm(_matrix_body, 4, args=([0, 0, 1, 2], [3, 513])))


def _auto_body(comm):
    e64 = hcomm.explain("allreduce", 64 << 20, comm=comm)
    e8 = hcomm.explain("allreduce", 8, comm=comm)
    x = np.ones(1 << 16, np.float32)  # 256 KiB: whatever the tuner picks must be right
    comm.allreduce(x)
    assert np.all(x == comm.size)
    _settle(comm)
    return e64.chosen, e8.chosen, comm._c.choose_allreduce(64 << 20, "")


def test_tuner_picks_hierarchical_across_hosts_and_flat_on_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HCOMM_DETERMINISTIC", "1")  # model constants only: no timing
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [2, 2]))
    for chosen64, chosen8, core in run_comm(_auto_body, 4):
        assert chosen64 == core == "hierarchical"
        assert chosen8 != "hierarchical"
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [4]))
    for chosen64, chosen8, _ in run_comm(_auto_body, 4):
        assert "hierarchical" not in (chosen64, chosen8)


def _settle(comm):
    """Meet before closing so that no rank closes a tcp link while a slower peer still has
    to receive a message already sent on it (the transport then reports the peer gone).
    Race-free by construction: rank 0 posts the receives of the last messages first, and
    closes only after every other rank has received everything it will ever receive."""
    one, buf = np.ones(1, np.uint8), np.zeros(1, np.uint8)
    arrive, go, done = 7001, 7002, 7003
    if comm.rank == 0:
        pending = [comm.recv(np.zeros(1, np.uint8), peer=r, tag=done, async_op=True) for r in range(1, comm.size)]
        for r in range(1, comm.size):
            comm.recv(buf, peer=r, tag=arrive)
        for r in range(1, comm.size):
            comm.send(one, peer=r, tag=go)
        for w in pending:
            w.wait()
    else:
        comm.send(one, peer=0, tag=arrive)
        comm.recv(buf, peer=0, tag=go)
        comm.send(one, peer=0, tag=done)


def _env_override_body(comm):
    out = hcomm.explain("allreduce", 64 << 20, comm=comm).chosen, hcomm.explain("allreduce", 64, comm=comm).why
    _settle(comm)
    return out


def test_hcomm_algo_grammar_still_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [2, 2]))
    monkeypatch.setenv("HCOMM_PROBE", "0")
    monkeypatch.setenv("HCOMM_ALGO", "broadcast:binomial;allreduce:tree")
    assert run_comm(_env_override_body, 4) == [("tree", "HCOMM_ALGO")] * 4


def _bits_body(comm):
    x = make("float32", 200_003, comm.rank, 5)
    y = make("float32", 1000, comm.rank, 6)
    comm.allreduce(x)
    comm.allreduce(y)
    out = x.tobytes() + y.tobytes(), comm._c.last_algorithm()
    _settle(comm)
    return out


def test_deterministic_mode_gives_the_same_bits_every_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HCOMM_DETERMINISTIC", "1")
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [2, 2]))
    runs = [run_comm(_bits_body, 4) for _ in range(5)]
    first = runs[0]
    assert len({bits for bits, _ in first}) == 1          # every rank holds the same bits
    for run in runs[1:]:
        assert run == first


def _explain_measure_body(comm):
    e = hcomm.explain("allreduce", 4096, comm=comm, measure=True, iters=1)
    _settle(comm)
    return str(e), [c.measured for c in e.candidates]


def test_explain_with_measurements(tmp_path, monkeypatch):
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [2, 1]))
    text, measured = run_comm(_explain_measure_body, 3)[0]
    assert all(m is not None and m > 0 for m in measured)
    assert "measured" in text and text.count("<- chosen") == 1


def _topo_body(comm):
    topo = hcomm.topology.topology(comm)
    _settle(comm)
    return topo


def test_dump_and_reload(tmp_path, monkeypatch):
    dump = tmp_path / "dump.json"
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [1, 2], racks=["a", "b"]))
    monkeypatch.setenv("HCOMM_TOPO_DUMP_FILE", str(dump))
    monkeypatch.setenv("HCOMM_PROBE", "0")
    seen = run_comm(_topo_body, 3)[0]
    written = json.loads(dump.read_text())
    assert [(h["name"], h["rack"], h["ranks"]) for h in written["hosts"]] == [
        ("host0", "a", [0]), ("host1", "b", [1, 2])]
    assert written["hosts"] == seen["hosts"]
    assert {l["source"] for l in written["links"].values()} == {"default"}   # HCOMM_PROBE=0
    assert hcomm.topology.load(str(dump))["hosts"] == written["hosts"]


def test_micro_probe_measures_the_links_in_use(tmp_path, monkeypatch):
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [2, 1]))
    topo = run_comm(_topo_body, 3)[0]
    assert topo["links"]["shm"]["source"] == "measured"
    assert topo["links"]["tcp"]["source"] == "measured"
    assert topo["links"]["rack"]["source"] == "default"     # no second rack
    assert all(topo["links"][k]["alpha"] > 0 and topo["links"][k]["beta"] > 0 for k in ("shm", "tcp"))
