"""plan(): profile once, enumerate, price every candidate, rank; and the texts the CLI prints."""
import time
from dataclasses import dataclass, field
from typing import List, Optional

from .cluster import Cluster
from .cost import CostModel, Estimate, Settings, chunks_of_rank
from .pricing import Pricer
from .profile import profile_gpt
from .space import SPLIT_BACKWARD, Candidate, ModelShape, enumerate_candidates

# Defaults of examples/train_gpt.py's "model" and "train" sections (GPTConfig's fields).
MODEL_KEYS = ("vocab_size", "seq_len", "hidden", "heads", "n_layers", "ffn_hidden", "init_std", "eps", "dropout")
TRAIN_DEFAULTS = {"steps": 20, "lr": 3e-3, "weight_decay": 0.01, "seed": 1234, "schedule": "1f1b",
                  "clip_grad_norm": 1.0}
DTYPES = {"float32": (4, 0), "bfloat16": (2, 4)}     # (P, M) bytes per element


def check_model(model: dict) -> dict:
    if not isinstance(model, dict):
        raise TypeError(f"model must be a dict (examples/train_gpt.py's 'model' section), got {type(model).__name__}")
    unknown = sorted(set(model) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"unknown model key(s) {', '.join(map(repr, unknown))}; known: {', '.join(MODEL_KEYS)}")
    from hcomm.parallel.models import GPTConfig

    GPTConfig(**model)          # its own checks (hidden divisible by heads)
    return dict(model)


def mesh_supports_rank_order() -> bool:
    """Whether hcomm.parallel.mesh's ParallelConfig applies a "rank_order" (placement)."""
    from hcomm.parallel.mesh import ParallelConfig

    return "rank_order" in getattr(ParallelConfig, "__dataclass_fields__", {})


@dataclass
class PlanResult:
    ranked: List[Estimate]              # fitting plans first, fastest first; then the rest
    cluster: Cluster
    model: dict
    train: dict
    settings: Settings
    profile: dict
    seconds: float                      # planning time, profile included
    notes: List[str] = field(default_factory=list)

    @property
    def best(self) -> Estimate:
        return self.ranked[0]

    @property
    def tokens_per_step(self) -> int:
        return self.settings.global_batch_size * self.model.get("seq_len", 16)

    def config(self, est: Optional[Estimate] = None) -> dict:
        """The config dict examples/train_gpt.py --config runs: the parallel keys of the
        plan, the model section, the train section (with the plan's schedule)."""
        est = est or self.best
        c = est.cand
        train = dict(self.train, schedule=c.schedule)    # "interleaved" or "zb-v" where vpp > 1
        return {**c.config(self.settings.global_batch_size), "model": dict(self.model), "train": train}

    def find(self, name: str) -> Estimate:
        for e in self.ranked:
            if e.cand.name == name or str(self.ranked.index(e) + 1) == str(name):
                return e
        raise ValueError(f"no plan {name!r}; give its rank in the table (1, 2, ...) or its name, e.g. "
                         f"{self.ranked[0].cand.name!r}")


def _drop_split_schedules_without_w(cands, prof, notes):
    """Zero-bubble schedules only move weight-gradient work (W) into the bubble; where the
    profile measured none on every layer (a model without linear layers wgrad.py splits),
    zb-h1 / zb-v run as 1F1B in another order and can only lose,
    while the fixed point of the busy ranks could still price them a little under 1F1B
    (dp1 pp4: 3 % under, measured 21 % over). A row without w_s (an older or hand-written
    profile) counts as having W."""
    has_w = any(row.get("w_s") is None or row["w_s"] > 0 for rows in prof["shapes"].values() for row in rows)
    if has_w or not any(c.schedule in SPLIT_BACKWARD for c in cands):
        return cands
    notes.append("zb-h1 and zb-v left out: the profile measured no weight-gradient work (W) to move into "
                 "the bubble")
    return [c for c in cands if c.schedule not in SPLIT_BACKWARD]


def plan(model: Optional[dict] = None, global_batch_size: Optional[int] = None, cluster=None,
         world_size: Optional[int] = None, memory_budget: Optional[int] = None, dtype: str = "float32",
         optimizer: str = "AdamW", train: Optional[dict] = None, zero_stages=(0, 1, 2, 3), micro_batch_sizes=None,
         max_vpp: int = 4, placement: Optional[bool] = None, profile: Optional[dict] = None, cache: bool = True,
         clip: bool = True, module=None, sample_batch=None, loss_fn=None) -> PlanResult:
    """Rank every valid plan for `model` (examples/train_gpt.py's "model" section), or for
    any `module` whose `layers` list can be cut into pipeline stages, profiled on
    `sample_batch` ((inputs, targets) or inputs; `loss_fn(output, targets)`, default mean
    squared; tp = 1: see module_profile.py), on `cluster` (a Cluster, a description such as
    "2 hosts x 4 ranks, 1 Gbit/s between hosts", a topology file path; default:
    HCOMM_TOPO_FILE, else `world_size` ranks on this machine).

    memory_budget: bytes per rank (default: each host's memory / its ranks). placement:
    search rank placements (default: when the mesh applies "rank_order"). Raises ValueError
    when no plan is valid, or when none fits the budget (naming the smallest one's need)."""
    t0 = time.perf_counter()
    if (model is None) == (module is None):
        raise ValueError("give either model (train_gpt.py's model section) or module= with sample_batch=, not "
                         + ("both" if model is not None else "neither"))
    if module is not None and sample_batch is None:
        raise ValueError("module= needs sample_batch= (a batch of inputs, or (inputs, targets)) to profile it")
    if global_batch_size is None:
        raise ValueError("global_batch_size is required")
    if module is not None:
        model = _module_section(module, sample_batch)
    else:
        model = check_model(model)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if optimizer != "AdamW":
        raise ValueError(f"optimizer {optimizer!r} is not modelled (AdamW only)")
    cluster = resolve_cluster(cluster, world_size)
    world = cluster.world_size
    if world_size is not None and world_size != world:
        raise ValueError(f"world_size({world_size}) != the cluster's {world} ranks ({cluster.summary()})")
    notes = []
    if placement is None:
        placement = mesh_supports_rank_order()
        if not placement:
            notes.append("hcomm.parallel.mesh has no rank_order here: only the default placement (tp<dp<pp) "
                         "is searched")
    shape = ModelShape.gpt(model) if module is None else ModelShape(len(module.layers), max_tp=1)
    physical = cluster.physical_order()
    cands = enumerate_candidates(world, global_batch_size, shape, physical, zero_stages, micro_batch_sizes, max_vpp)
    if not placement:
        cands = [c for c in cands if c.nesting == "tp<dp<pp"]     # the identity rank_order
    shapes = sorted({(c.tp, c.micro_batch_size, c.sequence_parallel) for c in cands})
    if profile is not None:
        prof = profile
    elif module is not None:
        from .module_profile import profile_module

        prof = profile_module(module, sample_batch, [mb for _, mb, _ in shapes], loss_fn)
    else:
        prof = profile_gpt(model, shapes, dtype, cache=cache)
    cands = _drop_split_schedules_without_w(cands, prof, notes)
    p, m = DTYPES[dtype]
    budget = memory_budget if memory_budget is not None else cluster.memory_budget()
    settings = Settings(global_batch_size, p, m, 8, budget, clip)
    cm = CostModel(cluster, Pricer(cluster), prof, settings)
    ests = [cm.estimate(c) for c in cands]
    ests.sort(key=lambda e: (not e.fits, e.step_s, e.memory_total))
    result = PlanResult(ests, cluster, model, dict(TRAIN_DEFAULTS, **(train or {})), settings, prof,
                        time.perf_counter() - t0, notes)
    if not ests[0].fits:
        small = min(ests, key=lambda e: e.memory_total)
        raise ValueError(f"no plan fits the memory budget of {_mib(budget)} MiB per rank: the smallest, "
                         f"{small.cand.name}, needs {_mib(small.memory_total)} MiB "
                         f"({_memory_words(small.memory)})")
    return result


def _module_section(module, sample_batch) -> dict:
    """What PlanResult keeps of a module: its class name and, for token ids [batch, seq],
    the sequence length (tokens per sample)."""
    from .module_profile import check_module

    layers, inputs, _ = check_module(module, sample_batch)
    seq = inputs.shape[1] if inputs.dim() >= 2 and not inputs.is_floating_point() else 1
    return {"module": type(module).__name__, "layers": len(layers), "seq_len": seq}


def resolve_cluster(cluster, world_size) -> Cluster:
    import os

    if isinstance(cluster, Cluster):
        return cluster
    if isinstance(cluster, dict):
        from .cluster import distinct_hosts

        return Cluster(_load(distinct_hosts(cluster)), origin="topology dict", calibration=cluster.get("planner"))
    if isinstance(cluster, str):
        return Cluster.from_file(cluster) if os.path.exists(cluster) else Cluster.describe(cluster)
    if cluster is not None:
        raise TypeError(f"cluster must be a Cluster, a description, a topology file or dict, got {cluster!r}")
    if os.environ.get("HCOMM_TOPO_FILE"):
        return Cluster.from_file(os.environ["HCOMM_TOPO_FILE"])
    if world_size is None:
        raise ValueError("give a cluster (description, topology file, HCOMM_TOPO_FILE) or world_size")
    return Cluster.detect(world_size)


def _load(topology):
    from hcomm.topology import load

    return load(topology)


def schedule_of(config: dict, vpp: int) -> str:
    """The schedule examples/train_gpt.py builds for a config: train.schedule (1f1b by
    default), or "interleaved" where vpp > 1 and the name is a one-chunk schedule's."""
    from hcomm.parallel.pipeline.schedules import VIRTUAL_SCHEDULES

    name = (config.get("train") or {}).get("schedule", "1f1b")
    return "interleaved" if vpp > 1 and name not in VIRTUAL_SCHEDULES else name


def memory_of_config(config: dict, cluster, dtype="float32", profile=None, cache=True) -> dict:
    """Per-rank memory of one given layout (a train_gpt config), no process started: the
    worst rank's terms, and each pp rank's."""
    from hcomm.parallel.mesh import ParallelConfig

    model = check_model(config.get("model") or {})
    cluster = resolve_cluster(cluster, None)
    world = cluster.world_size
    pcfg = ParallelConfig.from_config({k: v for k, v in config.items() if k not in ("model", "train")}, world)
    sp = pcfg.sequence_parallel
    prof = profile or profile_gpt(model, [(pcfg.tp, pcfg.micro_batch_size, sp)], dtype, cache=cache)
    order = tuple(config.get("rank_order") or range(world))
    sched = schedule_of(config, pcfg.vpp)
    cand = Candidate(pcfg.dp, pcfg.tp, pcfg.pp, pcfg.vpp, sched, pcfg.zero_stage, pcfg.micro_batch_size, sp,
                     "given", order)
    p, m = DTYPES[dtype]
    cm = CostModel(cluster, Pricer(cluster), prof, Settings(pcfg.global_batch_size, p, m, 8,
                                                            cluster.memory_budget()))
    est = cm.estimate(cand)
    report = est.detail["peak_stash"]
    per_rank = [cm.memory_of_rank(cand, chunks, report[r])
                for r, chunks in enumerate(chunks_of_rank(cm.rows(cand), cand.pp, cand.vpp, cand.schedule))]
    return {"estimate": est, "per_pp_rank": per_rank}


# -------------------------------------------------------------------- formatting

def _mib(n):
    return f"{n / 2 ** 20:,.1f}"


def _ms(s):
    return f"{s * 1e3:.2f}"


def _memory_words(mem):
    return ", ".join(f"{k} {_mib(v)}" for k, v in mem.items() if k != "total")


def format_table(result: PlanResult, top: int = 20) -> str:
    budget = result.settings.budget
    lines = [f"cluster: {result.cluster.summary()}",
             f"model: {result.model}; global batch {result.settings.global_batch_size}; budget "
             f"{_mib(budget)} MiB/rank; {len(result.ranked)} plans priced in {result.seconds:.1f} s "
             f"(profile {result.profile.get('measured_s', 0):.1f} s"
             + (", cached" if not result.profile.get("measured_s") else "") + ")"]
    lines += [f"note: {n}" for n in result.notes]
    head = f"{'#':>3}  {'plan':<44}{'step ms':>9}{'tokens/s':>11}{'MiB/rank':>10}  fits"
    lines += ["", head]
    for i, e in enumerate(result.ranked[:top]):
        why = "yes" if e.fits else f"no: needs {_mib(e.memory_total)} > {_mib(budget)}"
        lines.append(f"{i + 1:>3}  {e.cand.name:<44}{_ms(e.step_s):>9}{e.tokens_per_s(result.tokens_per_step):>11,.0f}"
                     f"{_mib(e.memory_total):>10}  {why}")
    if len(result.ranked) > top:
        lines.append(f"     ... {len(result.ranked) - top} more (--top N)")
    return "\n".join(lines)


def format_explain(result: PlanResult, est: Estimate) -> str:
    c, d = est.cand, est.detail
    lines = [f"plan {c.name}: predicted step {_ms(est.step_s)} ms, "
             f"{est.tokens_per_s(result.tokens_per_step):,.0f} tokens/s",
             f"  {d['microbatches']} micro-batches of {c.micro_batch_size} per pipeline; slowest pp rank "
             f"{d['slowest_pp_rank']}: F {_ms(d['F'])} ms, B {_ms(d['B'])} ms"
             + ("" if d.get("W") is None else f", W {_ms(d['W'])} ms (weight gradients, apart from B)")
             + f" per micro-batch; p2p "
             f"{_ms(d['p2p_s'])} ms per message; bubble {d['bubble']:.3f}; peak stash {d['peak_stash']}",
             f"  compute factor {d['compute_factor']:.2f} with "
             + ", ".join(f"{k:.1f}" for k in d["active_ranks"].values())
             + f" ranks active per machine; {_ms(d['call_overhead_s'])} ms overhead per collective call",
             "  time per step (ms):"]
    for k, v in est.terms.items():
        if k != "total":
            lines.append(f"    {k:<28}{_ms(v):>10}")
    lines.append(f"    {'total':<28}{_ms(est.step_s):>10}")
    lines.append("  memory of the fullest rank (MiB):")
    for k, v in est.memory.items():
        lines.append(f"    {k:<28}{_mib(v):>10}")
    lines.append(f"    budget {_mib(est.budget)}: {'fits' if est.fits else 'does not fit'}")
    for axis in ("tp", "dp", "pp"):
        lines.append(f"  {axis} groups: " + " ".join(str(g) for g in d["groups"][axis]))
    return "\n".join(lines)


def format_memory(mem: dict) -> str:
    est = mem["estimate"]
    c = est.cand
    lines = [f"per-rank memory of dp={c.dp} tp={c.tp} pp={c.pp} vpp={c.vpp} zero_stage={c.zero_stage} "
             f"micro_batch={c.micro_batch_size} (MiB), no process started"]
    names = list(mem["per_pp_rank"][0])
    lines.append(f"  {'term':<26}" + "".join(f"{'pp rank ' + str(r):>12}" for r in range(len(mem['per_pp_rank']))))
    for k in names:
        lines.append(f"  {k:<26}" + "".join(f"{_mib(m[k]):>12}" for m in mem["per_pp_rank"]))
    lines.append(f"  budget per rank {_mib(est.budget)} MiB: {'fits' if est.fits else 'does not fit'}")
    return "\n".join(lines)


__all__ = ["PlanResult", "format_explain", "format_memory", "format_table", "memory_of_config", "plan",
           "resolve_cluster"]
