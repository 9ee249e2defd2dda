"""examples/train_gpt.py as a user launches it: 4 ranks on the hcomm backend, loss curve
against the single-process run of the dense model (same seed, same batches)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_gpt.py"
RTOL = 1e-4      # float32, the runs differ only in summation order (measured: ~2e-6)
STEPS = 4


def _example():
    spec = importlib.util.spec_from_file_location("train_gpt", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _launch(launcher, tmp_path, *overrides):
    out = tmp_path / "result.json"
    cmd = launcher + [str(EXAMPLE), "--backend", "hcomm", "--steps", str(STEPS), "--check", "--json", str(out)]
    for o in overrides:
        cmd += ["--set", o]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout


def _check_curve(result, layout):
    assert result["layout"] == layout
    ref = _example().train_single(_config(), log=lambda msg: None)
    assert result["reference"] == pytest.approx(ref, rel=1e-6)           # the example's own reference
    assert result["losses"] == pytest.approx(ref, rel=RTOL)
    assert result["losses"][-1] < result["losses"][0]                    # it trains


def _config():
    mod = _example()
    cfg = json.loads(json.dumps(mod.CONFIG))
    cfg["train"]["steps"] = STEPS
    return cfg


def test_torchrun_tp2_pp2_zero1_matches_single_process(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    result, stdout = _launch(launcher, tmp_path)
    _check_curve(result, {"dp": 1, "tp": 2, "pp": 2, "zero_stage": 1})
    assert "per-rank memory" in stdout and "tokens/s" in stdout


# A second 4-process launch costs another ~60 s on a loaded 2-core machine, over this
# file's budget; HCOMM_TEST_SLOW=1 runs it (make demo runs the torchrun path every time).
@pytest.mark.skipif(os.environ.get("HCOMM_TEST_SLOW") != "1", reason="second launch: set HCOMM_TEST_SLOW=1")
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
def test_mpirun_dp2_pp2_zero3_matches_single_process(tmp_path):
    launcher = ["mpirun", "--oversubscribe", "--allow-run-as-root", "-np", "4", sys.executable]
    result, _ = _launch(launcher, tmp_path, "tensor_parallel_size=1", "zero_stage=3", "parallel_strategy=HYBRID")
    _check_curve(result, {"dp": 2, "tp": 1, "pp": 2, "zero_stage": 3})


def test_config_overrides_and_errors():
    mod = _example()
    cfg = mod.apply_overrides(mod.CONFIG, ["zero_stage=2", "model.hidden=96", "parallel_strategy=HYBRID"])
    assert (cfg["zero_stage"], cfg["model"]["hidden"], cfg["parallel_strategy"]) == (2, 96, "HYBRID")
    assert mod.CONFIG["zero_stage"] == 1                                 # the default is left alone
    with pytest.raises(ValueError, match="key=value"):
        mod.apply_overrides(mod.CONFIG, ["zero_stage"])
    with pytest.raises(ValueError, match="not a section"):
        mod.apply_overrides(mod.CONFIG, ["zero_stage.x=1"])
    from hcomm.parallel.mesh import ParallelConfig
    with pytest.raises(ValueError, match=r"tp\(2\) \* pp\(2\) = 4"):
        ParallelConfig.from_config(mod.CONFIG, 6)


def test_batches_are_deterministic_and_learnable():
    mod = _example()
    ids, targets = mod.batch(mod.CONFIG, 3)
    ids2, _ = mod.batch(mod.CONFIG, 3)
    assert ids.shape == (mod.CONFIG["global_batch_size"], mod.CONFIG["model"]["seq_len"])
    assert ids.equal(ids2) and not ids.equal(mod.batch(mod.CONFIG, 4)[0])
    assert ids[:, 1:].equal(targets[:, :-1])                             # targets are the next tokens
