"""Elastic training: keep going when a data-parallel rank dies, without restarting anyone.

    srun -n 4 --kill-on-bad-exit=0 python examples/train_elastic.py --ckpt /shared/ckpt
    srun -n 4 --kill-on-bad-exit=0 python examples/train_elastic.py --ckpt /shared/ckpt --set pipeline_stages=2
    srun -n 3 python examples/train_elastic.py --ckpt /shared/ckpt --resume 4   # from step 4's checkpoint

The launcher must let the other ranks live when one dies: srun with
--kill-on-bad-exit=0, or any launcher that starts the processes and waits for them.
torchrun's agent and mpirun terminate every worker as soon as one fails.

The model, data and trainer are examples/train_gpt.py's (ZeRO, optional pipeline). The
recipe:

1. every --every steps, every rank saves its ZeRO shard (save_sharded; one directory
   per pipeline stage, since each stage has its own dp-sharded optimizer);
2. a rank dies mid-step: every survivor's collective fails within HCOMM_TIMEOUT (sooner:
   a dead peer is seen at once), and each calls hcomm.torch.shrink_world(): hcomm agrees
   on who is left and torch is initialised again on them;
3. the survivors keep the largest mesh they can: whole pipelines (data-parallel replicas
   whose every stage survived); a rank whose pipeline lost a stage leaves with exit 0,
   and the others drop it with a second shrink_world(exclude=...);
4. a checkpoint the failure interrupted (no `done` marker) is discarded; the mesh is
   rebuilt with dp - k (the same global batch, so more micro-batches per step), the
   last complete checkpoint is loaded resharded (load_sharded reads any dp size), and
   training goes on from the step after it.

With the same global batch, the loss curve after the resume is the one a run started
from that checkpoint on the smaller mesh gives (--resume), float32 summation order aside:
tests/test_shrink_elastic.py checks it. --kill-rank/--kill-step make a rank SIGKILL
itself at a random moment inside that step (or, with --kill-where save, inside the
checkpoint save that follows it), for the tests and for trying it out. Only
communication failures (hcomm.Error, torch's RuntimeError wrapping one) start a recovery;
any other error ends the rank, so a bug cannot turn into an endless shrink loop.
"""
import argparse
import json
import os
import random
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

import hcomm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_gpt import CONFIG, Trainer, apply_overrides  # noqa: E402

ELASTIC = {
    "tensor_parallel_size": 1, "pipeline_stages": 1, "zero_stage": 1, "micro_batch_size": 1,
    "global_batch_size": 12,        # divisible by every dp this recipe shrinks to (4, 3, 2, 1)
    "parallel_strategy": None, "sequence_parallel": False,
    "model": {"vocab_size": 64, "seq_len": 16, "hidden": 32, "heads": 4, "n_layers": 2},
    "train": {**CONFIG["train"], "steps": 8},
}


def ckpt_dir(root, step, stage):
    return os.path.join(root, f"step-{step:05d}", f"pp{stage}")


def build(config):
    from hcomm.parallel.mesh import ParallelConfig, build_mesh

    pcfg = ParallelConfig.from_config(config, dist.get_world_size())
    mesh = build_mesh(pcfg)
    return pcfg, mesh, Trainer(config, pcfg, mesh)


def save(trainer, root, step, die=None):
    """`die`: a note file; this rank is killed after writing its shard, before the others
    call the checkpoint complete (the case an interrupted checkpoint must survive)."""
    from hcomm.parallel.zero.checkpoint import save_sharded

    save_sharded(trainer.zopt, ckpt_dir(root, step, trainer.mesh.pp_rank))
    if die:
        kill_now(die)
    dist.barrier()   # every stage's files exist before any rank calls the checkpoint complete
    if dist.get_rank() == 0:
        with open(os.path.join(root, f"step-{step:05d}", "done"), "w") as f:
            f.write(str(step))


def last_checkpoint(root):
    done = [int(d[5:]) for d in os.listdir(root) if d.startswith("step-")
            and os.path.exists(os.path.join(root, d, "done"))] if os.path.isdir(root) else []
    return max(done) if done else None


def discard_unfinished(root):
    """Remove the checkpoints a failure interrupted (no `done` marker): their shards belong
    to the old dp group, and saving that step again on the new mesh would be refused as
    another group's checkpoint. New rank 0 removes them; the others wait for it."""
    import shutil

    if dist.get_rank() == 0 and os.path.isdir(root):
        for d in os.listdir(root):
            if d.startswith("step-") and not os.path.exists(os.path.join(root, d, "done")):
                shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    dist.barrier()


def load(trainer, root, step):
    from hcomm.parallel.zero.checkpoint import load_sharded

    load_sharded(trainer.zopt, ckpt_dir(root, step, trainer.mesh.pp_rank))


def kill_now(note=None):
    """SIGKILL this process; `note`: a file that receives the moment (to time the recovery)."""
    if note:
        with open(note, "w") as f:
            f.write(repr(time.time()))
    os.kill(os.getpid(), signal.SIGKILL)


def arm_kill(seconds, note=None):
    """kill_now after `seconds`, from a thread: it lands wherever the step is then."""
    threading.Timer(seconds, kill_now, args=(note,)).start()


def whole_replicas(pcfg, old_ranks):
    """Which survivors (new ranks) keep a complete pipeline: returns the new ranks to keep."""
    from hcomm.parallel.mesh import coords

    by_replica = {}
    for new, old in enumerate(old_ranks):
        c = coords(pcfg, old)
        by_replica.setdefault((c["dp"], c["tp"]), []).append(new)
    stages = pcfg.pp
    return sorted(r for members in by_replica.values() if len(members) == stages for r in members)


def phase(msg):
    """Every rank says on stderr where its recovery is, so a stuck one names the phase it
    stopped in (a launcher's log shows the last line of each rank)."""
    print(f"[rank {os.environ.get('RANK', os.environ.get('SLURM_PROCID', '?'))} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def recover(config, pcfg, root):
    """After a failure: shrink, drop broken pipelines, rebuild. None when this rank leaves."""
    import hcomm.torch

    phase("shrink_world: agreeing on who is left")
    rank, world, old_ranks = hcomm.torch.shrink_world()
    phase(f"shrunk: rank {rank} of {world} (old ranks {old_ranks})")
    keep = whole_replicas(pcfg, old_ranks)
    if rank not in keep:
        phase("leaving with exit 0: my pipeline lost a stage")
        dist.destroy_process_group()
        return None
    if len(keep) < world:
        phase(f"shrink_world: dropping ranks {[r for r in range(world) if r not in keep]} (broken pipelines)")
        hcomm.torch.shrink_world(exclude=[r for r in range(world) if r not in keep])
    phase("discarding unfinished checkpoints")
    discard_unfinished(root)
    phase("rebuilding the mesh")
    return build(config)


def run(config, args, log):
    pcfg, mesh, trainer = build(config)
    step = 0
    if args.resume is not None:
        load(trainer, args.ckpt, args.resume)
        step = args.resume
    losses, events, last = {}, {}, 0.0
    while step < config["train"]["steps"]:
        victim = args.kill_rank == dist.get_rank() and args.kill_step == step and "resumed_at" not in events
        dying, dying_in_save = victim and args.kill_where == "step", victim and args.kill_where == "save"
        note = f"{args.json}.killed" if args.json else None
        if dying:  # somewhere inside this step, judged by the last step's length
            arm_kill(random.Random(args.seed).random() * last, note)
        try:
            t0 = time.perf_counter()
            losses[step] = trainer.step(step)
            last = time.perf_counter() - t0
            if dying:  # the step was quicker than the timer: die at its end, before the next
                kill_now(note)
            log(f"step {step + 1:>3}  loss {losses[step]:.5f}  dp={pcfg.dp} pp={pcfg.pp}")
            step += 1
            if step % args.every == 0 and step < config["train"]["steps"]:
                save(trainer, args.ckpt, step, die=(note or os.devnull) if dying_in_save else None)
        except (hcomm.Error, RuntimeError) as e:  # the collective that saw the death (hcomm, or torch's wrapper)
            events["failed_at"] = time.time()
            phase(f"step {step + 1} failed: {type(e).__name__}: {str(e)[:300]}")
            built = recover(config, pcfg, args.ckpt)
            if built is None:
                events["left"] = True
                return losses, events
            pcfg, mesh, trainer = built
            step = last_checkpoint(args.ckpt) or 0
            if step:
                phase(f"loading step {step}'s checkpoint")
                load(trainer, args.ckpt, step)
            events.update(resumed_at=time.time(), resumed_from=step, dp=pcfg.dp)
            losses = {s: v for s, v in losses.items() if s < step}
            phase(f"resumed from step {step}'s checkpoint on {dist.get_world_size()} ranks: dp={pcfg.dp} pp={pcfg.pp}")
    return losses, events


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="checkpoint directory (shared by all ranks)")
    ap.add_argument("--every", type=int, default=2, help="save a checkpoint every this many steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--resume", type=int, help="start from this step's checkpoint")
    ap.add_argument("--kill-rank", type=int, default=-1, help="this rank SIGKILLs itself during --kill-step")
    ap.add_argument("--kill-step", type=int, default=-1)
    ap.add_argument("--kill-where", choices=("step", "save"), default="step",
                    help="step: at a random moment of --kill-step; save: inside the checkpoint save after it")
    ap.add_argument("--seed", type=int, default=0, help="picks the moment of the kill inside the step")
    ap.add_argument("--json", help="each rank writes {losses, events} to JSON.<rank>")
    args = ap.parse_args(argv)
    import hcomm.torch  # noqa: F401  registers "hcomm"

    config = apply_overrides(json.loads(json.dumps(ELASTIC)), args.set)
    torch.set_num_threads(1)
    dist.init_process_group("hcomm")
    first_rank = dist.get_rank()
    log = (lambda msg: print(msg, flush=True)) if first_rank == 0 else (lambda msg: None)
    losses, events = run(config, args, log)
    if args.json:
        with open(f"{args.json}.{first_rank}", "w") as f:
            json.dump({"losses": {str(k): v for k, v in losses.items()}, "events": events}, f)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
