"""Train a small GPT on synthetic data with dp x tp x pp and ZeRO, from one config dict.

    mpirun --oversubscribe --allow-run-as-root -np 4 python examples/train_gpt.py
    torchrun --nproc-per-node 4 examples/train_gpt.py --check
    python examples/train_gpt.py                       # no launcher: the single-process run

Everything comes from CONFIG below (override with --config file.json or --set key=value):
the parallel keys are read by hcomm.parallel.mesh.ParallelConfig.from_config, which
derives dp = world_size / (tp * pp) and checks parallel_strategy against the degrees;
"model" and "train" are this script's own sections.

Per step: the global batch (global_batch_size sequences) is cut into dp slices; each dp
rank's pipeline (pp stages, each a tp group) runs it as grad_accum_steps micro-batches of
micro_batch_size with train.schedule (1f1b; also gpipe, zb-h1, and at virtual_pipeline_stages
= 2 zb-v; any other name becomes interleaved when virtual_pipeline_stages > 1);
ZeRO (zero_stage 1-3) reduces the gradients over dp and steps AdamW on its shard
(zero_stage 0: the pipeline averages gradients over dp and every rank steps AdamW).
Gradients are clipped by the whole model's norm (train.clip_grad_norm): summed over
dp shards, tp and pp ranks, as the dense model's torch.nn.utils.clip_grad_norm_ sees it.

--check also trains the dense model (one process, same seed, same batches, full global
batch per step) on rank 0 and compares the two loss curves: every step's loss must agree
within --rtol (default 1e-4 relative; the runs differ only in float32 summation order).
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

CONFIG = {
    # parallelism: the keys of hcomm.parallel.mesh.ParallelConfig.from_config
    "tensor_parallel_size": 2,
    "pipeline_stages": 2,
    "zero_stage": 1,
    "micro_batch_size": 2,
    "global_batch_size": 8,        # 8 / (2 * dp) micro-batches per pipeline and step
    "parallel_strategy": "MODEL_PARALLEL",
    "sequence_parallel": False,
    # this script's sections (ignored by ParallelConfig)
    "model": {"vocab_size": 64, "seq_len": 32, "hidden": 64, "heads": 4, "n_layers": 4},
    "train": {"steps": 20, "lr": 3e-3, "weight_decay": 0.01, "seed": 1234, "schedule": "1f1b",
              "clip_grad_norm": 1.0},   # by the whole model's norm; None: no clipping
}


# ------------------------------------------------------------------------- config

def _parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text      # a bare word, e.g. parallel_strategy=HYBRID


def apply_overrides(config: dict, assignments) -> dict:
    """--set key=value (value as JSON); model.hidden=96 reaches into a section."""
    out = json.loads(json.dumps(config))        # deep copy: CONFIG stays as written
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value, got {item!r}")
        *path, leaf = key.split(".")
        node = out
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"--set {key}: {part!r} is not a section of the config")
            node = node[part]
        node[leaf] = _parse_value(value)
    return out


def load_config(args) -> dict:
    config = CONFIG
    if args.config:
        with open(args.config) as f:
            config = json.load(f)
    config = apply_overrides(config, args.set)
    if args.steps is not None:
        config["train"]["steps"] = args.steps
    return config


def gpt_config(config: dict):
    from hcomm.parallel.models import GPTConfig

    return GPTConfig(**config["model"])


# --------------------------------------------------------------------------- data

def batch(config: dict, step: int):
    """The global batch of `step` (ids, targets), [global_batch_size, seq_len] each.

    Every rank draws the same batch from (seed, step), so the single-process run sees
    exactly the data the parallel run does. The sequences follow a fixed random
    permutation of the vocabulary 90% of the time, so a small model can learn them.
    """
    m, seed = config["model"], config["train"]["seed"]
    vocab, length, b = m["vocab_size"], m["seq_len"], config["global_batch_size"]
    nxt = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    seq = torch.empty(b, length + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, vocab, (b,), generator=g)
    noise = torch.randint(0, vocab, (b, length), generator=g)
    keep = torch.rand(b, length, generator=g) < 0.9
    for t in range(length):
        seq[:, t + 1] = torch.where(keep[:, t], nxt[seq[:, t]], noise[:, t])
    return seq[:, :-1], seq[:, 1:]


# ------------------------------------------------------------- single-process run

def _adamw(params, config):
    t = config["train"]
    return torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])


def train_single(config: dict, log=print):
    """The dense model in one process: the reference loss curve."""
    return train_dense(config, log)[0]


def train_dense(config: dict, log=print, steps=None):
    """(losses, model, optimizer) of the dense model after `steps` (train.steps) steps."""
    from hcomm.parallel.models import GPT

    model = GPT(gpt_config(config), seed=config["train"]["seed"])
    opt = _adamw(model.parameters(), config)
    tokens = config["global_batch_size"] * config["model"]["seq_len"]
    losses = []
    for step in range(config["train"]["steps"] if steps is None else steps):
        t0 = time.perf_counter()
        ids, targets = batch(config, step)
        loss = model(ids, targets)
        loss.backward()
        if config["train"].get("clip_grad_norm"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["train"]["clip_grad_norm"])
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        dt = time.perf_counter() - t0
        log(f"step {step + 1:>4}  loss {losses[-1]:.5f}  tokens/s {tokens / dt:>9,.0f}  {dt * 1e3:7.1f} ms")
    return losses, model, opt


# ------------------------------------------------------------------ parallel run

def balanced_sizes(layers: int, stages: int):
    """Layers per stage, as even as possible (the first stages take the remainder)."""
    if layers < stages:
        raise ValueError(f"{layers} layers (embedding + n_layers blocks + head) cannot fill {stages} "
                         f"pipeline stages (pipeline_stages * virtual_pipeline_stages); raise model.n_layers")
    return [layers // stages + (1 if i < layers % stages else 0) for i in range(stages)]


class Trainer:
    """This rank's share of the model (its pipeline stages, tp-sharded), the pipeline
    runtime and the optimizer, all built from the ParallelConfig's mesh."""

    def __init__(self, config: dict, pcfg, mesh, verbose=True):
        from hcomm.parallel.checkpoint import param_specs
        from hcomm.parallel.models import GPT, gpt_loss
        from hcomm.parallel.pipeline import PipelineRuntime, schedule_for_config, split_layers, stages_for_rank
        from hcomm.parallel.pipeline.schedules import VIRTUAL_SCHEDULES

        self.config, self.pcfg, self.mesh = config, pcfg, mesh
        sched_name = config["train"].get("schedule", "1f1b")
        if pcfg.vpp > 1 and sched_name not in VIRTUAL_SCHEDULES:
            sched_name = "interleaved"   # vpp > 1 with a one-chunk schedule name: the chunked one
        self.schedule = schedule_for_config(pcfg, sched_name)
        if self.schedule.split_backward and pcfg.zero_stage >= 2:
            # W writes .grad directly (torch's split), so ZeRO-2/3's gradient hooks never fire
            raise ValueError(f"schedule {sched_name!r} splits the backward; it works with zero_stage 0 or 1, "
                             f"not {pcfg.zero_stage}")
        # Every rank builds the whole (tp-sharded) model from the same seed, so its
        # shards equal the dense model's, then keeps only its own stages.
        model = GPT(gpt_config(config), group=mesh.tp_group, sequence_parallel=pcfg.sequence_parallel,
                    seed=config["train"]["seed"])
        all_stages = split_layers(model.layers, self.schedule.num_stages,
                                  balanced_sizes(len(model.layers), self.schedule.num_stages))
        self.stages = stages_for_rank(all_stages, mesh.pp_rank, self.schedule)
        tp_group = mesh.tp_group
        self.pipe = PipelineRuntime.from_mesh(
            mesh, self.stages, self.schedule, lambda out, t: gpt_loss(out, t, tp_group),
            reduce_dp_grads=pcfg.zero_stage == 0, verbose=verbose and mesh.rank == 0)
        self.module = nn.ModuleList(self.stages[s] for s in sorted(self.stages))
        # which dense parameter each local one is: the names of a mesh checkpoint
        self.specs = param_specs(model, self.module)
        del model, all_stages
        self.zopt = self._zero() if pcfg.zero_stage else None
        self.opt = self.zopt if self.zopt is not None else _adamw(self.module.parameters(), config)

    def _zero(self):
        """AdamW sharded over the dp group; it also reduces the gradients over dp, which
        is why the pipeline runtime was told not to (reduce_dp_grads=False)."""
        from hcomm.parallel.zero import ZeroOptimizer

        t = self.config["train"]
        return ZeroOptimizer(self.module, torch.optim.AdamW, stage=self.pcfg.zero_stage, group=self.mesh.dp_group,
                             clip_grad_norm=t.get("clip_grad_norm"), tp_group=self.mesh.tp_group,
                             pp_group=self.mesh.pp_group, print_plan=False, lr=t["lr"], weight_decay=t["weight_decay"])

    def my_slice(self, tensor):
        """This dp rank's contiguous share of the global batch."""
        per = tensor.size(0) // self.pcfg.dp
        return tensor[self.mesh.dp_rank * per:(self.mesh.dp_rank + 1) * per]

    def step(self, step: int) -> float:
        """One optimizer step; the global batch's mean loss (the same on every rank)."""
        ids, targets = batch(self.config, step)
        ids, targets = self.my_slice(ids), self.my_slice(targets)
        # the loss's stage is on the last pp rank, or on the first under ZB-V's V placement
        loss = self.pipe.step(ids if self.mesh.is_first_stage else None,
                              targets if self.pipe.holds_last_stage else None)
        if self.zopt is None and self.pcfg.sequence_parallel:   # ZeroOptimizer does it in step()
            from hcomm.parallel.tensor import reduce_sequence_parallel_grads
            reduce_sequence_parallel_grads(self.module, self.mesh.tp_group)
        clip = self.config["train"].get("clip_grad_norm")
        if clip and self.zopt is None:  # ZeroOptimizer clips inside step()
            from hcomm.parallel.clip import clip_grad_norm_
            clip_grad_norm_(self.module, clip, tp_group=self.mesh.tp_group, pp_group=self.mesh.pp_group)
        self.opt.step()
        self.opt.zero_grad()
        if self.pcfg.dp == 1:
            return loss
        total = torch.tensor([loss], dtype=torch.float64)   # each dp rank's pipeline saw its own slice
        dist.all_reduce(total, group=self.mesh.dp_group)
        return total.item() / self.pcfg.dp

    def memory(self) -> dict:
        """Bytes this rank holds: parameters, gradients, optimizer state, peak RSS."""
        if self.zopt is not None:
            plan = self.zopt.memory_plan()
            mem = {name: plan.row(name).real_bytes for name in ("parameters", "gradients", "optimizer state")}
            mem["optimizer state"] += plan.row("master weights").real_bytes
        else:
            params = list(self.module.parameters())
            mem = {"parameters": sum(p.numel() * p.element_size() for p in params),
                   "gradients": sum(p.numel() * p.element_size() for p in params),   # allocated every backward
                   "optimizer state": sum(t.numel() * t.element_size() for s in self.opt.state.values()
                                          for t in s.values() if torch.is_tensor(t) and t.dim() > 0)}
        # ru_maxrss is KiB on Linux: the process's peak, torch and the backend included
        mem["peak RSS"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        mem["stages"] = sorted(self.stages)
        return mem


def _mib(n):
    return f"{n / 2 ** 20:.2f}"


def print_memory(rows, mesh):
    from hcomm.parallel.mesh import coords

    print(f"\nper-rank memory (MiB)\n{'rank':>4} {'pp':>3} {'dp':>3} {'tp':>3} {'stages':>8} "
          f"{'params':>8} {'grads':>8} {'optim':>8} {'peak RSS':>9}")
    for rank, m in enumerate(rows):
        c = coords(mesh.cfg, rank)
        stages = ",".join(map(str, m["stages"]))
        print(f"{rank:>4} {c['pp']:>3} {c['dp']:>3} {c['tp']:>3} {stages:>8} {_mib(m['parameters']):>8} "
              f"{_mib(m['gradients']):>8} {_mib(m['optimizer state']):>8} {_mib(m['peak RSS']):>9}")


def train_parallel(config: dict, log):
    from hcomm.parallel.mesh import ParallelConfig, build_mesh, describe_layout

    world = dist.get_world_size()
    pcfg = ParallelConfig.from_config(config, world)
    mesh = build_mesh(pcfg)
    log(f"{world} ranks: dp={pcfg.dp} tp={pcfg.tp} pp={pcfg.pp} vpp={pcfg.vpp} zero_stage={pcfg.zero_stage} "
        f"micro_batch={pcfg.micro_batch_size} global_batch={pcfg.global_batch_size} "
        f"({pcfg.grad_accum_steps} micro-batches per pipeline), backend {dist.get_backend()}")
    log(describe_layout(pcfg))
    trainer = Trainer(config, pcfg, mesh)
    tokens = pcfg.global_batch_size * config["model"]["seq_len"]
    losses, seconds = [], []
    for step in range(config["train"]["steps"]):
        t0 = time.perf_counter()
        losses.append(trainer.step(step))
        seconds.append(time.perf_counter() - t0)
        log(f"step {step + 1:>4}  loss {losses[-1]:.5f}  tokens/s {tokens / seconds[-1]:>9,.0f}  "
            f"{seconds[-1] * 1e3:7.1f} ms")
    rows = [None] * world
    dist.all_gather_object(rows, trainer.memory())
    if mesh.rank == 0:
        print_memory(rows, mesh)
    timed = seconds[1:] or seconds            # the first step is warm-up (groups, buffers)
    steady = sorted(timed)[len(timed) // 2]   # median: robust to a shared machine's hiccups
    log(f"\ntokens/s {tokens / steady:,.0f} (median step {steady * 1e3:.1f} ms, first step left out)")
    return {"losses": losses, "step_seconds": seconds, "tokens_per_s": tokens / steady,
            "layout": {"dp": pcfg.dp, "tp": pcfg.tp, "pp": pcfg.pp, "zero_stage": pcfg.zero_stage},
            "peak_rss_bytes": [m["peak RSS"] for m in rows]}


def compare(losses, ref, rtol):
    """Print both curves; True when every step agrees within rtol (relative)."""
    print(f"\n{'step':>4} {'parallel':>10} {'single':>10} {'rel diff':>9}")
    worst = 0.0
    for i, (a, b) in enumerate(zip(losses, ref)):
        diff = abs(a - b) / max(abs(b), 1e-12)
        worst = max(worst, diff)
        print(f"{i + 1:>4} {a:>10.5f} {b:>10.5f} {diff:>9.1e}")
    ok = len(losses) == len(ref) and worst <= rtol
    print(f"check: max relative difference {worst:.2e} {'<=' if ok else '>'} rtol {rtol:.0e}: "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


# -------------------------------------------------------------------------- main

def _launched() -> bool:
    return "WORLD_SIZE" in os.environ


def _parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="hcomm", help="torch.distributed backend (hcomm, gloo)")
    ap.add_argument("--config", help="JSON file replacing CONFIG")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config entry, e.g. --set zero_stage=2 --set model.hidden=96")
    ap.add_argument("--steps", type=int, help="training steps (train.steps)")
    ap.add_argument("--check", action="store_true", help="compare the loss curve with the single-process run")
    ap.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance of --check")
    ap.add_argument("--json", help="rank 0 writes losses, reference and verdict here")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    import hcomm.torch  # noqa: F401  registers "hcomm"; under mpirun fills RANK/WORLD_SIZE/MASTER_*
    config = load_config(args)
    # One intra-op thread per process: the model is tiny, and ranks (or other jobs) share
    # the host's cores, where more threads only contend (10x slower steps seen on 2 cores).
    torch.set_num_threads(1)
    if not _launched():
        print("no launcher (WORLD_SIZE unset): the single-process run of the dense model; "
              "the parallel degrees of the config do not apply")
        train_single(config)
        return 0
    dist.init_process_group(args.backend)
    rank = dist.get_rank()
    log = print if rank == 0 else (lambda *a, **k: None)
    try:
        result = train_parallel(config, lambda msg: log(msg, flush=True))
        ok = True
        if args.check and rank == 0:
            print("\nsingle-process run (dense model, same seed and batches):", flush=True)
            result["reference"] = train_single(config, log=lambda msg: None)
            ok = compare(result["losses"], result["reference"], args.rtol)
        if args.json and rank == 0:
            with open(args.json, "w") as f:
                json.dump({**result, "backend": args.backend, "check": args.check, "ok": ok, "rtol": args.rtol}, f)
        verdict = torch.tensor([0 if ok else 1])
        dist.broadcast(verdict, 0)       # every rank exits with rank 0's verdict
        return int(verdict.item())
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
