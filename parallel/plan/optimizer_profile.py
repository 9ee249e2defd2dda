"""The optimizer step's cost per element, per ZeRO stage, measured on the real code in the
profile's one process.

What one rank's step touches depends on the stage (examples/train_gpt.py, parallel/zero),
for Ψ the elements of its pp stage and dp its data-parallel degree:

    stage 0   hcomm.parallel.clip's norm over Ψ, then plain AdamW over Ψ (on CPU torch's
              per-operation loop: one pass over the tensors per arithmetic operation)
    stage 1   ZeroOptimizer: the whole accumulated gradient copied into flat buckets
              (Ψ: they are reduce-scattered at the step), then over its shard (Ψ/dp) the
              clip's norm and the inner AdamW step, which ZeroOptimizer makes fused
              (one pass over master, gradient and state: 0.6 ns an element against the
              per-operation loop's 3.3 here, one thread)
    stage 2   the shard's norm and fused step only (the gradient went into the buckets
              during the backward)
    stage 3   the same; the parameters' flat buffer is the master, nothing is copied back

so a step costs  Ψ · full[z] + Ψ/dp · shard[z]  (profile key "optimizer_step_s":
{stage: [full, shard]}). Each stage's step is timed on a one-rank group (the shard is
then all of Ψ): the least thread CPU time of REPEAT steps (after an untimed backward each,
the variants in turns so that they see the same load), the slope per element between
steps of NUMEL / 8 and NUMEL elements (the per-tensor bookkeeping is overhead.py's). Stage
0 is all `full`; stages 2 and 3 all `shard`; stage 1's `full` is its step less stage 2's
(on one rank that also holds the group of one's reduce-scatter copy, 0.2 ns an element;
with dp > 1 the reduce-scatter is priced as the dp gradient sync).

Pricing every stage as Ψ/dp elements of plain AdamW (before) priced ZeRO-1's step as
ZeRO-2/3's though it also copies the whole gradient (opt.step 13.1-18.1 ms against
4.9-9.9, dp2 pp2 mb4 of the wide GPT, the sixth round's breakdown at load 8-12), and
ZeRO-0's clip norm (a float64 copy of every gradient) not at all.
"""
import time

NUMEL = 1 << 20      # elements of the long step's parameter (16 MiB with its state, past L2)
WIDTH = 1024         # the parameter is a Linear(WIDTH, n / WIDTH) weight
REPEAT = 5


def _variant(stage, numel, group):
    """(prepare, step) for one stage at `numel` elements on a one-rank group: prepare runs
    a backward (untimed), step is what train_gpt.py's step runs after the pipeline."""
    import torch
    from torch import nn

    from hcomm.parallel.clip import clip_grad_norm_
    from hcomm.parallel.zero import ZeroOptimizer

    module = nn.Sequential(nn.Linear(WIDTH, numel // WIDTH, bias=False))
    x = torch.randn(1, WIDTH, generator=torch.Generator().manual_seed(0))
    if stage == 0:
        opt = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.01)

        def step():
            clip_grad_norm_(module, 1.0)
            opt.step()
    else:
        opt = ZeroOptimizer(module, torch.optim.AdamW, stage=stage, group=group, clip_grad_norm=1.0,
                            print_plan=False, lr=1e-3, weight_decay=0.01)
        step = opt.step

    def prepare():
        opt.zero_grad()
        module(x).sum().backward()
    return prepare, step


def _least_steps(variants, repeat, clock=time.thread_time):
    """Least seconds of each variant's step, the variants in turns (a warm-up each first)."""
    for prepare, step in variants.values():
        prepare()
        step()
    times = {k: [] for k in variants}
    for _ in range(repeat):
        for k, (prepare, step) in variants.items():
            prepare()
            t0 = clock()
            step()
            times[k].append(clock() - t0)
    return {k: min(v) for k, v in times.items()}


def split_per_element(least, numel=NUMEL):
    """{stage: [full, shard]} seconds per element from the least step times {(stage, n): s}
    at n = numel / 8 and numel (see the module docstring); every figure >= 0."""
    span = numel - numel // 8
    slope = {z: max(0.0, (least[z, numel] - least[z, numel // 8]) / span) for z in {z for z, _ in least}}
    out = {"0": [slope[0], 0.0]}
    if 2 in slope:
        out["1"] = [max(0.0, slope[1] - slope[2]), slope[2]]
        out["2"] = [0.0, slope[2]]
    if 3 in slope:
        out["3"] = [0.0, slope[3]]
    return out


def measure_optimizer_step(group, stages=(0, 1, 2, 3), repeat=REPEAT, numel=NUMEL):
    """{stage: [full, shard]} for the stages given (stage 1 needs stage 2); `group` a
    one-rank process group. One thread, as a rank's step runs."""
    if 1 in stages and 2 not in stages:
        raise ValueError(f"stage 1's full-gradient copy is its step less stage 2's: stages {stages} lack 2")
    variants = {(z, n): _variant(z, n, group) for z in (0,) + tuple(s for s in stages if s) for n in
                (numel // 8, numel)}
    return split_per_element(_least_steps(variants, repeat), numel)
