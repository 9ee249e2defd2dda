"""Shared pieces of the planner tests.

synthetic_profile() stands in for the one-process layer profile (profile.py) where a test
is about the search or the costs rather than the measurement: each layer's times are
proportional to its multiply-adds divided by tp, and its collectives are the ones a
Megatron GPT block issues (two allreduces of the [mb, s, h] activation forward, two
backward; the embedding one forward, the head one backward). Where it differs from a
real profile: no sequence-parallel collectives (reduce-scatter / all-gather) and no
measured noise; test_plan_profile.py checks the real profile on its own.
"""
from hcomm.parallel.plan.profile import shape_key

MODEL = {"vocab_size": 64, "seq_len": 32, "hidden": 64, "heads": 4, "n_layers": 4}
SECONDS_PER_MAC = 1e-9


def _rows(model, tp, mb, sp):
    h, s, v, n = model["hidden"], model["seq_len"], model["vocab_size"], model["n_layers"]
    act = mb * s * h * 4
    ar = [["allreduce", act, tp]] if tp > 1 else []
    block_params = (12 * h * h + 9 * h) // tp + 4 * h
    block_macs = mb * s * (12 * h * h + 2 * s * h) / tp
    emb = {"fwd_s": mb * s * h * SECONDS_PER_MAC, "bwd_s": mb * s * h * SECONDS_PER_MAC, "saved_bytes": mb * s * 8,
           "out_bytes": act // (tp if sp else 1), "params": v * h // tp + s * h, "units": 2,
           "fwd_collectives": ar, "bwd_collectives": []}
    block = {"fwd_s": block_macs * SECONDS_PER_MAC, "bwd_s": 2 * block_macs * SECONDS_PER_MAC,
             "saved_bytes": 16 * act // tp, "out_bytes": act // (tp if sp else 1), "params": block_params,
             "units": 6, "fwd_collectives": ar * 2, "bwd_collectives": ar * 2}
    head_macs = mb * s * h * v / tp
    head = {"fwd_s": head_macs * SECONDS_PER_MAC, "bwd_s": 2 * head_macs * SECONDS_PER_MAC,
            "saved_bytes": act + mb * s * v * 4 // tp, "out_bytes": mb * s * v * 4 // tp, "params": v * h // tp + 2 * h,
            "units": 2, "fwd_collectives": [["allreduce", mb * s * 4, tp]] * 3 if tp > 1 else [],
            "bwd_collectives": ar}
    rows = [dict(emb, name="0:GPTEmbedding")] + [dict(block, name=f"{i + 1}:GPTBlock") for i in range(n)]
    return rows + [dict(head, name=f"{n + 1}:GPTHead")]


def synthetic_profile(model=MODEL, tps=(1, 2, 4, 8), mbs=range(1, 65)):
    shapes = {}
    for tp in tps:
        for mb in mbs:
            for sp in (False, True):
                shapes[shape_key(tp, mb, sp)] = _rows(model, tp, mb, sp)
    return {"shapes": shapes, "optimizer_s_per_element": 2e-9, "baseline_rss": 200 << 20, "measured_s": 0.0}
