"""The profile of any module whose `layers` list can be cut into pipeline stages.

    from hcomm.parallel.plan import plan
    result = plan(module=net, sample_batch=(x, y), loss_fn=torch.nn.functional.mse_loss,
                  global_batch_size=32, cluster="2 hosts x 2 ranks, 1 Gbit/s between hosts")

What the GPT profile (profile.py) records, for a module that has no tensor-parallel
layers (so tp = 1 and no tp collectives): each entry of `module.layers` timed forward
and backward in THIS process on one thread (torch.set_num_threads(1) for the duration),
fed in turn from the previous one's output, at every micro-batch size the search asks
for; the loss with the last layer. A micro-batch of size b is the sample batch's rows
0..b-1, repeated when the sample holds fewer. No process group is needed: the module's
layers are the user's, so they issue no collective of their own.

The step's bookkeeping (overhead.py: the pipeline runtime's and ZeRO's per-step and
per-micro-batch costs) does not depend on the model; it needs a process group, so it is
measured once per machine in a child process on torch's fake backend and cached beside
the GPT profiles (HCOMM_PLAN_CACHE), or given as `overheads`.
"""
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .profile import PROFILE_FORMAT, CollectiveLog, baseline_rss_bytes, machine_id, optimizer_seconds_per_element, \
    profile_layers, shape_key


def check_module(module, sample_batch):
    """(layers, inputs, targets) of a module and its sample batch, or a clear error."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    layers = getattr(module, "layers", None)
    if not isinstance(layers, (list, tuple, torch.nn.ModuleList, torch.nn.Sequential)) or not len(layers):
        raise ValueError(f"{type(module).__name__} has no non-empty `layers` list to cut into pipeline stages")
    if not all(isinstance(layer, torch.nn.Module) for layer in layers):
        raise TypeError(f"{type(module).__name__}.layers must hold nn.Modules")
    inputs, targets = sample_batch if isinstance(sample_batch, (tuple, list)) else (sample_batch, None)
    if not torch.is_tensor(inputs) or inputs.dim() == 0:
        raise ValueError("sample_batch must be a tensor (or an (inputs, targets) pair) with a batch dimension")
    if targets is not None and (not torch.is_tensor(targets) or targets.shape[:1] != inputs.shape[:1]):
        raise ValueError(f"sample_batch's targets must be a tensor with the inputs' batch size {inputs.shape[0]}")
    return list(layers), inputs, targets


def _rows_of(t, b):
    """Rows 0..b-1 of t along dim 0, cycling when t has fewer."""
    import torch

    if t is None:
        return None
    index = torch.arange(b) % t.shape[0]
    return t.index_select(0, index)


def default_loss(output, targets):
    """Mean squared output when no targets or loss_fn are given; else mean squared error."""
    out = output.float()
    return (out ** 2).mean() if targets is None else ((out - targets.float()) ** 2).mean()


def profile_module(module, sample_batch, micro_batch_sizes, loss_fn=None, repeat=5, overheads=None):
    """{"shapes": {shape_key(1, b, False): rows}, "optimizer_s_per_element", "baseline_rss",
    "overheads", "piece_s", "piece_rep_s", "measured_s"} for `module` (see the module
    docstring). Rows are profile.py's: fwd_s, bwd_s, saved_bytes, out_bytes, params, units."""
    import torch

    layers, inputs, targets = check_module(module, sample_batch)
    loss_fn = loss_fn or default_loss
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {"shapes": {}}
        with CollectiveLog() as log:
            for b in sorted(set(micro_batch_sizes)):
                rows = profile_layers(layers, _rows_of(inputs, b), loss_fn, _rows_of(targets, b), repeat, log)
                out["shapes"][shape_key(1, b, False)] = rows
        for layer in layers:
            layer.zero_grad(set_to_none=True)
        out["optimizer_s_per_element"] = optimizer_seconds_per_element()
    finally:
        torch.set_num_threads(threads)
    out["baseline_rss"] = baseline_rss_bytes()       # this process: the caller's own baseline
    out.update(overheads if overheads is not None else step_overheads())
    out["measured_s"] = time.perf_counter() - t0
    return out


def step_overheads(cache=True, timeout=300):
    """{"overheads", "piece_s", "piece_rep_s"} of this machine: measured in a child on
    torch's fake backend (profile._step_overheads), cached per machine."""
    key = json.dumps({"machine": machine_id(), "format": PROFILE_FORMAT})
    root = Path(os.environ.get("HCOMM_PLAN_CACHE", Path.home() / ".cache" / "hcomm" / "plan"))
    path = root / f"overheads-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if cache and path.exists():
        return json.loads(path.read_text())
    code = "from hcomm.parallel.plan.module_profile import _overheads_main; _overheads_main()"
    proc = subprocess.run([sys.executable, "-c", code], text=True, capture_output=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode:
        raise RuntimeError(f"measuring the step's bookkeeping failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    return result


def _overheads_main():
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from .profile import _step_overheads

    torch.set_num_threads(1)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=1)
    print(json.dumps(_step_overheads()))
