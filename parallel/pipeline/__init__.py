"""Pipeline parallelism: schedules as data, checked before they run, and a runtime.

    sched = build_schedule("1f1b", p=4, m=8)          # per-rank action lists
    report = check_schedule(sched)                     # raises ScheduleError on deadlock
    stages = split_layers(model_layers, sched.num_stages)
    pipe = PipelineRuntime.from_mesh(mesh, stages_for_rank(stages, mesh.pp_rank, sched), sched, loss_fn)
    loss = pipe.step(inputs, targets)                  # grads accumulated like the full model

See schedules.py for the vocabulary (p, v, m, stage placement, actions).
"""
from .check import ScheduleError, ScheduleReport, check_schedule
from .runtime import PipelineError, PipelineRuntime, StepStats, split_microbatches
from .schedules import (Action, Schedule, build_schedule, check_interleaved, gpipe, interleaved_1f1b,
                        one_f_one_b, schedule_for_config)
from .stage import StageChain, split_layers, stages_for_rank

__all__ = ["Action", "PipelineError", "PipelineRuntime", "Schedule", "ScheduleError", "ScheduleReport",
           "StageChain", "StepStats", "build_schedule", "check_interleaved", "check_schedule", "gpipe",
           "interleaved_1f1b", "one_f_one_b", "schedule_for_config", "split_layers", "split_microbatches", "stages_for_rank"]
