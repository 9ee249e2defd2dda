"""Every layout row of docs/parallel.md, ZeRO 1-3 at dp = 2 and 4, and checkpoints across the
mesh, on 4 ranks of the hcomm backend, against the single-process dense model.

One 4-process job (module fixture) trains every layout in turn with examples/train_gpt.py's
Trainer, in-process, so the process and backend start-up is paid once; each test below
then judges one part of its result. The dense reference is train_gpt.train_dense: the same
seed and batches in one process.
"""
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from harness import run_torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_gpt.py"
STEPS = 3
RTOL = 1e-4   # float32; the runs differ only in summation order (measured about 2e-6)
# docs/parallel.md's layout table, in its order, then the ZeRO stages it leaves out at dp = 2 and 4.
LAYOUTS = {
    "tp2-pp2-zero1": dict(tensor_parallel_size=2, pipeline_stages=2, zero_stage=1),
    "pp2-dp2-zero3": dict(tensor_parallel_size=1, pipeline_stages=2, zero_stage=3),
    "tp2-dp2-zero2": dict(tensor_parallel_size=2, pipeline_stages=1, zero_stage=2),
    "tp2-dp2-zero0": dict(tensor_parallel_size=2, pipeline_stages=1, zero_stage=0),
    "tp4-sp-zero2": dict(tensor_parallel_size=4, pipeline_stages=1, zero_stage=2, sequence_parallel=True),
    "pp2-dp2-vpp2-zero1": dict(tensor_parallel_size=1, pipeline_stages=2, virtual_pipeline_stages=2, zero_stage=1),
    "tp2-dp2-zero1": dict(tensor_parallel_size=2, pipeline_stages=1, zero_stage=1),
    "tp2-dp2-zero3": dict(tensor_parallel_size=2, pipeline_stages=1, zero_stage=3),
    "dp4-zero1": dict(tensor_parallel_size=1, pipeline_stages=1, zero_stage=1),
    "dp4-zero2": dict(tensor_parallel_size=1, pipeline_stages=1, zero_stage=2),
    "dp4-zero3": dict(tensor_parallel_size=1, pipeline_stages=1, zero_stage=3),
    # sequence parallelism without ZeRO: the trainer sums the replicated gradients over tp itself
    "tp2-dp2-sp-zero0": dict(tensor_parallel_size=2, pipeline_stages=1, zero_stage=0, sequence_parallel=True),
    # the zero-bubble schedules (split backward, so ZeRO 0 or 1); zb-v's loss sits on pp rank 0
    "pp2-dp2-zbh1-zero1": dict(tensor_parallel_size=1, pipeline_stages=2, zero_stage=1, schedule="zb-h1"),
    "pp2-dp2-vpp2-zbv-zero1": dict(tensor_parallel_size=1, pipeline_stages=2, virtual_pipeline_stages=2,
                                   zero_stage=1, schedule="zb-v"),
}
# Checkpoint: saved at SAVE after CKPT_STEPS steps, loaded at each of LOAD (zero stage varied too).
SAVE = dict(tensor_parallel_size=2, pipeline_stages=2, zero_stage=1)
LOAD = {"tp1-pp2-dp2": dict(tensor_parallel_size=1, pipeline_stages=2, zero_stage=1),
        "tp1-pp1-dp4": dict(tensor_parallel_size=1, pipeline_stages=1, zero_stage=3)}
CKPT_STEPS = 2
LR = 3e-3   # examples/train_gpt.py's train.lr (checked in the test)
STATE_KEYS = ("master", "exp_avg", "exp_avg_sq")


def example():
    spec = importlib.util.spec_from_file_location("train_gpt", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def config(layout: dict, **model) -> dict:
    cfg = json.loads(json.dumps(example().CONFIG))
    cfg.pop("parallel_strategy")
    layout = dict(layout)
    if "schedule" in layout:
        cfg["train"]["schedule"] = layout.pop("schedule")
    cfg.update(layout)
    cfg["model"].update(model)
    cfg["train"]["steps"] = STEPS
    return cfg


def _trainer(mod, cfg):
    from hcomm.parallel.mesh import ParallelConfig, build_mesh

    pcfg = ParallelConfig.from_config(cfg, dist.get_world_size())
    return mod.Trainer(cfg, pcfg, build_mesh(pcfg), verbose=False)


def _checkpoint_job(mod, root):
    from hcomm.parallel.checkpoint import load_checkpoint, save_checkpoint
    from hcomm.parallel.zero.checkpoint import save_sharded

    out = {}
    t = _trainer(mod, config(SAVE))
    for step in range(CKPT_STEPS):
        t.step(step)
    save_checkpoint(f"{root}/saved", t.mesh, t.zopt, t.specs)
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        save_checkpoint(f"{root}/saved", t.mesh, t.zopt, t.specs)
    try:   # the old failure: four dp groups (of one rank) saving into one directory
        save_sharded(t.zopt, f"{root}/one-dir")
        out["plain"] = "saved"
    except FileExistsError as e:
        out["plain"] = str(e)
    for name, layout in LOAD.items():
        t = _trainer(mod, config(layout))
        load_checkpoint(f"{root}/saved", t.mesh, t.zopt, t.specs)
        save_checkpoint(f"{root}/{name}", t.mesh, t.zopt, t.specs)   # what was loaded, for the test to read
        out[name] = t.step(CKPT_STEPS)                               # and training goes on from it
    for model, err in (({"hidden": 96}, ValueError), ({"n_layers": 5}, KeyError)):
        t = _trainer(mod, config(LOAD["tp1-pp1-dp4"], **model))
        with pytest.raises(err) as info:
            load_checkpoint(f"{root}/saved", t.mesh, t.zopt, t.specs)
        out[f"mismatch {model}"] = str(info.value)
    return out


def _job(rank, world_size, root):
    torch.set_num_threads(1)   # four ranks share two cores
    mod = example()
    losses = {}
    for name, layout in LAYOUTS.items():
        t = _trainer(mod, config(layout))
        assert t.schedule.name == layout.get("schedule", t.schedule.name), (name, t.schedule.name)
        losses[name] = [t.step(step) for step in range(STEPS)]
    return losses, _checkpoint_job(mod, root)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("mesh")
    results = run_torch(_job, 4, args=(str(root),), timeout=600)
    return root, results


@pytest.fixture(scope="module")
def dense():
    """The dense model's losses over STEPS steps, and its state after CKPT_STEPS."""
    mod = example()
    losses = mod.train_single(config({}), log=lambda msg: None)
    _, model, opt = mod.train_dense(config({}), log=lambda msg: None, steps=CKPT_STEPS)
    state = {"master": {n: p.detach() for n, p in model.named_parameters()}}
    for key in STATE_KEYS[1:]:
        state[key] = {n: opt.state[p][key] for n, p in model.named_parameters()}
    return losses, state


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_dense(job, dense, layout):
    _, results = job
    ref = dense[0]
    for rank, (losses, _) in enumerate(results):
        assert losses[layout] == pytest.approx(ref, rel=RTOL), (layout, rank)
    assert ref[-1] < ref[0]   # it trains


def test_checkpoint_files_carry_coordinates(job):
    root, results = job
    saved = Path(root) / "saved"
    parts = sorted(p.name for p in saved.iterdir() if p.is_dir())
    assert parts == ["pp00-tp00", "pp00-tp01", "pp01-tp00", "pp01-tp01"]
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["mesh"] == {"pp": 2, "dp": 1, "tp": 2}
    for part in parts:
        shard = torch.load(saved / part / "shard-00000-of-00001.pt", weights_only=True)
        assert shard["coords"] == {"pp": int(part[2:4]), "tp": int(part[7:9]), "dp": 0}
    plain = [out["plain"] for _, out in results]
    assert plain.count("saved") == 1, plain   # one dp group wins the directory; the others raise
    assert all("would overwrite" in p for p in plain if p != "saved"), plain


def test_checkpoint_equals_dense_model_and_optimizer(job, dense):
    """The consolidated checkpoint is the dense model's state after the same steps.

    Not bit for bit: AdamW's first steps move a weight by about lr whatever its gradient's
    size, so where a gradient is near zero a float32 summation-order difference moves it by
    a part of lr (seen: 0.13 lr), and the next step's gradients (hence the moments) follow.
    That touches a few elements in ten thousand; a wrong shard, dim or key would be off by
    the values' own size almost everywhere. So: nearly all elements tight, all of them near.
    """
    from hcomm.parallel.checkpoint import consolidate

    root, _ = job
    assert config({})["train"]["lr"] == LR
    got = consolidate(str(Path(root) / "saved"), STATE_KEYS)
    off, total = 0, 0
    for key in STATE_KEYS:
        assert sorted(got[key]) == sorted(dense[1][key])
        for name, want in dense[1][key].items():
            diff = (got[key][name] - want).abs()
            scale = want.abs().max().item()
            tight, near = (1e-5, CKPT_STEPS * LR) if key == "master" else (1e-4 * scale, 0.05 * scale)
            assert diff.max() <= near, (key, name, diff.max().item(), near)
            off, total = off + int((diff > tight).sum()), total + diff.numel()
    assert off <= 1e-3 * total, f"{off} of {total} elements differ from the dense model's beyond the tight bound"


@pytest.mark.parametrize("target", list(LOAD))
def test_checkpoint_reshards_across_tp_pp_dp(job, dense, target):
    """Loaded at another mesh, the state is the consolidated checkpoint's, bit for bit, and
    the next step's loss is the dense model's."""
    from hcomm.parallel.checkpoint import consolidate

    root, results = job
    want = consolidate(str(Path(root) / "saved"), STATE_KEYS)
    got = consolidate(str(Path(root) / target), STATE_KEYS)
    for key in STATE_KEYS:
        assert sorted(got[key]) == sorted(want[key])
        for name in want[key]:
            assert torch.equal(got[key][name], want[key][name]), (key, name)
    for _, out in results:
        assert out[target] == pytest.approx(dense[0][CKPT_STEPS], rel=RTOL)


def test_checkpoint_of_another_model_raises_naming_the_key(job):
    _, results = job
    for _, out in results:
        assert "parameter 'layers.0.pos' (local '0.layers.0.pos'): dense shape [32, 96] here " \
               "(shard [32, 96] x tp 1), [32, 64] in the checkpoint" in out["mismatch {'hidden': 96}"], out
        assert "parameter 'layers.5.ln1.weight' is not in checkpoint" in out["mismatch {'n_layers': 5}"], out
