"""The double binary tree allreduce (csrc/algo/tree.cc) sums in its trees' order, bit for
bit, whatever order its segments' messages arrive in.

tree.cc takes the two trees side by side (round 7 of docs/tuner.md): every receive is
posted without blocking and whichever tree's message lands first is handled first. The
arithmetic must not follow the arrival order: at each heap node the partial is
(own input + child[0]'s partial) + child[1]'s partial, in the dtype. The reference
below folds numpy arrays the same way, so a float32 result that differs in one bit means
the order changed (e.g. child[1] folded before child[0], or a segment reduced into the
wrong partial). Many small segments (HCOMM_TREE_SEGMENT_BYTES) put many messages of both
trees in flight at once; odd counts give the two trees unequal halves and a short last
segment. Worlds 2-8 as threads and as processes (the cross-process paths).
"""
import numpy as np
import pytest

from harness import run_comm

SEGMENT_BYTES = "1024"  # 256 float32 per segment: a count of 20011 makes ~40 per tree
COUNTS = (1, 2, 3, 255, 257, 20011)


def _heap_fold(inputs, mirrored):
    """Each element's sum as the tree of heap positions folds it: a node's partial is
    ((its input + child[0]'s partial) + child[1]'s partial), float32 throughout."""
    n = len(inputs)

    def partial(p):
        acc = inputs[n - 1 - p if mirrored else p]
        for c in (2 * p + 1, 2 * p + 2):
            if c < n:
                acc = acc + partial(c)
        return acc

    return partial(0)


def tree_reference(inputs):
    """Tree 0 carries the first count // 2 elements, tree 1 (mirrored ranks) the rest."""
    half = len(inputs[0]) // 2
    return np.concatenate([_heap_fold([x[:half] for x in inputs], False),
                           _heap_fold([x[half:] for x in inputs], True)])


def _inputs(n, count, seed):
    # Values spanning several binades, so that a change of association changes bits.
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(count) * 10.0 ** rng.integers(-3, 4, count)).astype(np.float32) for _ in range(n)]


def _body(comm, seed):
    n, r = comm.size, comm.rank
    for i, count in enumerate(COUNTS):
        inputs = _inputs(n, count, seed + i)
        expected = tree_reference(inputs)
        x = inputs[r].copy()
        if i % 2:
            comm.allreduce(x, algo="tree")
            got = x
        else:
            got = np.empty_like(x)
            comm.allreduce(x, got, algo="tree")
            assert np.array_equal(x, inputs[r]), f"rank {r}/{n}: the input changed (count {count})"
        bad = np.flatnonzero(got.view(np.uint32) != expected.view(np.uint32))
        assert bad.size == 0, (f"rank {r}/{n} count {count}: {bad.size} elements differ from the trees' order, "
                               f"first at {bad[0]}: {got[bad[0]]!r} against {expected[bad[0]]!r}")
    return True


@pytest.fixture(autouse=True)
def small_segments(monkeypatch):
    monkeypatch.setenv("HCOMM_TREE_SEGMENT_BYTES", SEGMENT_BYTES)
    monkeypatch.delenv("HCOMM_DETERMINISTIC", raising=False)


def test_reference_is_not_the_rank_order_sum():
    """The check above can fail: on these inputs the trees' order and the rank order
    differ in some bits, so a tree that summed in rank order would be caught."""
    inputs = _inputs(5, 20011, 7)
    rank_order = inputs[0].copy()
    for x in inputs[1:]:
        rank_order = rank_order + x
    assert np.count_nonzero(tree_reference(inputs).view(np.uint32) != rank_order.view(np.uint32)) > 100


@pytest.mark.parametrize("world", [2, 3, 4, 5, 6, 7, 8])
def test_tree_sums_in_its_trees_order_threads(world):
    run_comm(_body, world, args=(100 * world,))


@pytest.mark.parametrize("world", [2, 3, 4, 5, 6, 7, 8])
def test_tree_sums_in_its_trees_order_processes(world):
    run_comm(_body, world, mode="process", args=(200 * world,))
