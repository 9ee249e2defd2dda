"""Every c10d collective through torch.distributed on the "hcomm" backend.

Each rank builds every rank's inputs from seeded generators, so the expected result of a
collective is computed locally (float64 reference) and compared with what hcomm returned.
One spawned world per size runs the whole matrix: spawning costs more than the checks.
"""
import pytest
import torch
import torch.distributed as dist

from harness import run_torch

BACKEND = "hcomm"
JOB_TIMEOUT = 300  # seconds for a whole spawned world: generous, CI machines are shared
SIZE = 37  # odd on purpose


def data(rank, shape, dtype=torch.float32, seed=0, low=-4, high=5):
    """Rank `rank`'s seeded input; identical wherever it is computed."""
    g = torch.Generator().manual_seed(1000 * seed + rank)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return (torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low).to(dtype)
    return torch.randint(low, high, shape, generator=g).to(dtype)


def close(actual, expected, what):
    """Floats within a dtype-sized tolerance, integers exactly. (torch.allclose rather
    than torch.testing: its first import costs seconds in every spawned rank.)"""
    expected = expected.to(actual.dtype)
    if actual.is_complex():  # componentwise, as floats
        actual, expected = torch.view_as_real(actual), torch.view_as_real(expected)
    if actual.dtype.is_floating_point:
        tol = {torch.bfloat16: 3e-2, torch.float16: 5e-3}.get(actual.dtype, 1e-5)
        ok = actual.shape == expected.shape and torch.allclose(actual.double(), expected.double(), rtol=tol, atol=tol)
    else:
        ok = torch.equal(actual, expected)
    assert ok, f"{what}: got {actual}, expected {expected}"


# ---------------------------------------------------------------- references
def fold(tensors, op):
    """Reference reduction over ranks, in float64 for floats (the core accumulates wider)."""
    wide = [t.double() if t.is_floating_point() else t.long() for t in tensors]
    if op == dist.ReduceOp.SUM:
        return sum(wide[1:], wide[0]) if tensors[0].dtype != torch.bool else torch.stack(tensors).any(0)
    if op == dist.ReduceOp.PRODUCT:
        out = wide[0]
        for t in wide[1:]:
            out = out * t
        return out
    if op == dist.ReduceOp.MIN:
        return torch.stack(wide).min(0).values
    if op == dist.ReduceOp.MAX:
        return torch.stack(wide).max(0).values
    if op == dist.ReduceOp.AVG:
        return sum(wide[1:], wide[0]) / len(wide)
    bit = {dist.ReduceOp.BAND: torch.bitwise_and, dist.ReduceOp.BOR: torch.bitwise_or,
           dist.ReduceOp.BXOR: torch.bitwise_xor}[op]
    out = tensors[0].clone()
    for t in tensors[1:]:
        out = bit(out, t)
    return out


ALLREDUCE_CASES = [  # (op, dtypes)
    (dist.ReduceOp.SUM, [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int32, torch.int64,
                         torch.int8, torch.uint8, torch.bool]),
    (dist.ReduceOp.PRODUCT, [torch.float32, torch.int64]),
    (dist.ReduceOp.MIN, [torch.float32, torch.int32, torch.bool]),
    (dist.ReduceOp.MAX, [torch.float64, torch.int8, torch.bool]),
    (dist.ReduceOp.AVG, [torch.float32, torch.bfloat16]),
    (dist.ReduceOp.BAND, [torch.int32, torch.bool]),
    (dist.ReduceOp.BOR, [torch.int64, torch.uint8]),
    (dist.ReduceOp.BXOR, [torch.int32]),
]


def _inputs(n, dtype, seed, shape=(SIZE,), op=None):
    low, high = (0, 3) if op == dist.ReduceOp.PRODUCT else (-4, 5)
    if dtype == torch.uint8 or op in (dist.ReduceOp.BAND, dist.ReduceOp.BOR, dist.ReduceOp.BXOR):
        low, high = 0, 100
    return [data(r, shape, dtype, seed, low, high) for r in range(n)]


def check_allreduce(rank, n):
    for i, (op, dtypes) in enumerate(ALLREDUCE_CASES):
        for j, dtype in enumerate(dtypes):
            xs = _inputs(n, dtype, seed=10 * i + j, op=op)
            t = xs[rank].clone()
            dist.all_reduce(t, op=op)
            close(t, fold(xs, op), f"all_reduce {op} {dtype}")
    # PREMUL_SUM (FSDP1 / NCCL style) carries its factor in the ReduceOp
    xs = _inputs(n, torch.float32, seed=90)
    t = xs[rank].clone()
    dist.all_reduce(t, op=dist._make_nccl_premul_sum(0.25))
    close(t, fold(xs, dist.ReduceOp.SUM) * 0.25, "all_reduce premul_sum")
    # 0-dim (Lightning broadcasts and reduces scalars), non-contiguous, complex
    s = torch.tensor(float(rank + 1))
    dist.all_reduce(s)
    close(s, torch.tensor(n * (n + 1) / 2), "all_reduce 0-dim")
    xs = [data(r, (5, 7), seed=91) for r in range(n)]
    t = xs[rank].clone().t()  # non-contiguous view: worked on a copy, written back
    dist.all_reduce(t)
    close(t, fold(xs, dist.ReduceOp.SUM).t(), "all_reduce non-contiguous")
    xs = [torch.complex(data(r, (9,), seed=92), data(r, (9,), seed=93)) for r in range(n)]
    t = xs[rank].clone()
    dist.all_reduce(t)
    close(torch.view_as_real(t), torch.view_as_real(sum(xs[1:], xs[0])), "all_reduce complex")


def check_allreduce_coalesced(rank, n):
    xs = [[data(r, (SIZE,), seed=20), data(r, (3, 4), torch.int64, seed=21), data(r, (11,), seed=22)]
          for r in range(n)]
    mine = [xs[rank][0].clone(), xs[rank][2].clone()]
    dist.all_reduce_coalesced(mine)
    for k, t in zip((0, 2), mine):
        close(t, fold([x[k] for x in xs], dist.ReduceOp.SUM), f"all_reduce_coalesced[{k}]")
    # torch's wrapper wants one dtype; the backend itself takes mixed ones (one flat
    # allreduce per dtype), as C++ callers may pass them
    mine = [t.clone() for t in xs[rank]]
    opts = dist.AllreduceCoalescedOptions()
    opts.reduceOp = dist.ReduceOp.SUM
    dist.group.WORLD.allreduce_coalesced(mine, opts).wait()
    for k, t in enumerate(mine):
        close(t, fold([x[k] for x in xs], dist.ReduceOp.SUM), f"mixed allreduce_coalesced[{k}]")
    mine = [t.clone() for t in xs[rank]]
    with dist._coalescing_manager(async_ops=True) as cm:
        for t in mine:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
    cm.wait()
    for k, t in enumerate(mine):
        close(t, fold([x[k] for x in xs], dist.ReduceOp.MAX), f"coalescing_manager all_reduce[{k}]")


def check_reduce_broadcast(rank, n):
    for root in range(n):
        for op, dtype in ((dist.ReduceOp.SUM, torch.float32), (dist.ReduceOp.MAX, torch.int32),
                          (dist.ReduceOp.BOR, torch.int64)):
            xs = _inputs(n, dtype, seed=30 + root, op=op)
            t = xs[rank].clone()
            dist.reduce(t, dst=root, op=op)
            if rank == root:
                close(t, fold(xs, op), f"reduce root {root} {op}")
        for dtype in (torch.float32, torch.bfloat16, torch.int16, torch.complex64):
            src = data(root, (SIZE,), torch.float64, seed=40 + root).to(dtype)
            t = src.clone() if rank == root else torch.zeros_like(src)
            dist.broadcast(t, src=root)
            assert torch.equal(t, src), f"broadcast root {root} {dtype}"
    s = torch.tensor(7.5 if rank == n - 1 else 0.0)
    dist.broadcast(s, src=n - 1)
    assert s.item() == 7.5, "broadcast 0-dim"


def check_allgather(rank, n):
    xs = [data(r, (SIZE,), torch.bfloat16, seed=50) for r in range(n)]
    out = [torch.empty(SIZE, dtype=torch.bfloat16) for _ in range(n)]
    dist.all_gather(out, xs[rank])
    for r in range(n):
        assert torch.equal(out[r], xs[r]), f"all_gather block {r}"
    # uneven sizes (Gloo needs equal ones; hcomm uses allgatherv)
    xs = [data(r, (r + 2,), torch.int64, seed=51) for r in range(n)]
    out = [torch.empty(r + 2, dtype=torch.int64) for r in range(n)]
    dist.all_gather(out, xs[rank])
    assert all(torch.equal(out[r], xs[r]) for r in range(n)), "all_gather uneven"
    xs = [data(r, (3, 5), seed=52) for r in range(n)]
    out = torch.empty(3 * n, 5)
    dist.all_gather_into_tensor(out, xs[rank])
    assert torch.equal(out, torch.cat(xs)), "all_gather_into_tensor"
    ins = [[data(r, (SIZE,), seed=53), data(r, (2, 3), seed=54)] for r in range(n)]
    out = [[torch.empty(SIZE), torch.empty(2, 3)] for _ in range(n)]
    dist.all_gather_coalesced(out, ins[rank])
    for r in range(n):
        assert torch.equal(out[r][0], ins[r][0]) and torch.equal(out[r][1], ins[r][1]), "all_gather_coalesced"
    # mixed dtypes through the backend directly (torch's wrapper wants one dtype)
    ins = [[data(r, (SIZE,), seed=53), data(r, (2, 3), torch.int32, seed=54)] for r in range(n)]
    out = [[torch.empty(SIZE), torch.empty(2, 3, dtype=torch.int32)] for _ in range(n)]
    dist.group.WORLD.allgather_coalesced(out, ins[rank]).wait()
    for r in range(n):
        assert torch.equal(out[r][0], ins[r][0]) and torch.equal(out[r][1], ins[r][1]), "mixed allgather_coalesced"
    outs = [torch.empty(n * SIZE), torch.empty(n * 4, dtype=torch.float64)]
    ins = [[data(r, (SIZE,), seed=55), data(r, (4,), torch.float64, seed=56)] for r in range(n)]
    with dist._coalescing_manager():
        for o, x in zip(outs, ins[rank]):
            dist.all_gather_into_tensor(o, x)
    for k, o in enumerate(outs):
        assert torch.equal(o, torch.cat([x[k] for x in ins])), f"coalesced all_gather_into_tensor[{k}]"


def check_reduce_scatter(rank, n):
    for op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX, dist.ReduceOp.BXOR):
        dtype = torch.int32 if op == dist.ReduceOp.BXOR else torch.float32
        xs = _inputs(n, dtype, seed=60, shape=(n * SIZE,), op=op)
        out = torch.empty(SIZE, dtype=dtype)
        dist.reduce_scatter_tensor(out, xs[rank].clone(), op=op)
        close(out, fold(xs, op)[rank * SIZE:(rank + 1) * SIZE], f"reduce_scatter_tensor {op}")
    # list form with uneven blocks: block r has r + 3 elements
    blocks = [[data(r, (b + 3,), seed=61 + b) for b in range(n)] for r in range(n)]
    out = torch.empty(rank + 3)
    dist.reduce_scatter(out, [b.clone() for b in blocks[rank]])
    close(out, fold([blocks[r][rank] for r in range(n)], dist.ReduceOp.SUM), "reduce_scatter list")
    xs = [[data(r, (n * 5,), seed=70), data(r, (n * 3,), seed=71)] for r in range(n)]
    outs = [torch.empty(5), torch.empty(3)]
    with dist._coalescing_manager():
        for o, x in zip(outs, xs[rank]):
            dist.reduce_scatter_tensor(o, x.clone())
    for k, (o, m) in enumerate(zip(outs, (5, 3))):
        close(o, fold([x[k] for x in xs], dist.ReduceOp.SUM)[rank * m:(rank + 1) * m], f"coalesced rs[{k}]")
    # complex: sums on the float view; ops that do not work componentwise are refused
    # on every rank before any byte moves
    with pytest.raises(RuntimeError, match="max is not defined for complex"):
        dist.reduce_scatter_tensor(torch.empty(2, dtype=torch.complex64), torch.ones(2 * n, dtype=torch.complex64),
                                   op=dist.ReduceOp.MAX)
    with pytest.raises(RuntimeError, match="dtype torch.complex64 differs"):
        dist.reduce_scatter_tensor(torch.empty(2, dtype=torch.complex64), torch.ones(4 * n))


def check_alltoall(rank, n):
    # uneven: rank r sends (r + j + 1) rows of width 3 to rank j
    rows = [[r + j + 1 for j in range(n)] for r in range(n)]
    xs = [data(r, (sum(rows[r]), 3), seed=80) for r in range(n)]
    recv_rows = [rows[j][rank] for j in range(n)]
    out = torch.empty(sum(recv_rows), 3)
    dist.all_to_all_single(out, xs[rank], output_split_sizes=recv_rows, input_split_sizes=rows[rank])
    expected = [xs[j][sum(rows[j][:rank]):sum(rows[j][:rank + 1])] for j in range(n)]
    assert torch.equal(out, torch.cat(expected)), "all_to_all_single uneven"
    xs = [data(r, (2 * n,), torch.int64, seed=81) for r in range(n)]
    out = torch.empty(2 * n, dtype=torch.int64)
    dist.all_to_all_single(out, xs[rank])
    assert torch.equal(out, torch.cat([xs[j][2 * rank:2 * rank + 2] for j in range(n)])), "all_to_all_single"
    ins = [[data(r, (r + j + 1,), seed=82 + j) for j in range(n)] for r in range(n)]
    outs = [torch.empty(j + rank + 1) for j in range(n)]
    dist.all_to_all(outs, ins[rank])
    assert all(torch.equal(outs[j], ins[j][rank]) for j in range(n)), "all_to_all list"


def check_gather_scatter(rank, n):
    for root in range(n):
        xs = [data(r, (SIZE,), torch.float64, seed=100 + root) for r in range(n)]
        out = [torch.empty(SIZE, dtype=torch.float64) for _ in range(n)] if rank == root else None
        dist.gather(xs[rank], out, dst=root)
        if rank == root:
            assert all(torch.equal(out[r], xs[r]) for r in range(n)), f"gather root {root}"
        blocks = [data(r, (4, 3), torch.int32, seed=110 + root) for r in range(n)]
        out = torch.empty(4, 3, dtype=torch.int32)
        dist.scatter(out, blocks if rank == root else None, src=root)
        assert torch.equal(out, blocks[rank]), f"scatter root {root}"


def check_point_to_point(rank, n):
    nxt, prv = (rank + 1) % n, (rank - 1) % n
    msg = [data(r, (SIZE,), seed=120) for r in range(n)]
    got = torch.empty(SIZE)
    reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, msg[rank], nxt, tag=5),
                                   dist.P2POp(dist.irecv, got, prv, tag=5)])
    for r in reqs:
        r.wait()
    assert torch.equal(got, msg[prv]), "ring isend/irecv"
    if rank == 0:  # any-source: each sender identified by the returned rank
        seen = set()
        for _ in range(n - 1):
            buf = torch.empty(SIZE)
            src = dist.recv(buf)
            assert torch.equal(buf, msg[src]), f"recv from any source: payload of {src}"
            seen.add(src)
        assert seen == set(range(1, n)), seen
    else:
        dist.send(msg[rank], 0)
    dist.barrier()


def check_objects(rank, n):
    objs = [{"rank": rank, "tail": list(range(rank))}] if rank == 1 % n else [None]
    dist.broadcast_object_list(objs, src=1 % n)
    assert objs[0] == {"rank": 1 % n, "tail": list(range(1 % n))}
    out = [None] * n
    dist.all_gather_object(out, ("r", rank, "x" * rank))
    assert out == [("r", r, "x" * r) for r in range(n)]
    out = [None] * n if rank == 0 else None
    dist.gather_object({"r": rank}, out, dst=0)
    if rank == 0:
        assert out == [{"r": r} for r in range(n)]
    got = [None]
    dist.scatter_object_list(got, [f"to {r}" for r in range(n)] if rank == n - 1 else None, src=n - 1)
    assert got == [f"to {rank}"]


def check_barriers_and_errors(rank, n):
    import hcomm.torch

    dist.barrier()
    hcomm.torch.monitored_barrier(wait_all_ranks=True)
    hcomm.torch.monitored_barrier()
    with pytest.raises(RuntimeError, match="hcomm allreduce: cannot reduce dtype torch.int16"):
        dist.all_reduce(torch.ones(3, dtype=torch.int16))
    with pytest.raises(RuntimeError, match="all_gather_into_tensor: output has"):
        dist.all_gather_into_tensor(torch.empty(n + 1), torch.ones(1))
    w = dist.all_reduce(torch.ones(3), async_op=True)
    assert w.wait() and w.is_completed()
    assert torch.equal(w.get_future().value()[0], torch.full((3,), float(n)))


def _same_calls(rank, n):
    """(name, fn(group) -> outputs) for calls whose results Gloo gives too."""
    x = data(rank, (SIZE,), seed=500)
    rows = [rank + j + 1 for j in range(n)]
    recv_rows = [j + rank + 1 for j in range(n)]

    def a2a(g):
        out = torch.empty(sum(recv_rows), 2)
        dist.all_to_all_single(out, data(rank, (sum(rows), 2), seed=501), recv_rows, rows, group=g)
        return out

    def inplace(fn, **kw):
        def call(g):
            t = x.clone()
            fn(t, group=g, **kw)
            return t
        return call

    def reduced(g):  # non-root tensors are scratch space in Gloo: compare the root only
        t = inplace(dist.reduce, dst=n - 1)(g)
        return t if rank == n - 1 else torch.zeros(0)

    def gathered(g):
        out = [torch.empty(SIZE) for _ in range(n)] if rank == 0 else None
        dist.gather(x, out, dst=0, group=g)
        return torch.cat(out) if rank == 0 else torch.zeros(0)

    def scattered(g):
        out = torch.empty(4)
        dist.scatter(out, [data(r, (4,), seed=502) for r in range(n)] if rank == n - 1 else None, src=n - 1, group=g)
        return out

    def tensor_gather(g):
        out = torch.empty(n * SIZE)
        dist.all_gather_into_tensor(out, x, group=g)
        return out

    def rs(g):
        out = torch.empty(3)
        dist.reduce_scatter_tensor(out, data(rank, (3 * n,), seed=503), op=dist.ReduceOp.MIN, group=g)
        return out

    def cplx(shape, seed):
        return torch.complex(data(rank, shape, seed=seed), data(rank, shape, seed=seed + 1))

    def complex_rs(g):  # complex sums run on the float view of the same memory
        out = torch.empty(3, dtype=torch.complex64)
        dist.reduce_scatter_tensor(out, cplx((3 * n,), 504), group=g)
        return out

    def complex_rs_list(g):
        out = torch.empty(2, dtype=torch.complex64)
        dist.reduce_scatter(out, [cplx((2,), 510 + 2 * b) for b in range(n)], group=g)
        return out

    def complex_reduce(g):
        t = cplx((5,), 506)
        dist.reduce(t, dst=0, group=g)
        return t if rank == 0 else torch.zeros(0, dtype=t.dtype)

    def objects(g):
        out = [None] * n
        dist.all_gather_object(out, {"r": rank, "v": list(range(rank))}, group=g)
        return torch.tensor([len(str(o)) for o in out])

    return [("all_reduce sum", inplace(dist.all_reduce)),
            ("all_reduce max", inplace(dist.all_reduce, op=dist.ReduceOp.MAX)),
            ("reduce", reduced), ("broadcast", inplace(dist.broadcast, src=n - 1)),
            ("all_gather_into_tensor", tensor_gather), ("reduce_scatter_tensor min", rs),
            ("all_to_all_single uneven", a2a), ("gather", gathered), ("scatter", scattered),
            ("all_gather_object", objects), ("reduce_scatter_tensor complex", complex_rs),
            ("reduce_scatter complex", complex_rs_list), ("reduce complex", complex_reduce)]


def check_same_as_gloo(rank, n):
    """The same calls on identical inputs through a Gloo group of the same ranks."""
    gloo = dist.new_group(list(range(n)), backend="gloo")
    for name, call in _same_calls(rank, n):
        mine, theirs = call(None), call(gloo)
        close(mine, theirs, f"{name}: hcomm vs gloo")
    dist.destroy_process_group(gloo)


def all_collectives(rank, n):
    for check in (check_allreduce, check_allreduce_coalesced, check_reduce_broadcast, check_allgather,
                  check_reduce_scatter, check_alltoall, check_gather_scatter, check_point_to_point,
                  check_objects, check_barriers_and_errors, check_same_as_gloo):
        check(rank, n)
    assert dist.get_backend() == "hcomm"
    return "ok"


def test_every_collective_world3():
    # worlds 2 and 4 run the same matrix in test_torch_backend_training.py, next to
    # the training checks, to spawn fewer worlds
    assert run_torch(all_collectives, 3, backend=BACKEND, timeout=JOB_TIMEOUT) == ["ok"] * 3
