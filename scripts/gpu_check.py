"""The device check behind scripts/gpu_check.sh: run each part, bounded, write one summary.

    python3 scripts/gpu_check.py OUT_DIR

Each part is a command run from the repository root in its own process group, with a
time limit (its own, cut to what is left of the whole run's budget) and its output in
OUT_DIR/logs/<part>.log. A part passes when it exits 0, is skipped when it exits
SKIP_RC (its last "SKIP: " line says why), and fails otherwise (the tail of its log is
the reason). Its last "RESULT: " line is shown in the summary.

Written to OUT_DIR: summary.md (a table of parts with status, seconds and reason, then
the bench table and the DDP / FSDP2 figures) and summary.json (the same, for machines).
Exit status: 0 when no part failed (skipped parts included), 1 otherwise.

Without a CUDA device every part is skipped, "no device: <why>", and nothing is built.
This file uses only the standard library so that it runs on any python3.
"""
import ctypes
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join("scripts", "gpu_check_parts.py")
SKIP_RC = 77
# The whole run must fit in 8 minutes of a lent machine, start-up excluded.
DEFAULT_BUDGET = 450.0
# A part that would get less than this is not started (it could not finish).
MIN_SLICE = 10.0


@dataclass(frozen=True)
class Part:
    name: str
    what: str                  # one line for the summary
    argv: tuple                # run from the repository root
    timeout: float             # seconds, before the budget cuts it
    needs_build: bool = True   # not started when the build failed
    env: dict = field(default_factory=dict)


@dataclass
class Outcome:
    name: str
    what: str
    status: str                # "pass", "fail", "skipped"
    seconds: float
    reason: str


def parts(py, out_dir):
    """Every part, in the order they run. `py` is the interpreter that runs them."""
    helper = [py, HELPER]
    pytest = helper + ["pytest"]
    return [
        Part("build", "hcomm._C built in place with CUDA kernels (HCOMM_WITH_CUDA=1)",
             tuple(helper + ["build"]), 200, needs_build=False),
        Part("kernel_self_test", "hcomm._C.cuda_self_test(): CUDA kernels bit for bit against the CPU kernels",
             tuple(helper + ["selftest"]), 60),
        Part("gpu_tests", "pytest -m gpu tests/test_gpu_device.py (kernels vs numpy, NCCL in the Communicator)",
             tuple(pytest + ["-m", "gpu", "tests/test_gpu_device.py"]), 120),
        Part("cuda_ipc_2_ranks", "every collective, 2 ranks on the one GPU over cuda_ipc, against numpy",
             tuple(pytest + ["tests/test_gpu_collectives.py", "-k", "ranks2"]), 90),
        Part("cuda_ipc_4_ranks", "every collective, 4 ranks on the one GPU over cuda_ipc, against numpy",
             tuple(pytest + ["tests/test_gpu_collectives.py", "-k", "ranks4"]), 120),
        Part("nccl_world_1", "NCCL at world size 1 (see its RESULT line for which path ran)",
             tuple(helper + ["nccl1"]), 60),
        Part("ddp_cuda", 'DDP on cuda: backend "hcomm" vs "nccl" (world size 1) vs one process without DDP',
             tuple(helper + ["train", "ddp", out_dir]), 120),
        Part("bench_allreduce", "hcomm-bench allreduce --device cuda, 2 ranks on one GPU, 8 B to 256 MiB, "
             "beside the GPU's device-to-device copy rate",
             tuple(helper + ["bench", out_dir]), 150),
        # last: the issue asks for FSDP2 on cuda too; the budget cuts it first
        Part("fsdp2_cuda", 'FSDP2 fully_shard on cuda: "hcomm" vs "nccl" (world size 1) vs one process',
             tuple(helper + ["train", "fsdp2", out_dir]), 120),
    ]


# ------------------------------------------------------------------ the device
def detect_device():
    """(number of CUDA devices, why there are none or the first one's name), through the
    driver library alone: no torch import, no context, nothing for a later fork to trip on."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return 0, f"no CUDA driver ({e})"
    rc = cuda.cuInit(0)
    if rc != 0:
        return 0, f"cuInit failed with CUDA driver error {rc}"
    n = ctypes.c_int()
    rc = cuda.cuDeviceGetCount(ctypes.byref(n))
    if rc != 0 or n.value == 0:
        return 0, f"the CUDA driver sees no device (cuDeviceGetCount: error {rc}, count {n.value})"
    dev, name = ctypes.c_int(), ctypes.create_string_buffer(256)
    if cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0 and cuda.cuDeviceGetName(name, 256, dev) == 0:
        return n.value, name.value.decode(errors="replace")
    return n.value, "an unnamed CUDA device"


# ------------------------------------------------------------------ running parts
def _tail(text, lines=25):
    return "\n".join(text.strip().splitlines()[-lines:])


def _last(prefix, text):
    hits = [line[len(prefix):].strip() for line in text.splitlines() if line.startswith(prefix)]
    return hits[-1] if hits else None


def run_part(part, env, log_dir, seconds):
    """Run one part for at most `seconds`; its Outcome."""
    log_path = os.path.join(log_dir, part.name + ".log")
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(part.argv)}\n")
        log.flush()
        proc = subprocess.Popen(part.argv, cwd=ROOT, env={**env, **part.env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and every rank it started
            proc.wait()
            rc = None
    took = time.monotonic() - start
    with open(log_path, errors="replace") as f:
        text = f.read()
    if rc is None:
        return Outcome(part.name, part.what, "fail", took, f"timed out after {seconds:.0f} s\n{_tail(text, 10)}")
    if rc == SKIP_RC:
        return Outcome(part.name, part.what, "skipped", took, _last("SKIP:", text) or "skipped (no reason given)")
    result = _last("RESULT:", text)
    if rc == 0:
        return Outcome(part.name, part.what, "pass", took, result or "exit 0")
    return Outcome(part.name, part.what, "fail", took, f"exit {rc}" + (f"; {result}" if result else "")
                   + f"\n{_tail(text)}")


def run_all(plan, out_dir, budget, env=None):
    """Run `plan` (a list of Parts) within `budget` seconds; the Outcomes, in order."""
    env = dict(os.environ if env is None else env)
    log_dir = os.path.join(out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    deadline = time.monotonic() + budget
    built = True
    outcomes = []
    for part in plan:
        left = deadline - time.monotonic()
        if part.needs_build and not built:
            outcomes.append(Outcome(part.name, part.what, "fail", 0.0, "not run: the build failed"))
            continue
        if left < MIN_SLICE:
            outcomes.append(Outcome(part.name, part.what, "fail", 0.0,
                                    f"not run: the run's budget of {budget:.0f} s was spent"))
            continue
        outcome = run_part(part, env, log_dir, min(part.timeout, left))
        if part.name == "build" and outcome.status != "pass":
            built = False
        outcomes.append(outcome)
        print(f"[gpu_check] {outcome.name}: {outcome.status} ({outcome.seconds:.1f} s)", flush=True)
    return outcomes


def skipped_all(plan, reason):
    return [Outcome(p.name, p.what, "skipped", 0.0, reason) for p in plan]


# ------------------------------------------------------------------ the summary
def _read(path):
    if not os.path.exists(path):
        return None
    with open(path, errors="replace") as f:
        return f.read()


def write_summary(out_dir, outcomes, header):
    """summary.md and summary.json in out_dir; returns the exit status."""
    failed = [o.name for o in outcomes if o.status == "fail"]
    doc = dict(header, parts=[o.__dict__ for o in outcomes], failed=failed,
               bench=_read(os.path.join(out_dir, "bench.txt")), train=_read(os.path.join(out_dir, "train.txt")))
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(doc, f, indent=1)
    lines = [f"# hcomm device check, {header['date']}", "",
             f"- device: {header['device']}", f"- python: {header['python']}",
             f"- budget: {header['budget_s']:.0f} s, took {header['took_s']:.1f} s",
             f"- result: {'FAILED: ' + ', '.join(failed) if failed else 'no part failed'}", "",
             "| part | status | seconds | reason |", "|---|---|---|---|"]
    for o in outcomes:
        first = o.reason.splitlines()[0] if o.reason else ""
        lines.append(f"| {o.name} | {o.status} | {o.seconds:.1f} | {first.replace('|', '/')} |")
    lines.append("")
    for o in outcomes:
        lines += [f"## {o.name}: {o.status}", o.what, "", "```", o.reason, "```", ""]
    for title, key in (("hcomm-bench (device buffers)", "bench"), ("DDP and FSDP2 on cuda", "train")):
        if doc[key]:
            lines += [f"## {title}", "```", doc[key].rstrip(), "```", ""]
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    return 1 if failed else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: gpu_check.py OUT_DIR", file=sys.stderr)
        return 2
    out_dir = os.path.abspath(argv[0])
    os.makedirs(out_dir, exist_ok=True)
    budget = float(os.environ.get("HCOMM_GPU_CHECK_BUDGET", DEFAULT_BUDGET))
    start = time.monotonic()
    plan = parts(sys.executable, out_dir)
    count, device = detect_device()
    if count == 0:
        outcomes = skipped_all(plan, f"no device: {device}")
    else:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
                   HCOMM_TIMEOUT=os.environ.get("HCOMM_TIMEOUT", "60"))
        outcomes = run_all(plan, out_dir, budget, env)
    header = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": f"{count} x {device}" if count else device, "python": sys.version.split()[0],
              "budget_s": budget, "took_s": time.monotonic() - start}
    status = write_summary(out_dir, outcomes, header)
    for o in outcomes:
        print(f"{o.name:18} {o.status:8} {o.reason.splitlines()[0] if o.reason else ''}")
    print(f"summary: {os.path.join(out_dir, 'summary.md')}")
    return status


if __name__ == "__main__":
    sys.exit(main())
