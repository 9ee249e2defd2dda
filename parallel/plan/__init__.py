"""hcomm.parallel.plan: choose dp x tp x pp, ZeRO stage, micro-batch, schedule and rank
placement from the model, the memory budget and the topology, with no trial runs.

    from hcomm.parallel.plan import plan, format_table
    result = plan({"vocab_size": 64, "seq_len": 32, "hidden": 64, "heads": 4, "n_layers": 4},
                  global_batch_size=8, cluster="2 hosts x 4 ranks, 1 Gbit/s between hosts")
    result = plan(module=net, sample_batch=(x, y), global_batch_size=32, cluster="4 ranks")
    print(format_table(result)); json.dump(result.config(), f)   # examples/train_gpt.py --config f

The one place in hcomm.parallel that imports hcomm (its topology and tuner). Files:
    cluster.py   hosts, racks, cores, memory; described, from a topology file, or detected
    space.py     the valid candidates and rank placements (process-free)
    profile.py   the one-process layer profile, cached per machine and model
    overhead.py  the step's bookkeeping (runtime, optimizer, ZeRO hooks), measured in that process
    module_profile.py  the profile of any module with a `layers` list (plan(module=..., sample_batch=...))
    calibrate.py the job's ranks measure the compute factor per active-rank count and per-call overheads
    pricing.py   collectives priced by hcomm's tuner on the placement's links
    cost.py      step time and memory per rank as named terms (docs/planner.md)
    planner.py   plan(), memory_of_config() and the printed tables
    cli.py       hcomm-plan; validate.py runs the top plans (--validate K)
"""
from .cluster import Cluster
from .cost import Estimate, model_state
from .planner import PlanResult, format_explain, format_memory, format_table, memory_of_config, plan
from .space import Candidate, ModelShape, enumerate_candidates, placements

__all__ = ["Candidate", "Cluster", "Estimate", "ModelShape", "PlanResult", "enumerate_candidates", "format_explain",
           "format_memory", "format_table", "memory_of_config", "model_state", "placements", "plan"]
