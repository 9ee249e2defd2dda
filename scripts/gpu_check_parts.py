"""The parts of the device check (scripts/gpu_check.py runs each as its own process).

    python3 scripts/gpu_check_parts.py build | selftest | nccl1
    python3 scripts/gpu_check_parts.py pytest ARGS...
    python3 scripts/gpu_check_parts.py train ddp|fsdp2 OUT_DIR | bench OUT_DIR

Protocol with gpu_check.py: exit 0 passes, SKIP_RC (77) skips (with a "SKIP: why" line),
anything else fails; the last "RESULT: ..." line is what the summary shows.
Each part imports what it needs itself, so a missing package fails only its part.
"""
import glob
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_RC = 77
# "cpu" runs the ddp and bench parts' own logic on the CPU (gloo as the peer, host
# buffers): how tests/test_gpu_check.py checks this script where no GPU exists.
DEVICE = os.environ.get("HCOMM_GPU_CHECK_DEVICE", "cuda")
PEER = "nccl" if DEVICE == "cuda" else "gloo"


def result(text):
    print(f"RESULT: {text}", flush=True)


# ------------------------------------------------------------------ build
def build(_args):
    """hcomm._C in place with the CUDA kernels: setup.py when setuptools is there (the
    project's own build), else the same compile by hand (the lent image has no pip)."""
    env = dict(os.environ, HCOMM_WITH_CUDA="1", HCOMM_WITH_MPI="0", HCOMM_BUILD_JOBS=str(os.cpu_count() or 4))
    try:
        import setuptools  # noqa: F401
        how = "setup.py build_ext --inplace"
        subprocess.check_call([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env)
    except (ImportError, subprocess.CalledProcessError) as e:
        print(f"setup.py could not build ({e}); compiling directly", flush=True)
        how = f"direct compile (setup.py: {type(e).__name__})"
        build_direct()
    probe = ("import hcomm._C as C; c = C.build_config(); r = C.cuda_report(); "
             "assert c['with_cuda'], c; print(c, r)")
    out = subprocess.check_output([sys.executable, "-c", probe], cwd=ROOT, text=True)
    print(out.strip())
    result(f"{how}: {out.strip()}")
    return 0


def _cuda_home():
    nvcc = shutil.which("nvcc")
    guesses = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    if nvcc:
        guesses.insert(1, os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    guesses += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for g in guesses:
        if g and os.path.exists(os.path.join(g, "lib64", "libcudart_static.a")):
            return g
    raise RuntimeError(f"no CUDA toolkit with lib64/libcudart_static.a among {guesses}")


def build_direct(out_dir=None):
    """What setup.py does (its flags, with MPI off and CUDA on), without setuptools:
    g++ for csrc/**/*.cc, nvcc for csrc/**/*.cu, one shared object hcomm/_C<suffix>."""
    import pybind11

    home = _cuda_home()
    nvcc = shutil.which("nvcc") or os.path.join(home, "bin", "nvcc")
    obj_dir = out_dir or os.path.join(ROOT, "build", "gpu_check")
    os.makedirs(obj_dir, exist_ok=True)
    defines = ["-DHCOMM_WITH_MPI=0", "-DHCOMM_WITH_CUDA=1"]
    incs = ["-Icsrc", "-I" + pybind11.get_include(), "-I" + sysconfig.get_paths()["include"]]
    archs = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
             "-gencode", "arch=compute_90,code=compute_90"]
    jobs = []
    for src in sorted(glob.glob("csrc/**/*.cc", recursive=True)):
        if "/tests/" in src or src.endswith("transport/mpi.cc"):
            continue
        obj = os.path.join(obj_dir, src.replace("/", "_") + ".o")
        jobs.append(["g++", "-c", src, "-o", obj, "-O3", "-std=c++17", "-fPIC", "-fvisibility=hidden",
                     "-Wno-unused-function", *defines, *incs])
    for src in sorted(glob.glob("csrc/**/*.cu", recursive=True)):
        obj = os.path.join(obj_dir, src.replace("/", "_") + ".o")
        jobs.append([nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-Icsrc", "-Xcompiler",
                     "-fPIC,-fvisibility=hidden", "-DHCOMM_WITH_CUDA=1", *archs])

    def compile_one(cmd):
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)}\n{done.stderr[-3000:]}")
        return cmd[cmd.index("-o") + 1]

    with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
        objects = list(pool.map(compile_one, jobs))
    target = os.path.join(ROOT, "hcomm", "_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    link = ["g++", "-shared", "-o", target, *objects, os.path.join(home, "lib64", "libcudart_static.a"),
            "-lpthread", "-ldl", "-lrt", "-Wl,--exclude-libs,libcudart_static.a"]
    subprocess.check_call(link, cwd=ROOT)
    return target


# ------------------------------------------------------------------ kernels
def selftest(_args):
    from hcomm import _C

    if not _C.build_config()["with_cuda"] or not hasattr(_C, "cuda_self_test"):
        print("hcomm._C was built without the CUDA kernels")
        return 1
    report = _C.cuda_report()
    print(report)
    failures = _C.cuda_self_test()
    for f in failures:
        print("mismatch:", f)
    result(f"{len(failures)} mismatches against the CPU kernels; {report}")
    return 1 if failures else 0


# ------------------------------------------------------------------ pytest
class _Counts:
    """Outcomes of the test calls (a skipped test counts once, at setup)."""

    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed += 1
        elif report.skipped:
            self.skipped += 1
        elif report.when == "call":
            self.passed += 1


def run_pytest(args):
    """pytest ARGS; on a device, a run where nothing passed is a failure (every test
    skipped means something the device needs is missing: say what)."""
    import pytest

    counts = _Counts()
    rc = pytest.main(["-q", "-rA", "-p", "no:cacheprovider", *args], plugins=[counts])
    result(f"{counts.passed} passed, {counts.failed} failed, {counts.skipped} skipped (pytest exit {int(rc)})")
    if rc == 0 and counts.passed == 0:
        print("nothing passed: every test was skipped (see the reasons above)")
        return 1
    return int(rc)


# ------------------------------------------------------------------ NCCL at world size 1
def nccl1(_args):
    """NCCL at world size 1 through the Communicator: algo="native" on CUDA tensors must
    run on its NCCL engine (device_engine() == "nccl", NCCL's call count up by one per
    call) and be right; hcomm's ring on the same communicator must agree; explain() must
    list NCCL's price as measured at set-up beside hcomm's algorithms."""
    import numpy as np
    import torch

    import hcomm
    import hcomm.gpu as gpu
    from hcomm import _C

    torch.cuda.set_device(0)
    rng = np.random.default_rng(5)
    host = rng.standard_normal(10007).astype(np.float32)
    code, text, path = gpu.nccl_version()
    comm = hcomm.init(rank=0, size=1, unique_id="", timeout=60)
    checks = []
    try:
        for algo in ("native", "ring"):
            y = torch.from_numpy(host).cuda()
            before = _C._comm_device_native_calls(comm._c)
            comm.allreduce(y, algo=algo)
            torch.cuda.synchronize()
            ran_native = _C._comm_device_native_calls(comm._c) - before == 1
            checks.append((f"allreduce {algo}", np.array_equal(y.cpu().numpy(), host) and
                           ran_native == (algo == "native")))
        b = torch.from_numpy(host).cuda()
        comm.broadcast(b, root=0, algo="native")
        g = torch.empty(host.size, device="cuda")
        comm.allgather(torch.from_numpy(host).cuda(), g, algo="native")
        torch.cuda.synchronize()
        checks += [("broadcast", np.array_equal(b.cpu().numpy(), host)),
                   ("allgather", np.array_equal(g.cpu().numpy(), host)),
                   ("engine", comm._c.device_engine() == "nccl")]
        table = hcomm.explain("allreduce", 64 << 20, comm=comm)
        print(table)
        checks.append(("explain lists native", "native" in [c.algo for c in table.candidates]))
    except Exception as e:  # noqa: BLE001 - reported; the part fails
        checks.append((f"{type(e).__name__}: {e}", False))
    finally:
        comm.close()
    bad = [name for name, ok in checks if not ok]
    result(f"Communicator with NCCL {text} ({path}) at world size 1: {len(checks) - len(bad)}/{len(checks)} correct"
           f"{' (wrong: ' + ', '.join(bad) + ')' if bad else ''}")
    return 1 if bad else 0


# ------------------------------------------------------------------ DDP
DDP_STEPS, DDP_WARMUP = 30, 5
# World size 1: DDP's allreduce is an identity and its division by 1 exact, so the three
# runs differ only where a kernel is not deterministic (none is, with the setting below).
DDP_TOLERANCE = 1e-5


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync():
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def train_run(args):
    """One training run on cuda:0 (a child of `train`): WRAP ddp or fsdp2 on BACKEND
    (hcomm, nccl), or local (no wrapper, no process group). Writes the final parameters,
    the losses and the median step time to OUT."""
    wrap, backend, out = args
    import torch
    import torch.distributed as dist

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(0)
    dev = torch.device(DEVICE, 0) if DEVICE == "cuda" else torch.device("cpu")
    if DEVICE == "cuda":
        torch.cuda.set_device(dev)
    model = torch.nn.Sequential(torch.nn.Linear(96, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                torch.nn.ReLU(), torch.nn.Linear(512, 11)).to(dev)
    net = model
    if wrap != "local":
        if backend == "hcomm":
            import hcomm.torch  # noqa: F401 - registers the backend
        dist.init_process_group(backend, rank=0, world_size=1)
        if wrap == "ddp":
            ids = [dev.index] if DEVICE == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=1)
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(96, 11, generator=gen)  # labels a model can learn, so the loss must fall
    inputs = [torch.randn(64, 96, generator=gen) for _ in range(DDP_STEPS)]
    batches = [(x, (x @ teacher).argmax(1)) for x in inputs]
    losses, times = [], []
    for i, (xb, yb) in enumerate(batches):
        xb, yb = xb.to(dev), yb.to(dev)
        _sync()
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xb), yb)
        loss.backward()
        opt.step()
        _sync()
        if i >= DDP_WARMUP:
            times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]  # FSDP2: DTensors
    torch.save({"params": [p.detach().cpu() for p in params], "losses": losses,
                "step_ms": statistics.median(times) * 1e3}, out)
    if wrap != "local":
        dist.destroy_process_group()
    return 0


def _train_once(wrap, backend, out):
    """Run train-run in a fresh process (one process group each); its saved dict, or None."""
    import torch

    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
               LOCAL_RANK="0", CUBLAS_WORKSPACE_CONFIG=":4096:8")
    try:
        done = subprocess.run([sys.executable, __file__, "train-run", wrap, backend, out], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=100)
    except subprocess.TimeoutExpired as e:
        print(f"--- {wrap} {backend}: timed out after {e.timeout} s\n{e.stdout or ''}{e.stderr or ''}")
        return None
    print(f"--- {wrap} {backend}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return torch.load(out) if done.returncode == 0 else None


def train(args):
    """WRAP (ddp or fsdp2) on cuda with backend "hcomm" against "nccl" (world size 1) and
    against the same model trained in one process without a wrapper: the parameters after
    DDP_STEPS steps. Also judged: the hcomm run's loss went down (it trained)."""
    wrap, out_dir = args
    runs = {}
    for backend in ("local", PEER, "hcomm"):
        out = os.path.join(out_dir, f"{wrap}_{backend}.pt")
        runs[backend] = _train_once("local" if backend == "local" else wrap, backend, out)
        if runs[backend] is None:
            result(f"the {wrap} run on {backend} failed")
            return 1
    lines, worst = [], 0.0
    for a, b in (("hcomm", "local"), (PEER, "local"), ("hcomm", PEER)):
        diff = max(float((p - q).abs().max()) for p, q in zip(runs[a]["params"], runs[b]["params"]))
        worst = max(worst, diff)
        lines.append(f"max |param difference| {a} vs {b}: {diff:.3g}")
    for name, r in runs.items():
        lines.append(f"{name:6} median step {r['step_ms']:.3f} ms, loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}")
    ratio = runs["hcomm"]["step_ms"] / runs[PEER]["step_ms"]
    lines.append(f"step time hcomm / {PEER} = {ratio:.3f} (the issue's bound against nccl: <= 1.10; a benchmark, "
                 "not judged here)")
    text = "\n".join([f"# {wrap} on {DEVICE}, world size 1"] + lines)
    with open(os.path.join(out_dir, "train.txt"), "a") as f:
        f.write(text + "\n")
    print(text)
    ok = worst <= DDP_TOLERANCE and runs["hcomm"]["losses"][-1] < runs["hcomm"]["losses"][0]
    result(f"worst parameter difference {worst:.3g} (tolerance {DDP_TOLERANCE}); hcomm/{PEER} step {ratio:.3f}")
    return 0 if ok else 1


# ------------------------------------------------------------------ bench
BENCH_MAX = int(os.environ.get("HCOMM_GPU_CHECK_BENCH_MAX", 256 << 20))


def copy_rate(nbytes=BENCH_MAX, iters=20):
    """The device's own copy rate: nbytes copied per second (each byte read once and
    written once), over `iters` copies of one buffer into another on the device."""
    import torch

    a = torch.empty(nbytes, dtype=torch.uint8, device=DEVICE)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    _sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        b.copy_(a)
    _sync()
    seconds = (time.perf_counter() - t0) / iters
    del a, b
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return nbytes / seconds / 1e9


def bench(args):
    """hcomm-bench allreduce on device buffers, 2 ranks on the one GPU, 8 B to 256 MiB
    (torch's nccl as --compare: it refuses two ranks on one GPU, and says so), with the
    copy rate measured in the same run and the ratio the issue bounds (>= 0.4)."""
    (out_dir,) = args
    import json

    rate = copy_rate()
    path = os.path.join(out_dir, "bench.json")
    cmd = [sys.executable, "-m", "hcomm.bench", "allreduce", "--device", DEVICE, "--ranks", "2", "-b", "8",
           "-e", str(BENCH_MAX), "--compare", PEER, "--timeout", "130", "--json", path]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=140)
    print(done.stdout, done.stderr[-4000:], sep="\n")
    lines = [f"$ {' '.join(cmd[1:])}", done.stdout.rstrip(),
             f"# {DEVICE} copy rate (torch copy_ of {BENCH_MAX} B into another buffer, bytes / s): {rate:.3g} GB/s"]
    ratio = None
    if os.path.exists(path):
        with open(path) as f:
            rows = json.load(f)["implementations"]["hcomm"]["rows"]
        top = [r for r in rows if r["size"] == BENCH_MAX]
        if top and top[0]["out_of_place"]:
            ratio = top[0]["out_of_place"]["bus_bw"] / rate
            lines.append(f"# busbw at {BENCH_MAX} B / copy rate = {ratio:.3f} "
                         "(the issue's bound: >= 0.4; a benchmark, not judged here)")
    with open(os.path.join(out_dir, "bench.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    result(f"hcomm-bench exit {done.returncode}; copy rate {rate:.3g} GB/s; "
           f"busbw({BENCH_MAX} B)/copy {'n/a' if ratio is None else f'{ratio:.3f}'}")
    return done.returncode


COMMANDS = {"build": build, "selftest": selftest, "pytest": run_pytest, "nccl1": nccl1, "train": train,
            "train-run": train_run, "bench": bench}


def main(argv):
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: gpu_check_parts.py {{{'|'.join(COMMANDS)}}} ARGS...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
