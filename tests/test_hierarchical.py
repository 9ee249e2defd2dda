"""Hierarchical allreduce, broadcast and allgather(v) on simulated hosts (a topology file places ranks on hosts and
racks, so ranks of one host talk shm and the others tcp) against numpy, the tuner on a
real communicator, deterministic bits, topology dumps and the micro-probe switch."""
import json

import numpy as np
import pytest
import torch

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
    # int32: exact in any order, so priced as the plain algorithms even under
    # HCOMM_DETERMINISTIC=1 (a float32 sum there is the ordered fold, priced as such)
    e64 = hcomm.explain("allreduce", 64 << 20, comm=comm, dtype="int32")
    e8 = hcomm.explain("allreduce", 8, comm=comm, dtype="int32")
    x = np.ones(1 << 16, np.float32)  # 256 KiB: whatever the tuner picks must be right
    comm.allreduce(x)
    assert np.all(x == comm.size)
    return e64.chosen, e8.chosen, comm._c.choose_allreduce(64 << 20, "")


def test_tuner_picks_hierarchical_across_hosts_and_flat_on_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HCOMM_DETERMINISTIC", "1")  # model constants only: no timing
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [2, 2]))
    # 8 B is latency-bound: a flat algorithm, also when the 4 ranks share 2 CPUs (every
    # step then wakes late, hierarchical's phases too: the fewest steps still win)
    for chosen64, chosen8, core in run_comm(_auto_body, 4):
        assert chosen64 == core == "hierarchical"
        assert chosen8 != "hierarchical"
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [4]))
    for chosen64, chosen8, _ in run_comm(_auto_body, 4):
        assert "hierarchical" not in (chosen64, chosen8)


def _env_override_body(comm):
    out = hcomm.explain("allreduce", 64 << 20, comm=comm).chosen, hcomm.explain("allreduce", 64, comm=comm).why
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
    algo = comm._c.last_algorithm()
    b = make("float32", 100_001, 2, 7) if comm.rank == 2 else np.zeros(100_001, np.float32)
    comm.broadcast(b, root=2)
    g = np.empty(3001 * comm.size, np.float32)
    comm.allgather(make("float32", 3001, comm.rank, 8), g)
    out = x.tobytes() + y.tobytes() + b.tobytes() + g.tobytes(), algo
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
    return str(e), [c.measured for c in e.candidates]


def test_explain_with_measurements(tmp_path, monkeypatch):
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [2, 1]))
    text, measured = run_comm(_explain_measure_body, 3)[0]
    assert all(m is not None and m > 0 for m in measured)
    assert "measured" in text and text.count("<- chosen") == 1


def _topo_body(comm):
    topo = hcomm.topology.topology(comm)
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


# ---------------------------------------------------------------- broadcast, allgather(v)

def _raw(x):
    """The bits of x as a flat numpy array (bfloat16 tensors viewed as int16)."""
    if isinstance(x, torch.Tensor):
        return (x.view(torch.int16) if x.dtype == torch.bfloat16 else x).numpy().reshape(-1)
    return np.asarray(x).reshape(-1)


def _empty(dtype, n):
    return torch.zeros(n, dtype=torch.bfloat16) if dtype == "bfloat16" else np.zeros(n, dtype)


def _bcast_gather_body(comm, counts, roots, algo):
    seed = 1000
    for dtype in DTYPES:
        for count in counts:
            for root in roots:
                seed += 1
                want = make(dtype, count, root, seed)
                x = copy(want) if comm.rank == root else _empty(dtype, count)
                comm.broadcast(x, root=root, algo=algo)
                assert np.array_equal(_raw(x), _raw(want)), f"broadcast {dtype} n={count} root={root}"
            seed += 1
            parts = [make(dtype, count, q, seed) for q in range(comm.size)]
            out = _empty(dtype, count * comm.size)
            comm.allgather(parts[comm.rank], out, algo=algo)
            assert np.array_equal(_raw(out), np.concatenate([_raw(p) for p in parts])), f"allgather {dtype} n={count}"
            # allgatherv: unequal counts, zeros included; in place (input is out's block)
            vc = [(q * 3 + count) % 5 for q in range(comm.size)]
            vparts = [make(dtype, vc[q], q, seed + 1) for q in range(comm.size)]
            out = _empty(dtype, sum(vc))
            start = sum(vc[:comm.rank])
            out[start:start + vc[comm.rank]] = vparts[comm.rank]
            comm.allgatherv(out[start:start + vc[comm.rank]], out, vc, algo=algo)
            assert np.array_equal(_raw(out), np.concatenate([_raw(p) for p in vparts])), f"allgatherv {dtype} {vc}"
    algos = comm._c.last_algorithm()
    return algos


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_hierarchical_broadcast_allgather_match_numpy(layout, tmp_path, monkeypatch):
    sizes = LAYOUTS[layout]
    n = sum(sizes)
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, sizes))
    monkeypatch.setenv("HCOMM_PROBE", "0")
    counts = [0, 1, 7, 1001] if n <= 4 else [5, 1001]
    roots = list(range(n)) if n <= 4 else [0, n - 1, sizes[0]]  # every root; else first, last, host 1's first
    assert run_comm(_bcast_gather_body, n, args=(counts, roots, "hierarchical")) == ["hierarchical"] * n


def _big_bcast_gather_body(comm, count):
    want = make("float32", count, 1, 9)
    x = want.copy() if comm.rank == 1 else np.zeros(count, np.float32)
    comm.broadcast(x, root=1, algo="hierarchical")
    parts = [make("float64", count // 7 + q, q, 10) for q in range(comm.size)]
    out = np.empty(sum(p.size for p in parts))
    comm.allgatherv(parts[comm.rank], out, [p.size for p in parts], algo="hierarchical")
    return np.array_equal(x, want) and np.array_equal(out, np.concatenate(parts))


def test_hierarchical_broadcast_allgather_racks_segments_and_interleaved_hosts(tmp_path, monkeypatch):
    # many pipelined segments; two levels (racks) with remainders; then hosts whose ranks
    # interleave (host of rank r = r % 2), so group blocks are not contiguous in rank order
    monkeypatch.setenv("HCOMM_TREE_SEGMENT_BYTES", "65536")
    monkeypatch.setenv("HCOMM_PROBE", "0")
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [2, 1, 1], racks=["r0", "r0", "r1"]))
    assert all(run_comm(_big_bcast_gather_body, 4, args=(300_007,)))
    path = tmp_path / "interleaved.json"
    path.write_text(json.dumps({"hosts": [{"name": "a", "ranks": [0, 2, 4]}, {"name": "b", "ranks": [1, 3]}]}))
    monkeypatch.setenv("HCOMM_TOPO_FILE", str(path))
    assert all(run_comm(_big_bcast_gather_body, 5, args=(100_003,)))


def _explain_bcast_gather_body(comm):
    out = []
    for collective in ("broadcast", "allgather"):
        e = hcomm.explain(collective, 64 << 20, comm=comm, root=1)
        out.append((e.chosen, e.why))
    return out


@pytest.mark.parametrize("spec, expect", [
    ("allreduce:ring;broadcast:tree;allgather:hierarchical", [("binomial", "HCOMM_ALGO"), ("hierarchical", "HCOMM_ALGO")]),
    ("broadcast:hierarchical;allgather:ring", [("hierarchical", "HCOMM_ALGO"), ("ring", "HCOMM_ALGO")]),
    ("ring", [(None, "model"), ("ring", "HCOMM_ALGO")]),   # bare: only where the collective has it
    ("allreduce:tree", [(None, "model"), (None, "model")]),
])
def test_hcomm_algo_grammar_for_broadcast_and_allgather(spec, expect, tmp_path, monkeypatch):
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [3, 3]))
    monkeypatch.setenv("HCOMM_DETERMINISTIC", "1")
    monkeypatch.setenv("HCOMM_ALGO", spec)
    for got in run_comm(_explain_bcast_gather_body, 6):
        for (chosen, why), (want_chosen, want_why) in zip(got, expect):
            assert why == want_why and chosen == (want_chosen or chosen)


def _forced_runs_body(comm):
    x = np.arange(10, dtype=np.float32) if comm.rank == 0 else np.zeros(10, np.float32)
    comm.broadcast(x, root=0)
    b = comm._c.last_algorithm()
    out = np.empty(2 * comm.size, np.int32)
    comm.allgather(np.full(2, comm.rank, np.int32), out)
    g = comm._c.last_algorithm()
    ok = np.array_equal(x, np.arange(10)) and np.array_equal(out, np.repeat(np.arange(comm.size), 2))
    return b, g, ok


def test_hcomm_algo_forces_the_algorithm_that_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [2, 2]))
    monkeypatch.setenv("HCOMM_PROBE", "0")
    monkeypatch.setenv("HCOMM_ALGO", "broadcast:hierarchical;allgather:hierarchical")
    assert run_comm(_forced_runs_body, 4) == [("hierarchical", "hierarchical", True)] * 4
    monkeypatch.setenv("HCOMM_ALGO", "broadcast:tree;allgather:ring")
    assert run_comm(_forced_runs_body, 4) == [("binomial", "ring", True)] * 4


def _bad_env_body(comm):
    try:
        comm.broadcast(np.zeros(4, np.float32), root=0)
    except hcomm.Error as e:
        return str(e)
    return ""


def test_hcomm_algo_unknown_broadcast_name_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("HCOMM_TOPO_FILE", topo_file(tmp_path, [1, 1]))
    monkeypatch.setenv("HCOMM_PROBE", "0")
    monkeypatch.setenv("HCOMM_ALGO", "broadcast:ring")
    assert all("unknown broadcast algorithm 'ring'" in m for m in run_comm(_bad_env_body, 2))


def test_python_algo_argument_is_checked():
    with pytest.raises(hcomm.InvalidArgument, match="unknown allgather algorithm"):
        hcomm.Communicator.allgather(None, np.zeros(1), np.zeros(1), algo="tree")
    with pytest.raises(hcomm.InvalidArgument, match="unknown broadcast algorithm"):
        hcomm.Communicator.broadcast(_NoRootCheck(), np.zeros(1), algo="ring")


class _NoRootCheck:
    def _check_root(self, root):
        pass
