"""The one-process layer profile (against the dense model and the tensor layers' own
collectives) and the planner's memory terms against parallel/zero/memory.py."""
import json
import subprocess
import sys
import textwrap

import pytest

from hcomm.parallel.plan import Cluster, memory_of_config, model_state
from hcomm.parallel.plan.profile import profile_gpt, shape_key

MODEL = {"vocab_size": 48, "seq_len": 12, "hidden": 40, "heads": 4, "n_layers": 3}


@pytest.fixture(scope="module")
def prof(tmp_path_factory):
    import os

    cache = tmp_path_factory.mktemp("plan-cache")
    old = os.environ.get("HCOMM_PLAN_CACHE")
    os.environ["HCOMM_PLAN_CACHE"] = str(cache)
    try:
        first = profile_gpt(MODEL, [(1, 3, False), (2, 3, False), (2, 3, True), (1, 5, False)], repeat=2)
        again = profile_gpt(MODEL, [(2, 3, False)], repeat=2)
    finally:
        if old is None:
            os.environ.pop("HCOMM_PLAN_CACHE")
        else:
            os.environ["HCOMM_PLAN_CACHE"] = old
    return first, again


def _dense_params():
    from hcomm.parallel.models import GPT, GPTConfig
    from hcomm.parallel.tensor import partition_dim

    model = GPT(GPTConfig(**MODEL))
    rows = []
    for layer in model.layers:
        named = list(layer.named_parameters())
        sharded = sum(p.numel() for n, p in named if partition_dim(layer, n) is not None)
        rows.append((sum(p.numel() for _, p in named), sharded))
    return rows


def test_shard_sizes_match_the_dense_model(prof):
    first, _ = prof
    dense = _dense_params()
    for tp in (1, 2):
        rows = first["shapes"][shape_key(tp, 3, False)]
        assert len(rows) == MODEL["n_layers"] + 2
        for row, (total, sharded) in zip(rows, dense):
            assert row["params"] == total - sharded + sharded // tp, row["name"]


def test_collectives_are_the_tensor_layers_own(prof):
    first, _ = prof
    mb, s, h = 3, MODEL["seq_len"], MODEL["hidden"]
    act = mb * s * h * 4
    dense = first["shapes"][shape_key(1, 3, False)]
    assert all(not r["fwd_collectives"] and not r["bwd_collectives"] for r in dense)
    block = first["shapes"][shape_key(2, 3, False)][1]
    # row-parallel outputs allreduce forward, column-parallel inputs allreduce backward
    assert block["fwd_collectives"] == [["allreduce", act, 2]] * 2
    assert block["bwd_collectives"] == [["allreduce", act, 2]] * 2
    sp_block = first["shapes"][shape_key(2, 3, True)][1]
    kinds = sorted(k for k, _, _ in sp_block["fwd_collectives"])
    assert kinds == ["allgather", "allgather", "reduce_scatter", "reduce_scatter"]
    assert all(n == act for _, n, _ in sp_block["fwd_collectives"])
    assert sp_block["out_bytes"] == act // 2                   # the residual stream is sequence-sharded


def test_saved_activations_grow_with_the_micro_batch_and_shrink_with_tp(prof):
    first, _ = prof
    b3, b5 = (first["shapes"][shape_key(1, mb, False)][1] for mb in (3, 5))
    assert b5["saved_bytes"] == pytest.approx(b3["saved_bytes"] * 5 / 3, rel=0.02)
    assert b5["out_bytes"] == b3["out_bytes"] * 5 // 3
    tp2 = first["shapes"][shape_key(2, 3, False)][1]
    assert tp2["saved_bytes"] < b3["saved_bytes"]
    assert all(r["fwd_s"] > 0 and r["bwd_s"] > 0 for r in first["shapes"][shape_key(1, 3, False)])


def test_the_profile_is_cached_per_machine_and_model(prof):
    first, again = prof
    assert first["measured_s"] > 0 and again["measured_s"] == 0
    assert again["shapes"][shape_key(2, 3, False)] == first["shapes"][shape_key(2, 3, False)]


_ZERO_PLAN = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from hcomm.parallel.zero import ZeroOptimizer
    n, stage = int(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=n)
    model = torch.nn.Sequential(torch.nn.Linear(37, 29), torch.nn.LayerNorm(29), torch.nn.Linear(29, 11))
    z = ZeroOptimizer(model, torch.optim.AdamW, stage=stage, group=dist.group.WORLD, print_plan=False, lr=1e-3)
    plan = z.memory_plan()
    print(json.dumps({"psi": z.psi, "k": z.state_bytes_per_element,
                      "rows": {r.name: r.formula_bytes for r in plan.rows}}))
""")


@pytest.mark.parametrize("n,stage", [(3, 1), (3, 2), (5, 3), (2, 3)])
def test_model_state_terms_are_memory_py_formulas(n, stage):
    proc = subprocess.run([sys.executable, "-c", _ZERO_PLAN, str(n), str(stage)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    mine = model_state(got["psi"], n, stage, 4, 0, got["k"])
    for name in ("parameters", "gradients", "master weights", "optimizer state"):
        assert mine[name] == pytest.approx(got["rows"][name]), name
    assert got["k"] == 8


def test_stage_zero_holds_what_plain_adamw_allocates():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(23, 17), torch.nn.Linear(17, 5))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 23)).sum().backward()
    opt.step()
    psi = sum(p.numel() for p in model.parameters())
    mine = model_state(psi, 3, 0, 4, 0, 8)
    assert mine["parameters"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert mine["gradients"] == sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    assert mine["optimizer state"] == sum(t.numel() * t.element_size() for s in opt.state.values()
                                          for t in s.values() if t.dim() > 0)


def test_memory_of_a_given_layout_without_processes(prof):
    first, _ = prof
    cfg = {"tensor_parallel_size": 2, "pipeline_stages": 2, "zero_stage": 1, "micro_batch_size": 3,
           "global_batch_size": 6, "model": MODEL, "train": {"schedule": "1f1b"}}
    mem = memory_of_config(cfg, Cluster.describe("hosts of 4 ranks"), profile=first)
    per_rank = mem["per_pp_rank"]
    assert len(per_rank) == 2
    dense = _dense_params()
    halves = [dense[:3], dense[3:]]       # 5 layers over 2 stages: 3 + 2
    for mem_r, layers in zip(per_rank, halves):
        psi = sum(t - s + s // 2 for t, s in layers)
        assert mem_r["parameters"] == 4 * psi and mem_r["optimizer state"] == 8 * psi   # dp = 1
    assert per_rank[0]["activations"] > 0 and mem["estimate"].memory == max(per_rank, key=lambda m: m["total"])


def test_the_step_bookkeeping_is_measured_for_every_zero_stage(prof):
    """overhead.py ran in the profile's child (a one-rank pipeline of tiny modules per ZeRO
    stage): every term is there, for every stage, and none is negative (no timing is
    asserted: the values depend on the machine and its load)."""
    first, again = prof
    over = first["overheads"]
    assert set(over) == {"microbatch_s", "unit_microbatch_s", "step_s", "unit_step_s"}
    for term in over.values():
        assert set(term) == {"0", "1", "2", "3"} and all(v >= 0 for v in term.values())
    assert first["piece_rep_s"] > 0 and again["overheads"] == over
    # the optimizer step per element by stage (optimizer_profile.py), measured in the same
    # child on each stage's real step: [per element of psi, per element of the shard]
    step = first["optimizer_step_s"]
    assert sorted(step) == ["0", "1", "2", "3"] and all(len(v) == 2 and min(v) >= 0 for v in step.values())
    assert step["0"][1] == 0.0 and step["2"][0] == 0.0 and step["3"][0] == 0.0
    assert step["0"][0] > 0 and step["2"][1] > 0 and again["optimizer_step_s"] == step


def test_a_layer_is_timed_by_its_own_work_not_by_waiting_for_a_core():
    """A rank of a loaded machine is taken off its core in the middle of a layer; the
    profile must time the layer's work, not that wait (the load of the moment is the
    calibration's factor). Here the wait is a sleep inside forward and backward, 20 ms
    each, against work of microseconds; a wall clock counted it (the wide GPT's block read
    17-36 ms backward at load 5-10 against 10 alone, so large micro-batches were
    over-priced)."""
    import time

    import torch
    from torch import nn

    from hcomm.parallel.plan.profile import profile_layers

    class Preempted(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            time.sleep(0.02)
            return x * 2

        @staticmethod
        def backward(ctx, g):
            time.sleep(0.02)
            return g * 2

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return Preempted.apply(x) * self.w

    rows = profile_layers([Layer()], torch.randn(3, 4), lambda y, t: ((y - t) ** 2).mean(), torch.zeros(3, 4),
                          repeat=2)
    assert rows[0]["fwd_s"] < 0.01 and rows[0]["bwd_s"] < 0.01, rows[0]


_SP_GRADS_CALLS = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from hcomm.parallel.models import GPT, GPTConfig
    from hcomm.parallel.plan.profile import CollectiveLog
    from hcomm.parallel.tensor import reduce_sequence_parallel_grads
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    model = GPT(GPTConfig(**json.loads(sys.argv[1])), group=dist.group.WORLD, sequence_parallel=True, seed=0)
    with CollectiveLog() as log:
        reduce_sequence_parallel_grads(model, dist.group.WORLD)
    print(json.dumps(log.calls))
""")


def test_sequence_parallel_pays_the_runtimes_one_gradient_allreduce_a_step(prof):
    """train_gpt.py sums the sequence-parallel replicated parameters' gradients over tp
    once a step (sp_grads.py): counted here from that code path on a fake process group,
    and the plan must price exactly that call. The old model had no such term."""
    from hcomm.parallel.plan import ModelShape, enumerate_candidates
    from hcomm.parallel.plan.cost import CostModel, Settings
    from hcomm.parallel.plan.pricing import Pricer

    proc = subprocess.run([sys.executable, "-c", _SP_GRADS_CALLS, json.dumps(MODEL)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    calls = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(kind, n) for kind, _, n in calls] == [("allreduce", 2)]
    cluster = Cluster.describe("1 hosts x 2 ranks, 2 cores per host")
    pricer = Pricer(cluster)
    model = CostModel(cluster, pricer, prof[0], Settings(3, budget=1 << 40))
    cand = next(c for c in enumerate_candidates(2, 3, ModelShape.gpt(MODEL), cluster.physical_order())
                if c.tp == 2 and c.sequence_parallel and c.pp == 1 and c.micro_batch_size == 3)
    est = model.estimate(cand)
    assert est.terms["sp grads (allreduce)"] == pytest.approx(pricer.collective("allreduce", calls[0][1], [[0, 1]]))
    assert est.terms["sp grads (allreduce)"] > 0


def test_the_forward_is_timed_with_autograd_recording_as_a_step_runs_it():
    """A training step runs each forward with autograd recording; work done only then
    (building the graph, saving tensors) is the forward's. The profile timed forward
    under no_grad, so that work landed in bwd_s (a GPT block's backward / forward 2.65 in
    the profile against 1.35 inside a dp1 pp4 step). Here a layer burns 20 ms of CPU in
    its forward when grad is enabled and nothing in its backward."""
    import time

    import torch
    from torch import nn

    from hcomm.parallel.plan.profile import profile_layers

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))

        def forward(self, x):
            if torch.is_grad_enabled():
                t0 = time.thread_time()
                while time.thread_time() - t0 < 0.02:
                    pass
            return x * self.w

    rows = profile_layers([Recording()], torch.randn(3, 4), lambda y, t: ((y - t) ** 2).mean(), torch.zeros(3, 4),
                          repeat=2)
    assert rows[0]["fwd_s"] >= 0.018 and rows[0]["bwd_s"] < 0.005, rows[0]


def test_w_s_is_the_split_backwards_weight_part_and_zero_without_linears():
    """w_s times wgrad.py's W (each plain nn.Linear's weight.grad.addmm_) on the layer: a
    layer of Linears has some, and so have the GPT's blocks and head (their column/row-
    parallel linears are split too), so a zero-bubble plan of that GPT has W to fill its
    bubble with; a LayerNorm, a Linear with a frozen weight and the GPT's embedding have
    exactly none. The profile leaves no gradient and no recorder behind."""
    import torch
    from torch import nn

    from hcomm.parallel.models import GPT, GPTConfig
    from hcomm.parallel.plan.profile import profile_layers

    frozen = nn.Linear(16, 16)
    frozen.weight.requires_grad_(False)
    gpt = GPT(GPTConfig(**MODEL), seed=0)
    plain = [nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16)), nn.LayerNorm(16), frozen]
    rows = profile_layers(plain, torch.randn(8, 16), lambda y, t: ((y - t) ** 2).mean(), torch.zeros(8, 16),
                          repeat=2)
    assert rows[0]["w_s"] > 0 and rows[1]["w_s"] == 0.0 and rows[2]["w_s"] == 0.0, rows
    assert all(p.grad is None for layer in plain for p in layer.parameters())
    ids = torch.randint(0, MODEL["vocab_size"], (2, MODEL["seq_len"]))
    from hcomm.parallel.models import gpt_loss

    gpt_rows = profile_layers(list(gpt.layers), ids, lambda o, t: gpt_loss(o, t, None), ids, repeat=1)
    assert gpt_rows[0]["w_s"] == 0.0 and all(r["w_s"] > 0 for r in gpt_rows[1:]), gpt_rows
    assert all(p.grad is None for p in gpt.parameters())
    assert all(getattr(m, "linear_recorder", None) is None for m in gpt.modules())
