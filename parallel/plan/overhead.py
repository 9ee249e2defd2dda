"""What a training step costs beyond its layers, measured in the profile's one process.

The layer profile (profile.py) times each layer's forward and backward alone. A real
step also runs the pipeline runtime's Python for every micro-batch (actions, loss
scaling, gradient hand-offs), and once per step the status agreement, the gradient
clipping, the optimizer (its per-tensor and per-call overhead besides the per-element
update) and zero_grad. On small models these are a large share of the step (a third of
a dp4 step of the 64-wide GPT on the development machine, measured with
benchmarks/planner_breakdown.py).

They are bookkeeping, nearly independent of tensor sizes, so they are measured on the
real code with next to no arithmetic: a stage of tiny modules (Linear(8, 8)) run as a
one-rank pipeline (hcomm.parallel.pipeline.PipelineRuntime on a one-rank group of the
profile's process group), with the optimizer of each ZeRO stage (ZeroOptimizer on that
group; plain AdamW and hcomm.parallel.clip for stage 0), for m = 1 and 2 micro-batches
and 1 and UNITS modules. Per ZeRO stage z:

    microbatch_s[z]       T(m=2) - T(m=1) with one module: per micro-batch and stage chunk
    unit_microbatch_s[z]  what each further module adds per micro-batch (ZeRO-3's gather
                          and release hooks, autograd bookkeeping)
    unit_step_s[z]        what each further module adds once per step (the optimizer's
                          per-tensor work, zero_grad, clipping's per-tensor norms)
    step_s[z]             the rest of a step: the status agreement, the optimizer's call

All at least 0. Each variant is run in turns with the others and its least time kept:
short runs on a shared machine are often uninterrupted, and the profile's other times
are taken the same way (the calibration's factor carries the machine's load).
The elementwise AdamW update is not here: profile.optimizer_seconds_per_element.
"""
import time

TINY = 8        # width of the tiny modules
UNITS = 6       # modules of the second tiny stage: the per-unit cost is the difference


def _least(fns, repeat):
    """Least seconds of each closure (its uninterrupted run), run in turns (a warm-up each first) so that all of
    them see the same load on a shared machine."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def _optimizer(stage, module, group):
    import torch

    from hcomm.parallel.zero import ZeroOptimizer

    if stage == 0:
        return torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.01)
    return ZeroOptimizer(module, torch.optim.AdamW, stage=stage, group=group, clip_grad_norm=1.0, print_plan=False,
                         lr=1e-3, weight_decay=0.01)


def _tiny(units):
    """A stage of `units` tiny modules with parameters: the runtime's and the optimizer's
    bookkeeping with next to no arithmetic."""
    from torch import nn

    return nn.Sequential(*[nn.Linear(TINY, TINY) for _ in range(units)])


def _pipeline_step(units, m, stage, group):
    """One training step of a tiny stage as a one-rank pipeline with ZeRO stage `stage`."""
    import torch

    from hcomm.parallel.clip import clip_grad_norm_
    from hcomm.parallel.pipeline import PipelineRuntime, build_schedule

    module = _tiny(units)
    opt = _optimizer(stage, module, group)
    runtime = PipelineRuntime({0: module}, build_schedule("1f1b", 1, m), lambda y, t: ((y - t) ** 2).mean(),
                              pp_rank=0, pp_ranks=[0], pp_group=group, status_group=group, check=False,
                              verbose=False)
    gen = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(m, TINY, generator=gen), torch.randn(m, TINY, generator=gen)

    def step():
        runtime.step(inputs, targets)
        if stage == 0:
            clip_grad_norm_(module, 1.0)
        opt.step()
        opt.zero_grad()
    return step


def measure_overheads(group, zero_stages=(0, 1, 2, 3), repeat=15):
    """{"microbatch_s", "unit_microbatch_s", "step_s", "unit_step_s"}, each {stage: s}
    (see the module docstring); `group` a one-rank process group."""
    fns = {(z, m, u): _pipeline_step(u, m, z, group) for z in zero_stages for m in (1, 2) for u in (1, UNITS)}
    t = _least(fns, repeat)
    out = {"microbatch_s": {}, "unit_microbatch_s": {}, "step_s": {}, "unit_step_s": {}}
    for z in zero_stages:
        mb = max(0.0, t[z, 2, 1] - t[z, 1, 1])
        unit_mb = max(0.0, ((t[z, 2, UNITS] - t[z, 1, UNITS]) - mb) / (UNITS - 1))
        unit_step = max(0.0, (t[z, 1, UNITS] - t[z, 1, 1]) / (UNITS - 1) - unit_mb)
        out["microbatch_s"][str(z)] = mb
        out["unit_microbatch_s"][str(z)] = unit_mb
        out["unit_step_s"][str(z)] = unit_step
        out["step_s"][str(z)] = max(0.0, t[z, 1, 1] - mb - unit_mb - unit_step)
    return out
