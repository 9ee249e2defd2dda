"""scripts/gpu_check.sh, the device check, on a machine without a GPU, and its part runner.

Here (no device) the script must report every part "skipped: no device ..." and exit 0,
quickly, without building anything; its summary must name every part. The runner that
judges parts on a GPU machine (pass / fail / skip / time-out / out of budget / not run
after a failed build) is exercised with small stand-in commands, so a failure on the
device turns into a non-zero exit as it must.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import gpu_check  # noqa: E402

SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def test_without_a_device_every_part_is_skipped_and_named(tmp_path):
    count, what = gpu_check.detect_device()
    if count:
        pytest.skip(f"a CUDA device is here ({what}): run scripts/gpu_check.sh by hand, it takes minutes")
    out = tmp_path / "out"
    proc = subprocess.run(["bash", SCRIPT, str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [p.name for p in gpu_check.parts(sys.executable, str(out))]
    assert len(names) == 9 and len(set(names)) == 9
    doc = json.loads((out / "summary.json").read_text())
    assert [p["name"] for p in doc["parts"]] == names
    for p in doc["parts"]:
        assert p["status"] == "skipped" and p["reason"].startswith("no device: "), p
    assert doc["failed"] == [] and doc["device"] == what
    md = (out / "summary.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "skipped" in line]
    assert [r.split("|")[1].strip() for r in rows] == names
    assert not (out / "logs").exists()  # nothing was run, nothing was built


def test_usage_error():
    proc = subprocess.run(["bash", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr


def _part(name, code, timeout=30, needs_build=True):
    return gpu_check.Part(name, f"stand-in {name}", (sys.executable, "-c", code), timeout, needs_build)


def test_runner_judges_each_part_and_fails_the_run(tmp_path):
    plan = [
        _part("build", "print('RESULT: built')", needs_build=False),
        _part("passes", "print('noise'); print('RESULT: 3 checks')"),
        _part("skips", f"print('SKIP: no NCCL here'); raise SystemExit({gpu_check.SKIP_RC})"),
        _part("fails", "print('RESULT: 2 wrong'); raise SystemExit(3)"),
        _part("hangs", "import time; print('started', flush=True); time.sleep(60)", timeout=1),
    ]
    outcomes = gpu_check.run_all(plan, str(tmp_path), budget=120)
    got = {o.name: (o.status, o.reason.splitlines()[0]) for o in outcomes}
    assert got == {"build": ("pass", "built"), "passes": ("pass", "3 checks"),
                   "skips": ("skipped", "no NCCL here"), "fails": ("fail", "exit 3; 2 wrong"),
                   "hangs": ("fail", "timed out after 1 s")}
    assert "started" in outcomes[-1].reason  # the log's tail comes with a failure
    assert (tmp_path / "logs" / "fails.log").read_text().splitlines()[-1] == "RESULT: 2 wrong"
    header = {"date": "d", "device": "1 x stand-in", "python": "3", "budget_s": 120.0, "took_s": 1.0}
    assert gpu_check.write_summary(str(tmp_path), outcomes, header) == 1
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["failed"] == ["fails", "hangs"]
    assert "FAILED: fails, hangs" in (tmp_path / "summary.md").read_text()


def test_a_failed_build_and_a_spent_budget_stop_later_parts(tmp_path):
    plan = [_part("build", "raise SystemExit(1)", needs_build=False), _part("after", "pass")]
    outcomes = gpu_check.run_all(plan, str(tmp_path), budget=60)
    assert [(o.status, o.reason) for o in outcomes][1] == ("fail", "not run: the build failed")
    plan = [_part("build", "import time; time.sleep(2)", needs_build=False), _part("late", "pass")]
    outcomes = gpu_check.run_all(plan, str(tmp_path), budget=gpu_check.MIN_SLICE + 1)
    assert outcomes[0].status == "pass"
    assert (outcomes[1].status, outcomes[1].reason) == ("fail", "not run: the run's budget of 11 s was spent")
    header = {"date": "d", "device": "x", "python": "3", "budget_s": 11.0, "took_s": 2.0}
    assert gpu_check.write_summary(str(tmp_path), outcomes, header) == 1


def test_passing_and_skipped_parts_exit_zero(tmp_path):
    plan = [_part("build", "pass", needs_build=False),
            _part("skips", f"print('SKIP: fine'); raise SystemExit({gpu_check.SKIP_RC})")]
    outcomes = gpu_check.run_all(plan, str(tmp_path), budget=60)
    header = {"date": "d", "device": "x", "python": "3", "budget_s": 60.0, "took_s": 1.0}
    assert gpu_check.write_summary(str(tmp_path), outcomes, header) == 0


def test_training_and_bench_parts_on_the_cpu(tmp_path):
    """The ddp, fsdp2 and bench parts' own logic (three training runs compared, the bench
    run and its table, the copy rate and the ratio) with HCOMM_GPU_CHECK_DEVICE=cpu: gloo
    stands in for nccl and host buffers for device ones. On a GPU the same code runs on cuda."""
    env = dict(os.environ, HCOMM_GPU_CHECK_DEVICE="cpu", HCOMM_GPU_CHECK_BENCH_MAX="4096", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT)
    helper = os.path.join(ROOT, "scripts", "gpu_check_parts.py")
    for part in (["train", "ddp"], ["train", "fsdp2"], ["bench"]):
        proc = subprocess.run([sys.executable, helper, *part, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "RESULT: " in proc.stdout
    train = (tmp_path / "train.txt").read_text()
    for wrap in ("ddp", "fsdp2"):
        section = train.split(f"# {wrap} on cpu, world size 1")[1].split("# ")[0]
        assert "hcomm vs local: 0" in section and "hcomm vs gloo" in section, train
    bench = (tmp_path / "bench.txt").read_text()
    assert "--device cpu" in bench and "# implementation: gloo  [ok]" in bench and "busbw at 4096 B" in bench, bench
