"""scripts/gpu_check.sh, the device check, on a machine without a GPU, and its part runner.

Here (no device) the script must report every part "skipped: no device ..." and exit 0,
quickly, without building anything; its summary must name every part. The runner that
judges parts on a GPU machine (pass / fail / skip / time-out / out of budget / not run
after a failed build) is exercised with small stand-in commands, so a failure on the
device turns into a non-zero exit as it must.
"""
import ast
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


# ------------------------------------------------------------------ the scripts against the code
# gpu_check.py and gpu_check_parts.py run only where a GPU is lent, so nothing else notices
# when they name something that was renamed or removed. These tests read them (ast, no
# process, no device) and check every hcomm name and every test selection they use.
SCRIPTS = [os.path.join(ROOT, "scripts", name) for name in ("gpu_check.py", "gpu_check_parts.py")]
OURS = ("hcomm",)  # hcomm, hcomm._C, hcomm.gpu, hcomm.torch, ...


def _trees(path):
    """The script's tree, and the trees of the Python code it hands to a child as text
    (e.g. `python -c "import hcomm._C as C; ..."`), each with where it came from."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = [(tree, os.path.basename(path))]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import hcomm" in node.value:
            out.append((ast.parse(node.value), f"{os.path.basename(path)}:{node.lineno} (code in a string)"))
    return out


def _aliases(tree):
    """{local name: dotted hcomm module or attribute} from every import of hcomm in `tree`,
    and the imports themselves as (dotted name, where)."""
    names, imports = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in OURS:
                    imports.append((a.name, node.lineno))
                    names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
            for a in node.names:
                imports.append((f"{node.module}.{a.name}", node.lineno))
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names, imports


def _resolve(dotted):
    """The object a dotted hcomm name stands for (importing modules as Python would)."""
    import importlib

    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        if not hasattr(obj, part):  # a submodule not imported yet: import it
            importlib.import_module(".".join(parts[:i + 1]))
        obj = getattr(obj, part)
    return obj


def _chain(node):
    """Attribute chain a.b.c -> ("a", ["b", "c"]); None when it does not start at a name."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return (node.id, attrs[::-1]) if isinstance(node, ast.Name) else None


def _communicators(tree, names):
    """Local names bound to hcomm.init(...) (a Communicator)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            c = _chain(node.value.func)
            if c and names.get(c[0]) == "hcomm" and c[1] == ["init"]:
                out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return out


def _missing_names(path):
    """Every hcomm name `path` uses that does not exist, as 'where: name (why)'."""
    import hcomm
    from hcomm import _C

    missing = []
    for tree, where in _trees(path):
        names, imports = _aliases(tree)
        for dotted, line in imports:
            try:
                _resolve(dotted)
            except (ImportError, AttributeError) as e:
                missing.append(f"{where}:{line}: import {dotted} ({e})")
        comms = _communicators(tree, names)
        for node in ast.walk(tree):
            c = _chain(node) if isinstance(node, ast.Attribute) and not isinstance(node.value, ast.Attribute) else None
            if not c:
                continue
            base, (attr,) = c[0], c[1]
            if base in names:
                try:
                    _resolve(names[base])
                except (ImportError, AttributeError):
                    continue  # reported with its import
                try:
                    _resolve(f"{names[base]}.{attr}")  # an attribute, or a submodule not imported yet
                except (ImportError, AttributeError):
                    missing.append(f"{where}:{node.lineno}: {names[base]}.{attr}")
            elif base in comms and not hasattr(hcomm.Communicator, attr) and attr != "_c":
                missing.append(f"{where}:{node.lineno}: Communicator.{attr}")
        for node in ast.walk(tree):  # comm._c.NAME: a method of the core's communicator
            c = _chain(node) if isinstance(node, ast.Attribute) else None
            if c and c[0] in comms and len(c[1]) == 2 and c[1][0] == "_c" and not hasattr(_C.Communicator, c[1][1]):
                missing.append(f"{where}:{node.lineno}: hcomm._C.Communicator.{c[1][1]}")
    return missing


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_every_hcomm_name_the_scripts_use_exists(path):
    assert _missing_names(path) == []


def test_the_name_check_finds_a_removed_name(tmp_path):
    """The check itself: a script naming what does not exist is caught, in the file, in
    code handed to a child as text, and on a Communicator."""
    bad = tmp_path / "bad.py"
    bad.write_text("import hcomm\nfrom hcomm import _C\nimport hcomm.gpu as gpu\n"
                   "probe = 'import hcomm._C as C; C.no_such_probe()'\n"
                   "def f():\n    comm = hcomm.init()\n    comm._c.no_such_method()\n    comm.allreduce\n"
                   "    hcomm.no_such_function()\n    _C.cuda_report\n    gpu.no_such_gpu_name\n")
    got = _missing_names(str(bad))
    assert sorted(g.split(": ", 1)[1] for g in got) == ["hcomm._C.Communicator.no_such_method", "hcomm._C.no_such_probe",
                                                        "hcomm.gpu.no_such_gpu_name", "hcomm.no_such_function"], got


def _test_selections():
    """The pytest runs of the check: (argv after "pytest", part name)."""
    out = []
    for p in gpu_check.parts(sys.executable, "/nonexistent"):
        argv = list(p.argv)
        if "pytest" in argv:
            out.append((argv[argv.index("pytest") + 1:], p.name))
    return out


class _Collected:
    def __init__(self):
        self.items, self.errors = [], []

    def pytest_collection_finish(self, session):
        self.items = [i.nodeid for i in session.items]

    def pytest_collectreport(self, report):
        if report.failed:
            self.errors.append(str(report.longrepr)[-2000:])


def test_the_scripts_test_files_and_selections_exist():
    """Every tests/ file the scripts name exists, and each pytest run of the check
    collects at least one test with its -k / -m selection (collected in this process:
    pytest --collect-only, nothing runs)."""
    files = set()
    for path in SCRIPTS:
        for tree, _ in _trees(path):
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    files.update(w for w in node.value.split() if w.startswith("tests/") and w.endswith(".py"))
    selections = _test_selections()
    assert selections, "the check runs no pytest part"
    for args, _ in selections:
        files.update(a for a in args if a.startswith("tests/"))
    assert [f for f in sorted(files) if not os.path.exists(os.path.join(ROOT, f))] == []
    modules = set()  # `python -m hcomm.bench ...`: the modules the scripts run
    for path in SCRIPTS:
        for tree, _ in _trees(path):
            modules.update(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                           and n.value.startswith("hcomm.") and n.value.replace(".", "").replace("_", "").isalnum())
    assert "hcomm.bench" in modules
    import importlib.util

    assert [m for m in sorted(modules) if importlib.util.find_spec(m) is None] == []
    for args, name in selections:
        collected = _Collected()
        argv = [os.path.join(ROOT, a) if a.startswith("tests/") else a for a in args]
        rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", ROOT, *argv],
                         plugins=[collected])
        assert collected.errors == [] and collected.items, (name, args, int(rc), collected.errors)
