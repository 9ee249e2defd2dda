"""The one-process layer profile: what each layer costs at each shard shape, measured once.

For every (tp, micro_batch_size, sequence_parallel) the planner may choose, one process
builds the model's tp shard and times each distinct entry of `model.layers` (the GPT's
blocks are all alike, so one is timed for all) on one thread:

    fwd_s, bwd_s     least forward and backward CPU seconds of one micro-batch (_time);
                     the forward with autograd recording, as a training step runs it
    w_s              least CPU seconds of the backward's W part as a zero-bubble schedule
                     runs it (wgrad.py: each nn.Linear's or column/row-parallel linear's
                     weight.grad.addmm_(g^T, x)); 0 for a layer without one (embeddings)
    saved_bytes      bytes autograd keeps for the backward (saved_tensors_hooks; the
                     parameters themselves are not counted): what a stashed micro-batch holds
    out_bytes        bytes of the layer's output: what a pipeline boundary sends
    params           trainable elements this tp rank holds
    units            modules that directly own parameters (ZeRO-3's gather units)
    sp_params        elements of the tp-replicated parameters that see a sequence shard
                     (their gradients are summed over tp once a step: sp_grads.py)
    collectives      every collective the layer's own code issues, forward and backward,
                     with its total bytes and group size

A tp shard needs a tp group, but no other process is started: the process joins torch's
"fake" backend (torch.testing._internal.distributed.fake_pg, the one torchtitan estimates
memory with) as rank 0 of a world of max(tp), so the layers build their real shard shapes
and their collectives return at once. Those collectives are counted (every
torch.distributed entry point the tensor layers use is wrapped for the profile) and priced
separately by hcomm's tuner. Because the fake backend changes this process's
torch.distributed state for good, `profile_gpt` runs the profile in a child process.

Cached per machine and model: ~/.cache/hcomm/plan/profile-<hash>.json (HCOMM_PLAN_CACHE
moves it), keyed by the hostname, CPU model, torch version, the model section, dtype and
the shapes asked for; a cached entry is reused shape by shape.
"""
import gc
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

_COLLECTIVES = {  # torch.distributed entry point -> the collective the tuner prices it as
    "all_reduce": "allreduce",
    "all_gather": "allgather",
    "all_gather_into_tensor": "allgather",
    "all_gather_single": "allgather",            # torch 2.13's name for the tensor form
    "reduce_scatter": "reduce_scatter",
    "reduce_scatter_tensor": "reduce_scatter",
    "reduce_scatter_single": "reduce_scatter",
    "broadcast": "broadcast",
}


def _nbytes(t):
    return t.numel() * t.element_size()


def _total_bytes(name, args, group_size):
    """Total bytes of a collective call as the tuner counts them (allgather: the gathered whole)."""
    import torch

    first, second = args[0], args[1] if len(args) > 1 else None
    if name == "all_gather":                 # (tensor_list, tensor)
        return _nbytes(second) * group_size
    if name in ("all_gather_into_tensor", "all_gather_single"):     # (output, input)
        return _nbytes(first)
    if name == "reduce_scatter":             # (output, input_list)
        return sum(_nbytes(t) for t in second)
    if name in ("reduce_scatter_tensor", "reduce_scatter_single"):  # (output, input)
        return _nbytes(second)
    return _nbytes(first) if torch.is_tensor(first) else 0


class CollectiveLog:
    """Wraps torch.distributed's collectives for the profile and records each call."""

    def __init__(self):
        self.calls, self._saved = [], {}

    def __enter__(self):
        import torch.distributed as dist

        for name in _COLLECTIVES:
            orig = getattr(dist, name)
            self._saved[name] = orig

            def wrapper(*args, _name=name, _orig=orig, **kw):
                group = kw.get("group")
                n = dist.get_world_size(group) if group is not None else dist.get_world_size()
                if n > 1:
                    self.calls.append((_COLLECTIVES[_name], _total_bytes(_name, args, n), n))
                return _orig(*args, **kw)
            setattr(dist, name, wrapper)
        return self

    def __exit__(self, *exc):
        import torch.distributed as dist

        for name, orig in self._saved.items():
            setattr(dist, name, orig)

    def take(self):
        out, self.calls = self.calls, []
        return out


def _saved_bytes(layer, x):
    """(output, bytes autograd saved for backward) of one forward, parameters excluded."""
    import torch

    params = {p.data_ptr() for p in layer.parameters()}
    seen, total = set(), [0]

    def pack(t):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if t.data_ptr() not in params and key not in seen:
            seen.add(key)
            total[0] += _nbytes(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    return out, total[0]


def _time(fn, repeat):
    """The least CPU time of this thread over `repeat` runs after a warm-up: the
    uninterrupted time. How the job's ranks share the machine is the calibration's factor
    (cost.py), so the profile must not carry the load of the moment. Wall-clock minima did:
    at load 5-8 on the 2-core machine a run longer than a scheduler slice was rarely
    uninterrupted in 5 tries, and the wide GPT's block backward at micro-batch 8 read 17,
    27 and 36 ms in three profiles against 10 alone (the plans with large micro-batches
    were over-priced). The profile runs on one thread (torch.set_num_threads(1); CPU
    autograd runs the backward on the calling thread), so this thread's CPU time is all
    of the work, page faults included, and none of the waiting for a core."""
    fn()                                  # warm-up: allocator, first-call dispatch
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return min(times)


def _signature(layer):
    return (type(layer).__name__, tuple((n, tuple(p.shape)) for n, p in layer.named_parameters()))


def _units(layer):
    return sum(1 for m in layer.modules() if any(True for _ in m.parameters(recurse=False)))


def profile_layers(layers, inputs, loss_fn, targets, repeat=5, log=None):
    """Profile every entry of `layers` fed in turn from `inputs` (one micro-batch);
    loss_fn(output, targets) is timed with the last layer. Identical layers are timed once.
    Returns one dict per layer (see the module docstring)."""
    import torch

    log = log if log is not None else CollectiveLog()
    rows, cache, x = [], {}, inputs
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        x_in = x.detach().requires_grad_(x.is_floating_point())
        sig = _signature(layer)
        if sig in cache and not last:
            row = dict(cache[sig])
            with torch.no_grad():
                x = layer(x_in)
        else:
            row, x = _profile_one(layer, x_in, loss_fn if last else None, targets, repeat, log)
            cache[sig] = row
        row["name"] = f"{i}:{type(layer).__name__}"
        rows.append(row)
    return rows


def _profile_one(layer, x_in, loss_fn, targets, repeat, log):
    import torch

    log.take()
    out, saved = _saved_bytes(layer, x_in)
    out_bytes = _nbytes(out)
    fwd_calls = log.take()

    def forward():
        # with autograd recording, as a training step runs it: under no_grad the graph's
        # building fell into bwd_s (a GPT block's backward / forward read 2.65 here
        # against 1.35 inside a dp1 pp4 step, the sum the same)
        return layer(x_in)

    def step():
        y = layer(x_in)
        loss = loss_fn(y, targets) if loss_fn is not None else (y.float() * grad).sum()
        loss.backward()
        layer.zero_grad(set_to_none=True)
        if x_in.grad is not None:
            x_in.grad = None

    grad = torch.randn_like(out.float()).to(out.dtype) if out.is_floating_point() else None
    if loss_fn is not None:          # the loss's own forward and its collectives count with the layer
        log.take()
        loss_fn(out, targets)
        fwd_calls += log.take()
    log.take()
    step()
    both_calls = log.take()
    bwd_calls = both_calls[len(fwd_calls):]
    fwd_s = _time(forward, repeat)
    if loss_fn is not None:
        fwd_s += _time(lambda: loss_fn(out.detach(), targets), repeat)
    both = _time(step, repeat)
    from hcomm.parallel.tensor.sp_grads import sequence_parallel_params

    params = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    row = {"fwd_s": fwd_s, "bwd_s": max(both - fwd_s, 0.0), "w_s": _weight_grad_s(layer, x_in, loss_fn, targets, grad,
                                                                                  repeat),
           "saved_bytes": saved, "out_bytes": out_bytes,
           "params": params, "units": _units(layer), "fwd_collectives": fwd_calls, "bwd_collectives": bwd_calls,
           "sp_params": sum(p.numel() for _, p in sequence_parallel_params(layer))}
    return row, out.detach()


def _weight_grad_s(layer, x_in, loss_fn, targets, grad, repeat):
    """CPU seconds of W for one micro-batch: one forward recorded by wgrad.LinearGrads and
    its B run once, then W timed on the Linears' (x, g) that B handed back (W adds into
    .grad in place, so repeating it measures the same work)."""
    from hcomm.parallel.pipeline.wgrad import LinearGrads

    lg = LinearGrads({0: layer})
    try:
        if not lg.usable(0):
            return 0.0
        out, calls = lg.forward(0, layer, (x_in,))
        outs, grads = ([loss_fn(out, targets)], None) if loss_fn is not None else ([out], [grad])
        pending = lg.backward(0, outs, grads, (x_in,), calls)
        w_s = _time(lambda: LinearGrads.weight(pending), repeat) if pending else 0.0
    finally:
        lg.close()
        layer.zero_grad(set_to_none=True)
        x_in.grad = None
    return w_s


def optimizer_seconds_per_element(dtype_name="float32", numel=1 << 20, repeat=5):
    """AdamW step time per parameter element (fp32 master state), one thread."""
    import torch

    p = torch.zeros(numel, requires_grad=True)
    p.grad = torch.randn(numel)
    opt = torch.optim.AdamW([p], lr=1e-3)
    return _time(opt.step, repeat) / numel


def baseline_rss_bytes():
    """Resident bytes of this process now (torch and hcomm imported): a rank's floor."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------- the GPT profile

def _gpt_shard(model_section, tp, sp, dtype):
    import torch
    import torch.distributed as dist
    from hcomm.parallel.models import GPT, GPTConfig

    group = dist.new_group(list(range(tp))) if tp > 1 else None
    model = GPT(GPTConfig(**model_section), group=group, sequence_parallel=sp, seed=0)
    return model.to(getattr(torch, dtype)), group


def _profile_gpt_here(model_section, shapes, dtype, repeat):
    """Runs in the child: {key: rows} for every (tp, mb, sp) in shapes, plus the optimizer rate."""
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from hcomm.parallel.models import gpt_loss

    torch.set_num_threads(1)
    world = max(tp for tp, _, _ in shapes)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=max(world, 1))
    out = {"shapes": {}, "baseline_rss": _baseline_after_warm_up()}
    gen = torch.Generator().manual_seed(0)
    with CollectiveLog() as log:
        for tp, mb, sp in shapes:
            model, group = _gpt_shard(model_section, tp, sp, dtype)
            seq, vocab = model_section.get("seq_len", 16), model_section.get("vocab_size", 96)
            ids = torch.randint(0, vocab, (mb, seq), generator=gen)
            rows = profile_layers(list(model.layers), ids, lambda o, t, g=group: gpt_loss(o, t, g), ids,
                                  repeat, log)
            out["shapes"][shape_key(tp, mb, sp)] = rows
            del model
    out["optimizer_s_per_element"] = optimizer_seconds_per_element(dtype)
    out.update(_step_overheads())
    return out


def _baseline_after_warm_up():
    """What every rank carries besides its share: this process's resident bytes after one
    training step of a tiny one-rank pipeline (torch, hcomm, the autograd engine, the
    pipeline runtime and AdamW loaded), taken before any model of the profile is built:
    the allocator keeps what a larger profiled shape freed, which inflated this figure by
    up to 60 MiB on the wide GPT when it was taken at the end."""
    import torch.distributed as dist

    from .overhead import _pipeline_step

    _pipeline_step(2, 1, 0, dist.new_group([0]))()
    gc.collect()
    return baseline_rss_bytes()


def _step_overheads():
    """The runtime's and optimizer's bookkeeping (overhead.py), the optimizer step per
    element by ZeRO stage (optimizer_profile.py), and this machine's speed
    while the profile ran (calibrate.py's piece, alone): the calibration's times are
    divided by it."""
    import torch.distributed as dist

    from .calibrate import PIECE_REPS, piece_seconds
    from .optimizer_profile import measure_optimizer_step
    from .overhead import measure_overheads

    out = {"overheads": measure_overheads(dist.new_group([0])),
           "optimizer_step_s": measure_optimizer_step(dist.new_group([0]))}
    out["piece_s"] = piece_seconds()
    out["piece_rep_s"] = out["piece_s"] / PIECE_REPS
    return out


def shape_key(tp, mb, sp):
    return f"tp{tp}-mb{mb}-sp{int(bool(sp))}"


def machine_id():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    import torch

    return f"{platform.node()}|{cpu}|{os.cpu_count()}|torch {torch.__version__}"


PROFILE_FORMAT = 8   # bump when what a profile records changes, so old caches are not read


def _cache_path(model_section, dtype):
    key = json.dumps({"machine": machine_id(), "model": model_section, "dtype": dtype, "format": PROFILE_FORMAT},
                     sort_keys=True)
    root = Path(os.environ.get("HCOMM_PLAN_CACHE", Path.home() / ".cache" / "hcomm" / "plan"))
    return root / f"profile-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def profile_gpt(model_section, shapes, dtype="float32", repeat=5, cache=True, timeout=600):
    """The profile of the GPT described by `model_section` (examples/train_gpt.py's "model")
    at every (tp, mb, sp) of `shapes`, from the cache where present, else measured in one
    child process. Returns {"shapes": {shape_key: [row per layer]}, "optimizer_s_per_element",
    "baseline_rss", "measured_s" (seconds spent measuring now, 0 when all cached)}."""
    path = _cache_path(model_section, dtype)
    have = {}
    if cache and path.exists():
        have = json.loads(path.read_text())
    missing = [s for s in shapes if shape_key(*s) not in have.get("shapes", {})]
    t0 = time.perf_counter()
    if missing:
        fresh = _run_child(model_section, missing, dtype, repeat, timeout)
        have.setdefault("shapes", {}).update(fresh["shapes"])
        have["optimizer_s_per_element"] = fresh["optimizer_s_per_element"]
        have["baseline_rss"] = fresh["baseline_rss"]
        for key in ("piece_s", "piece_rep_s", "overheads", "optimizer_step_s"):
            have[key] = fresh[key]
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(have))
            tmp.replace(path)
    have["measured_s"] = time.perf_counter() - t0 if missing else 0.0
    have["cache_file"] = str(path)
    return have


def _run_child(model_section, shapes, dtype, repeat, timeout):
    request = json.dumps({"model": model_section, "shapes": shapes, "dtype": dtype, "repeat": repeat})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # -c rather than -m: the package's __init__ already imports this module
    code = "from hcomm.parallel.plan.profile import _main; _main()"
    proc = subprocess.run([sys.executable, "-c", code], input=request, text=True, capture_output=True,
                          timeout=timeout, env=env)
    if proc.returncode:
        raise RuntimeError(f"the layer profile failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _main():
    req = json.loads(sys.stdin.read())
    shapes = [tuple(s) for s in req["shapes"]]
    out = _profile_gpt_here(req["model"], shapes, req["dtype"], req["repeat"])
    print(json.dumps(out))


if __name__ == "__main__":
    _main()
