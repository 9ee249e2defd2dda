"""The tuner's structure for the collectives tuned under issue 20 - hierarchical
reduce_scatter, alltoall (pairwise, Bruck), gather/scatter - and explain() per dtype,
on described topologies without processes. Bounds any right model obeys, so a wrong
model fails; never the model compared with itself."""
import pytest

import hcomm
from test_tuner import GBIT, hosts


def _applicable(e):
    return {c.algo: c.seconds for c in e.candidates if c.applicable}


@pytest.mark.parametrize("layout", [(2, 2), (4, 4), (3, 1), (2, 2, 2)])
@pytest.mark.parametrize("nbytes", [8, 1 << 20, 64 << 20])
def test_alltoall_never_beats_what_must_leave_a_host(layout, nbytes):
    """Host 0 must send its g0 ranks' blocks for every other host: g0 * (n-g0)/n * S bytes
    through its NIC, and at least one message."""
    n, g0 = sum(layout), layout[0]
    for beta in (GBIT, GBIT / 10):
        e = hcomm.explain("alltoall", nbytes, topology=hosts(*layout, tcp_beta=beta))
        bound = g0 * (n - g0) / n * nbytes * beta + 5e-5
        for algo, t in _applicable(e).items():
            assert t >= bound * 0.999, f"{algo} {layout} {nbytes}: {t:.3g} s < {bound:.3g} s"


def test_alltoall_bruck_for_small_blocks_pairwise_for_large():
    small = hcomm.explain("alltoall", 8 * 8, topology=hosts(8))
    large = hcomm.explain("alltoall", 64 << 20, topology=hosts(8))
    assert small.chosen == "bruck" and large.chosen == "pairwise"
    # Bruck's advantage is the steps: log2(8) = 3 latencies against 7
    assert small.candidate("pairwise").seconds > 2 * small.candidate("bruck").seconds


def test_alltoall_bruck_needs_one_message_per_bit():
    """ceil(log2 n) dependent messages at least, whatever the bytes."""
    for n in (3, 5, 8):
        e = hcomm.explain("alltoall", 8, topology=hosts(n))
        steps = (n - 1).bit_length()
        assert e.candidate("bruck").seconds >= steps * 2e-6 * 0.999
        assert e.candidate("pairwise").seconds >= (n - 1) * 2e-6 * 0.999


@pytest.mark.parametrize("layout", [(2, 2), (4, 4), (3, 3), (2, 2, 2)])
def test_reduce_scatter_hierarchical_wins_large_messages_across_hosts(layout):
    e = hcomm.explain("reduce_scatter", 64 << 20, topology=hosts(*layout))
    assert e.chosen == "hierarchical", str(e)
    # A host's NIC: (h-1)/h * S for hierarchical against (n-1)/n * S for the flat ring
    # (ring order crosses a host boundary once per step per host).
    ring, hier = e.candidate("ring").seconds, e.candidate("hierarchical").seconds
    assert hier < ring


def test_reduce_scatter_one_rank_host_is_the_bottleneck_either_way():
    """3+1: the lone rank's NIC sends 3/4 S in the ring and as handler of three blocks
    alike, so hierarchical saves nothing there (within the inside ring's cost)."""
    e = hcomm.explain("reduce_scatter", 64 << 20, topology=hosts(3, 1))
    ring, hier = e.candidate("ring").seconds, e.candidate("hierarchical").seconds
    assert abs(hier - ring) / ring < 0.05
    assert hier >= 0.75 * (64 << 20) * GBIT


@pytest.mark.parametrize("layout", [(4,), (1, 1, 1, 1)])
def test_reduce_scatter_hierarchical_is_flat_on_one_level(layout):
    e = hcomm.explain("reduce_scatter", 64 << 20, topology=hosts(*layout))
    assert not e.candidate("hierarchical").applicable and e.chosen != "hierarchical"


def test_reduce_scatter_hierarchical_forced_and_listed():
    e = hcomm.explain("reduce_scatter", 8, topology=hosts(2, 2), algo="hierarchical")
    assert e.chosen == "hierarchical" and e.why == "requested"
    assert [c.algo for c in e.candidates] == ["ring", "direct", "hierarchical"]


def test_explain_per_dtype_prices_the_ordered_fold():
    """16-bit sums fold in float32 at each block's owner (twice the kernel bytes), so on
    3+ ranks a bfloat16 allreduce costs more than float32 of the same bytes, and every
    reduce_scatter algorithm runs (and is priced as) the direct fold."""
    topo = hosts(4)
    f32 = hcomm.explain("allreduce", 16 << 20, topology=topo, dtype="float32")
    bf16 = hcomm.explain("allreduce", 16 << 20, topology=topo, dtype="bfloat16")
    assert bf16.candidate("ring").seconds > f32.candidate("ring").seconds
    rs = hcomm.explain("reduce_scatter", 16 << 20, topology=hosts(2, 2), dtype="float16")
    assert len({c.seconds for c in rs.candidates}) == 1
    assert "bfloat16" in str(bf16) and "float32" in str(f32)
    # no reduction: the dtype does not change a broadcast's price
    b1 = hcomm.explain("broadcast", 1 << 20, topology=topo, dtype="float16")
    b2 = hcomm.explain("broadcast", 1 << 20, topology=topo, dtype="float64")
    assert [c.seconds for c in b1.candidates] == [c.seconds for c in b2.candidates]


@pytest.mark.parametrize("collective", ["gather", "scatter"])
def test_explain_gather_scatter(collective):
    e = hcomm.explain(collective, 8, topology=hosts(8), root=3)
    assert [c.algo for c in e.candidates] == ["linear", "binomial"]
    assert e.chosen == "binomial"  # 3 levels of latency against 7 messages at the root
    big = hcomm.explain(collective, 64 << 20, topology=hosts(4, 4), root=0)
    # the root moves (n-1) blocks whatever the tree: (n - g_root) of them across its NIC
    for c in big.candidates:
        assert c.seconds >= 4 * (64 << 20) * GBIT * 0.999
