"""Tuner decisions on described topologies, without processes."""
import pytest

import hcomm
from hcomm.topology import ALGOS, ALLGATHER_ALGOS, ALLREDUCE_ALGOS, BROADCAST_ALGOS

GBIT = 8e-9  # s/byte of a 1 Gbit/s link


def hosts(*sizes, rack_of=None, tcp_beta=GBIT):
    """A described topology: hosts of the given sizes, ranks numbered host by host."""
    out, r = [], 0
    for h, n in enumerate(sizes):
        out.append({"name": f"h{h}", "rack": rack_of(h) if rack_of else "", "ranks": list(range(r, r + n))})
        r += n
    return {"hosts": out, "links": {"shm": {"alpha": 2e-6, "beta": 1 / 8e9},
                                     "tcp": {"alpha": 5e-5, "beta": tcp_beta},
                                     "rack": {"alpha": 8e-5, "beta": 2 * tcp_beta}}}


SIZES = [8, 4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20]


def test_every_candidate_is_listed_with_a_prediction():
    e = hcomm.explain("allreduce", 64 << 20, topology=hosts(2, 2))
    assert [c.algo for c in e.candidates] == list(ALLREDUCE_ALGOS)
    assert all(c.seconds > 0 for c in e.candidates)
    assert e.why == "model" and e.world == 4 and e.hosts == 2


# ---------------------------------------------------------------- bounds any right model obeys
# Checks that a wrong model fails: what must cross between two hosts, whatever the
# algorithm. For each element of an allreduce, host B's result depends on host A's
# inputs, so at least S bytes leave A (and one message: alpha); a broadcast or reduce
# across the cut moves S; reduce_scatter and allgather S/2 (the other host's half).
CUT_BYTES = {"allreduce": 1.0, "broadcast": 1.0, "reduce": 1.0, "reduce_scatter": 0.5, "allgather": 0.5}
TCP_ALPHA = 5e-5


@pytest.mark.parametrize("collective", list(CUT_BYTES))
@pytest.mark.parametrize("layout", [(1, 1), (2, 2), (3, 3), (4, 4)])
@pytest.mark.parametrize("nbytes", [8, 64 << 10, 16 << 20, 256 << 20])
def test_no_prediction_beats_what_must_cross_the_hosts(collective, layout, nbytes):
    for beta in (GBIT, GBIT / 10):
        e = hcomm.explain(collective, nbytes, topology=hosts(*layout, tcp_beta=beta), root=layout[0])
        bound = CUT_BYTES[collective] * nbytes * beta + TCP_ALPHA
        for c in e.candidates:
            if c.applicable:
                assert c.seconds >= bound * 0.999, f"{c.algo}: {c.seconds:.3g} s < the cut's {bound:.3g} s"


@pytest.mark.parametrize("collective", list(CUT_BYTES))
def test_predictions_grow_with_size_and_with_slower_links(collective):
    for layout in ((4,), (2, 2), (3, 1)):
        prev = None
        for nbytes in SIZES:
            e = hcomm.explain(collective, nbytes, topology=hosts(*layout))
            now = {c.algo: c.seconds for c in e.candidates}
            if prev:
                assert all(now[a] >= prev[a] for a in now), f"{layout} {nbytes}: {prev} -> {now}"
            prev = now
        if len(layout) > 1:
            fast = hcomm.explain(collective, 16 << 20, topology=hosts(*layout, tcp_beta=GBIT / 10))
            slow = hcomm.explain(collective, 16 << 20, topology=hosts(*layout, tcp_beta=GBIT))
            assert all(slow.candidate(c.algo).seconds > c.seconds for c in fast.candidates if c.applicable)


def test_candidates_come_from_the_one_table_of_names():
    table = hcomm._C.algorithms()
    for collective, names in ALGOS.items():
        listed = [c.algo for c in hcomm.explain(collective, 1 << 20, topology=hosts(2, 2)).candidates]
        assert listed == [a for a in table[collective] if a in names], collective
        assert set(names) <= set(table[collective]) and "native" not in names


def test_docs_name_every_algorithm():
    """docs/algorithms.md's "Names" table lists exactly the core's table, row by row."""
    import os
    import re

    docs = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "algorithms.md")).read()
    rows = dict(re.findall(r"^\| (\w+) \| (`.*`.*) \|$", docs, re.M))
    for collective, names in hcomm._C.algorithms().items():
        assert collective in rows, collective
        assert re.findall(r"`(\w+)`", rows[collective]) == names, (collective, rows[collective], names)


@pytest.mark.parametrize("collective, algo", [("reduce_scatter", "ring"), ("reduce", "binomial")])
def test_reduce_scatter_and_reduce_are_tuned_and_forced(collective, algo):
    e = hcomm.explain(collective, 64 << 20, topology=hosts(4), algo=algo)
    assert e.chosen == algo and e.why == "requested"
    with pytest.raises(hcomm.InvalidArgument, match=f"unknown {collective} algorithm"):
        hcomm.explain(collective, 8, topology=hosts(4), algo="pairwise")


def test_reduce_picks_the_tree_for_latency_and_reduce_scatter_gather_for_bandwidth():
    # binomial: ceil(log2 8) = 3 message steps, but the root takes log2(n) * S in;
    # reduce-scatter + gather: n-1 + 1 messages, the root takes (n-1)/n * S in.
    small = hcomm.explain("reduce", 8, topology=hosts(8), root=0)
    big = hcomm.explain("reduce", 64 << 20, topology=hosts(8), root=0)
    assert small.chosen == "binomial" and big.chosen == "reduce_scatter_gather"


def test_hierarchical_wins_large_messages_across_hosts():
    e = hcomm.explain("allreduce", 64 << 20, topology=hosts(2, 2))
    assert e.chosen == "hierarchical"
    # the NIC carries 1.0 S instead of the flat ring's 1.5 S
    ratio = e.candidate("ring").seconds / e.candidate("hierarchical").seconds
    assert 1.3 < ratio < 1.55


def test_latency_bound_sizes_pick_a_flat_algorithm():
    assert hcomm.explain("allreduce", 8, topology=hosts(2, 2)).chosen in ("halving_doubling", "tree")


@pytest.mark.parametrize("n", SIZES)
def test_one_host_always_flat(n):
    e = hcomm.explain("allreduce", n, topology=hosts(4))
    assert e.chosen != "hierarchical"
    assert not e.candidate("hierarchical").applicable


def test_one_rank_per_host_is_flat_too():
    e = hcomm.explain("allreduce", 64 << 20, topology=hosts(1, 1, 1, 1))
    assert e.chosen != "hierarchical" and not e.candidate("hierarchical").applicable


def test_two_levels_of_racks():
    topo = hosts(2, 2, 2, 2, rack_of=lambda h: f"r{h // 2}")
    e = hcomm.explain("allreduce", 64 << 20, topology=topo)
    assert e.chosen == "hierarchical"
    assert e.candidate("hierarchical").inner in ("ring", "tree", "halving_doubling")


def test_uneven_hosts_are_modelled():
    e = hcomm.explain("allreduce", 64 << 20, topology=hosts(3, 1))
    assert e.candidate("hierarchical").applicable
    assert all(c.seconds > 0 for c in e.candidates)


def test_segment_sizes_are_chosen():
    small, big = (hcomm.explain("allreduce", n, topology=hosts(4)) for n in (64 << 10, 64 << 20))
    assert big.candidate("tree").seg_bytes > 0 and big.candidate("ring").seg_bytes > 0
    assert small.candidate("halving_doubling").seg_bytes == 0


def test_faster_network_moves_the_crossover():
    slow = hcomm.explain("allreduce", 1 << 20, topology=hosts(2, 2, tcp_beta=GBIT))
    fast = hcomm.explain("allreduce", 1 << 20, topology=hosts(2, 2, tcp_beta=GBIT / 100))
    assert slow.candidate("ring").seconds > fast.candidate("ring").seconds


def test_subset_of_ranks():
    e = hcomm.explain("allreduce", 64 << 20, topology=hosts(2, 2), ranks=[0, 1])
    assert e.world == 2 and e.hosts == 1 and e.chosen != "hierarchical"


def test_requested_algorithm_overrides_the_model():
    e = hcomm.explain("allreduce", 8, topology=hosts(2, 2), algo="ring")
    assert e.chosen == "ring" and e.why == "requested"


def test_table_marks_the_choice_once():
    text = str(hcomm.explain("allreduce", 64 << 20, topology=hosts(2, 2)))
    assert text.count("<- chosen") == 1
    assert "hierarchical" in text.splitlines()[0]
    for algo in ALLREDUCE_ALGOS:
        assert algo in text


@pytest.mark.parametrize("kwargs, words", [
    (dict(collective="barrier", nbytes=8, topology=hosts(2)), "single algorithm"),
    (dict(collective="allreduce", nbytes=8, topology=hosts(2), dtype="complex64"), "unknown dtype"),
    (dict(collective="broadcast", nbytes=8, topology=hosts(2), algo="ring"), "unknown broadcast algorithm"),
    (dict(collective="allgather", nbytes=8, topology=hosts(2), algo="tree"), "unknown allgather algorithm"),
    (dict(collective="allreduce", nbytes=8), "exactly one of"),
    (dict(collective="allreduce", nbytes=8, topology=hosts(2), algo="bogus"), "unknown allreduce algorithm"),
    (dict(collective="allreduce", nbytes=8, topology=hosts(2), measure=True), "needs comm"),
    (dict(collective="allreduce", nbytes=8, topology=hosts(2), device=True), r"device=\.\.\.\) .* needs comm"),
])
def test_explain_rejects_bad_arguments(kwargs, words):
    with pytest.raises(hcomm.InvalidArgument, match=words):
        hcomm.explain(**kwargs)


def test_explain_says_which_buffers_it_describes():
    """On a communicator with no device engine: host buffers by default and when asked;
    device=True before any device collective, or a device= that is not a bool, is refused."""
    comm = hcomm.init(rank=0, size=1)
    try:
        assert hcomm.explain("allreduce", 1 << 20, comm=comm).memory == "host"
        table = hcomm.explain("allreduce", 1 << 20, comm=comm, device=False)
        assert table.memory == "host" and " in host buffers on 1 ranks" in str(table).splitlines()[0]
        with pytest.raises(hcomm.InvalidArgument, match="no collective on device buffers yet"):
            hcomm.explain("allreduce", 1 << 20, comm=comm, device=True)
        with pytest.raises(hcomm.InvalidArgument, match="device must be True, False or None"):
            hcomm.explain("allreduce", 1 << 20, comm=comm, device=1)
    finally:
        comm.close()


def test_subset_rank_out_of_range():
    with pytest.raises(hcomm.Error, match="not in the topology"):
        hcomm.explain("allreduce", 8, topology=hosts(2), ranks=[0, 5])


# ---------------------------------------------------------------- broadcast, allgather

@pytest.mark.parametrize("collective, names", [("broadcast", BROADCAST_ALGOS), ("allgather", ALLGATHER_ALGOS)])
def test_broadcast_and_allgather_list_their_candidates(collective, names):
    e = hcomm.explain(collective, 64 << 20, topology=hosts(3, 3))
    assert [c.algo for c in e.candidates] == list(names)
    assert all(c.seconds > 0 for c in e.candidates)
    assert e.why == "model" and str(e).count("<- chosen") == 1


@pytest.mark.parametrize("root", [0, 1, 4])
def test_hierarchical_broadcast_wins_large_messages_across_hosts(root):
    # 2 hosts x 3 ranks: a flat binomial tree sends several hops of one round through a NIC
    e = hcomm.explain("broadcast", 64 << 20, topology=hosts(3, 3), root=root)
    assert e.chosen == "hierarchical"
    assert e.candidate("binomial").seconds > 1.5 * e.candidate("hierarchical").seconds


def test_broadcast_root_changes_the_flat_tree():
    # 2 x 2: from rank 0 the binomial tree crosses hosts once (it is the hierarchical
    # tree); from rank 1 it crosses three times
    at0 = hcomm.explain("broadcast", 64 << 20, topology=hosts(2, 2), root=0)
    at1 = hcomm.explain("broadcast", 64 << 20, topology=hosts(2, 2), root=1)
    assert at0.candidate("binomial").seconds < at1.candidate("binomial").seconds
    assert at1.chosen == "hierarchical"


# Equal groups only: on 3 + 1 the leaders' ring carries host 0's 3S/4 across, as much
# as the flat ring (test_tuner_validation.py's unequal-groups test).
@pytest.mark.parametrize("layout", [(2, 2), (3, 3), (2, 2, 2)])
def test_hierarchical_allgather_wins_large_messages_across_hosts(layout):
    e = hcomm.explain("allgather", 64 << 20, topology=hosts(*layout))
    assert e.chosen == "hierarchical"
    # the NIC carries (h-1)/h * S instead of (n-1)/n * S: 1.5x less for 2 x 2, 1.25x for 3 x 2
    assert e.candidate("ring").seconds > 1.1 * e.candidate("hierarchical").seconds


@pytest.mark.parametrize("collective", ["broadcast", "allgather"])
@pytest.mark.parametrize("n", SIZES)
def test_broadcast_allgather_on_one_host_or_one_rank_per_host_are_flat(collective, n):
    for topo in (hosts(4), hosts(1, 1, 1, 1)):
        e = hcomm.explain(collective, n, topology=topo)
        assert e.chosen != "hierarchical" and not e.candidate("hierarchical").applicable


def test_broadcast_segment_is_chosen():
    e = hcomm.explain("broadcast", 64 << 20, topology=hosts(2, 2))
    assert all(c.seg_bytes > 0 for c in e.candidates)


@pytest.mark.parametrize("collective, algo, chosen", [
    ("broadcast", "tree", "binomial"), ("broadcast", "binomial", "binomial"), ("allgather", "ring", "ring"),
    ("broadcast", "hierarchical", "hierarchical"), ("allgather", "hierarchical", "hierarchical")])
def test_requested_broadcast_allgather_override(collective, algo, chosen):
    e = hcomm.explain(collective, 8 if chosen == "hierarchical" else 64 << 20, topology=hosts(3, 3), algo=algo)
    assert e.chosen == chosen and e.why == "requested"


def test_racks_for_broadcast_and_allgather():
    topo = hosts(2, 2, 2, 2, rack_of=lambda h: f"r{h // 2}")
    e = hcomm.explain("broadcast", 64 << 20, topology=topo, root=3)
    assert e.chosen == "hierarchical" and e.candidate("hierarchical").applicable
    # hosts: gather into host leaders; racks: peer rings among them; both candidates modelled
    e = hcomm.explain("allgather", 64 << 20, topology=topo)
    assert e.candidate("hierarchical").applicable


def test_allgather_peer_rings_beat_the_ring_on_fast_networks_too():
    # 10 Gbit/s between hosts: the peer rings move no more shm bytes than the flat ring
    e = hcomm.explain("allgather", 64 << 20, topology=hosts(3, 3, tcp_beta=GBIT / 10))
    assert e.chosen == "hierarchical" and e.candidate("hierarchical").seg_bytes == 0
    # unequal groups (3+1) keep the leader scheme, still modelled
    assert hcomm.explain("allgather", 64 << 20, topology=hosts(3, 1)).candidate("hierarchical").seg_bytes > 0


# ---------------------------------------------------------------- oversubscribed machines

def one_machine(sizes, cpus, tcp_beta=1 / 0.11e9):
    """Simulated hosts that all live on one machine ("box") with `cpus` CPUs, as the
    network-namespace cluster does: the probe records say so (hostname, CPU set)."""
    topo = hosts(*sizes, tcp_beta=tcp_beta)
    topo["links"]["tcp"]["alpha"] = 1.1e-5      # what the micro-probe measured there
    n = sum(sizes)
    host_of = [h["name"] for h in topo["hosts"] for _ in h["ranks"]]
    topo["ranks"] = [{"rank": r, "hostname": "box", "host": host_of[r], "cpus": f"0-{cpus - 1}"} for r in range(n)]
    return topo


@pytest.mark.parametrize("n", SIZES)
def test_every_cpu_shared_charges_each_step_a_late_wake(n):
    # 2 namespaces x 2 ranks on a 2-CPU machine: each dependent wait ends in a sleep that
    # wakes late, hierarchical's single-transport phases included. Measured
    # (benchmarks/tuner_validation.py, 1 and 10 Gbit/s): halving-doubling (2 steps)
    # 1.04-3.5x faster than hierarchical (3 phases) at 8 B - 4 KiB; hierarchical fastest
    # from 256 KiB (the NIC bytes it saves).
    e = hcomm.explain("allreduce", n, topology=one_machine([2, 2], cpus=2))
    assert e.chosen == ("halving_doubling" if n <= 4 << 10 else "hierarchical"), str(e)


def test_enough_cpus_keeps_the_latency_choice():
    e = hcomm.explain("allreduce", 8, topology=one_machine([2, 2], cpus=8))
    assert e.chosen != "hierarchical"
    assert e.candidate("halving_doubling").seconds < 1e-4


def test_late_wake_is_charged_per_step_when_every_cpu_is_shared():
    busy = hcomm.explain("allreduce", 8, topology=one_machine([2, 2], cpus=2))
    idle = hcomm.explain("allreduce", 8, topology=one_machine([2, 2], cpus=8))
    assert busy.candidate("ring").seconds - idle.candidate("ring").seconds > 5e-4   # 6 steps of 0.1 ms
    # hierarchical: reduce-scatter inside, leaders' allreduce, allgather inside: 3 waits
    extra = busy.candidate("hierarchical").seconds - idle.candidate("hierarchical").seconds
    assert extra == pytest.approx(3e-4, rel=0.01)
    # 3 ranks on 2 CPUs: one CPU to spare, waits end before the sleep (measured: no
    # slower than 3 hosts of one rank each)
    spare = hcomm.explain("allreduce", 8, topology=one_machine([2, 1], cpus=2))
    alone = hcomm.explain("allreduce", 8, topology=one_machine([2, 1], cpus=8))
    # (within 1 us: the shared CPU prices the 8 bytes' reduction a little higher; a late
    # wake would add 0.1 ms a step)
    assert spare.candidate("ring").seconds == pytest.approx(alone.candidate("ring").seconds, abs=1e-6)
    # a broadcast tree's ranks wait once, idle: not charged
    b_busy = hcomm.explain("broadcast", 8, topology=one_machine([2, 2], cpus=2), root=1)
    b_idle = hcomm.explain("broadcast", 8, topology=one_machine([2, 2], cpus=8), root=1)
    assert b_busy.candidate("binomial").seconds == pytest.approx(b_idle.candidate("binomial").seconds)
    # the direct reduce-scatter sends every block at once: one wait, one late wake
    d_busy = hcomm.explain("reduce_scatter", 8, topology=one_machine([2, 2], cpus=2))
    d_idle = hcomm.explain("reduce_scatter", 8, topology=one_machine([2, 2], cpus=8))
    assert d_busy.candidate("direct").seconds - d_idle.candidate("direct").seconds == pytest.approx(1e-4, rel=0.01)
