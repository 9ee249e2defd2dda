"""--validate K: run plans for a few steps with examples/train_gpt.py and set the measured
step time and memory beside the prediction. For trust only: the planner never needs it.

Each plan runs as `python -m torch.distributed.run --standalone --nproc-per-node N
examples/train_gpt.py --config <plan> --json <out>` on this machine (a multi-host
cluster is measured by benchmarks/planner_accuracy.py, which starts ranks in network
namespaces). Measured step = median of the steps after the first (the example's own
tokens/s rule); memory = the example's real parameter, gradient and optimizer bytes of
the fullest rank, and its peak RSS.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_gpt.py"


def example_path() -> Path:
    path = Path(os.environ.get("HCOMM_TRAIN_GPT", EXAMPLE))
    if not path.exists():
        raise FileNotFoundError(f"examples/train_gpt.py not found at {path} (set HCOMM_TRAIN_GPT)")
    return path


def launch_command(nproc: int, config_path: str, out_path: str, steps: int, backend: str = "hcomm",
                   check: bool = False) -> List[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(example_path()), "--backend", backend, "--config", config_path, "--steps", str(steps),
           "--json", out_path]
    return cmd + (["--check"] if check else [])


def measured_step(result: dict) -> float:
    timed = result["step_seconds"][1:] or result["step_seconds"]
    return statistics.median(timed)


def run_config(config: dict, nproc: int, steps: int = 6, timeout: float = 600, check: bool = False,
               launcher: Optional[List[str]] = None) -> dict:
    """Run one config on this machine; the example's --json result (plus 'stdout')."""
    with tempfile.TemporaryDirectory(prefix="hcomm-plan-") as tmp:
        cfg_path, out_path = os.path.join(tmp, "config.json"), os.path.join(tmp, "result.json")
        with open(cfg_path, "w") as f:
            json.dump(config, f)
        cmd = launch_command(nproc, cfg_path, out_path, steps, check=check)
        if launcher:
            cmd = launcher + cmd
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode or not os.path.exists(out_path):
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                               f"{proc.stderr[-2000:]}")
        with open(out_path) as f:
            result = json.load(f)
    result["stdout"] = proc.stdout
    return result


def validate(result, k: int, steps: int = 6, log=print) -> List[dict]:
    """Run the top k plans of a PlanResult; rows of predicted beside measured."""
    if len({h["name"] for h in result.cluster.hosts}) > 1:
        log("note: the cluster has several hosts; these runs start every rank on this machine, so the "
            "inter-host links are not the ones priced")
    rows = []
    for est in result.ranked[:k]:
        out = run_config(result.config(est), result.cluster.world_size, steps)
        meas = measured_step(out)
        row = {"plan": est.cand.name, "predicted_s": est.step_s, "measured_s": meas,
               "error": (est.step_s - meas) / meas, "predicted_peak": est.memory_total,
               "measured_peak_rss": max(out["peak_rss_bytes"])}
        rows.append(row)
        log(f"{row['plan']:<44} predicted {est.step_s * 1e3:8.2f} ms  measured {meas * 1e3:8.2f} ms  "
            f"({row['error']:+.0%})  peak predicted {est.memory_total / 2**20:7.1f} MiB  "
            f"measured RSS {row['measured_peak_rss'] / 2**20:7.1f} MiB")
    return rows
