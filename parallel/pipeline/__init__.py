"""Pipeline parallelism: schedules as data, checked before they run, and a runtime.

    from hcomm.parallel.mesh import ParallelConfig, build_mesh
    from hcomm.parallel.pipeline import PipelineRuntime, schedule_for_config, split_layers, stages_for_rank

    mesh = build_mesh(cfg)                                   # pp x dp x tp groups
    sched = schedule_for_config(cfg)                         # 1F1B, or interleaved when vpp > 1
    stages = split_layers(model.layers, sched.num_stages)    # cut evenly (or sizes=[...])
    pipe = PipelineRuntime.from_mesh(mesh, stages_for_rank(stages, mesh.pp_rank, sched), sched, loss_fn)
    loss = pipe.step(inputs, targets)                        # grads as the unpipelined model's

Files:
    schedules.py  vocabulary (p, v, m, stage placement: loop or v), actions, GPipe / 1F1B /
                  interleaved, build_schedule
    zero_bubble.py  the list scheduler and the zero-bubble schedules ZB-H1 and ZB-V
    check.py      deadlock / order proof by simulating every rank; predicted bubble and
                  peak stashed activations (printed by the runtime before the first step)
    stage.py      cutting a list of layers into stages; which stages a pp rank holds
    p2p.py        messages (control block + tensors) and the exchange of one batch
    runtime.py    executing one rank's actions; failures raised on every rank; dp averaging

Composition: tensor-parallel layers may sit inside stages (each tp rank runs the same
schedule against its tp twin in the next stage); gradients are averaged over the dp group
after the step, or left to ZeRO-1/2 with ``reduce_dp_grads=False``.
"""
from .check import ScheduleError, ScheduleReport, check_schedule
from .runtime import PipelineError, PipelineRuntime, StepStats, split_microbatches
from .schedules import (Action, Schedule, build_schedule, check_interleaved, gpipe, interleaved_1f1b,
                        one_f_one_b, schedule_for_config)
from .stage import StageChain, split_layers, stages_for_rank

__all__ = ["Action", "PipelineError", "PipelineRuntime", "Schedule", "ScheduleError", "ScheduleReport",
           "StageChain", "StepStats", "build_schedule", "check_interleaved", "check_schedule", "gpipe",
           "interleaved_1f1b", "one_f_one_b", "schedule_for_config", "split_layers", "split_microbatches",
           "stages_for_rank"]
