"""The cost of one candidate: predicted step time and memory per rank, as named terms.

Every term is stated in docs/planner.md; in short, for a candidate with m micro-batches
per pipeline, on the slowest pipeline rank:

    per micro-batch   F = share * sum(fwd_s) + tp collectives (forward) [+ ZeRO-3 gathers]
                      B = share * sum(bwd_s) + tp collectives (backward)
                          [+ ZeRO-2 reduce-scatter, + ZeRO-3 gathers and reduce-scatter]
    pipeline          the schedule checker's makespan with (F, B) per rank and the p2p price
                      per message: m (F + B) plus the bubble (parallel/pipeline/check.py)
    step end          dp gradient sync (ZeRO 0: allreduce; 1: reduce-scatter + all-gather;
                      2: all-gather), the optimizer step, clipping and the step's control
                      collectives (status all-gather over the world, loss allreduce over dp)

`share` = ranks per core on the rank's machine (>= 1). Communication is never hidden
behind compute unless every machine has a spare core per rank (`overlap`): the ranks
then overlap the ZeRO-2/3 collectives with the backward.

Memory per rank: parameters, gradients, master weights and optimizer state by the ZeRO
formulas of parallel/zero/memory.py (P = parameter bytes, M = master bytes, K = AdamW's
8 bytes), activations = peak stashed stage chunks (schedule checker) x the chunk's saved
bytes (profile), communication buffers, and the process's own baseline (torch + hcomm).
"""
from dataclasses import dataclass, field
from typing import Dict, List

from .pricing import pairs
from .space import Candidate, groups as axis_groups

BUCKET_BYTES = 25 * 2 ** 20     # ZeroOptimizer's default bucket_mb
ZERO_INFLIGHT = 2               # parallel/zero stage12/stage3 _INFLIGHT
P2P_HEADER_BYTES = 64 * 8       # the pipeline's control block (header_words int64)
STATE_BYTES = {"AdamW": 8}


@dataclass
class Settings:
    global_batch_size: int
    param_bytes: int = 4          # P: 4 fp32, 2 bf16
    master_bytes: int = 0         # M: 0 when fp32 parameters are their own master
    state_bytes: int = 8          # K: AdamW
    budget: int = 0               # bytes per rank
    clip: bool = True


@dataclass
class Estimate:
    cand: Candidate
    terms: Dict[str, float]                    # seconds, per step
    memory: Dict[str, float]                   # bytes, the worst rank
    detail: Dict[str, object] = field(default_factory=dict)
    budget: int = 0

    @property
    def step_s(self) -> float:
        return self.terms["total"]

    @property
    def memory_total(self) -> float:
        return self.memory["total"]

    @property
    def fits(self) -> bool:
        return self.memory_total <= self.budget

    def tokens_per_s(self, tokens_per_step: int) -> float:
        return tokens_per_step / self.step_s


# ----------------------------------------------------------------------- stages

def balanced_sizes(layers: int, stages: int) -> List[int]:
    """Layers per stage as examples/train_gpt.py cuts them (first stages take the remainder)."""
    return [layers // stages + (1 if i < layers % stages else 0) for i in range(stages)]


def chunks_of_rank(rows, pp, vpp) -> List[List[List[dict]]]:
    """For each pp rank, its stage chunks (each a list of profile rows); stage s lives on
    pp rank s % pp, as the pipeline schedules place them."""
    sizes = balanced_sizes(len(rows), pp * vpp)
    stages, at = [], 0
    for n in sizes:
        stages.append(rows[at:at + n])
        at += n
    return [[stages[s] for s in range(r, pp * vpp, pp)] for r in range(pp)]


# ------------------------------------------------------------------------- model

class CostModel:
    def __init__(self, cluster, pricer, profile, settings: Settings):
        self.cluster, self.pricer, self.profile, self.s = cluster, pricer, profile, settings
        machine = cluster.machine_of()
        self.share = {r: self.compute_factor(cluster, profile, r) for r in range(cluster.world_size)}
        counts = {}
        for r in range(cluster.world_size):
            counts[machine[r]] = counts.get(machine[r], 0) + 1
        self._reports = {}
        self.overlap = all(cluster.cores_of_machine(mc) >= 2 * n for mc, n in counts.items())

    @staticmethod
    def compute_factor(cluster, profile, rank) -> float:
        """How much slower than in the profile a rank computes in the job. Calibrated: the
        numpy piece with every rank computing at once (now) over the same piece alone
        during the profile, measured directly. Described: ranks per core (>= 1)."""
        cal = cluster.calibration or {}
        if cal.get("together_s") and profile.get("piece_s"):
            return max(1.0, cal["together_s"] / profile["piece_s"])
        return cluster.compute_share_of_rank(rank)

    def rows(self, c: Candidate):
        from .profile import shape_key

        return self.profile["shapes"][shape_key(c.tp, c.micro_batch_size, c.sequence_parallel)]

    def estimate(self, c: Candidate) -> Estimate:
        g = axis_groups(c.rank_order, c.dp, c.tp, c.pp)
        per_rank = chunks_of_rank(self.rows(c), c.pp, c.vpp)
        m = c.microbatches(self.s.global_batch_size)
        terms, detail = {}, {}
        fb = [self._microbatch(c, g, chunks, r) for r, chunks in enumerate(per_rank)]
        worst = max(range(c.pp), key=lambda r: fb[r]["F"] + fb[r]["B"])
        for k, v in fb[worst].items():
            if k not in ("F", "B"):
                terms[k] = v * m
        p2p = self._p2p(c, g, per_rank)
        report = self._pipeline(c, m, fb[worst]["F"], fb[worst]["B"], p2p)
        busy = m * (fb[worst]["F"] + fb[worst]["B"])
        terms["pipeline bubble + p2p"] = max(0.0, report.makespan - busy) if report else 0.0
        terms.update(self._step_end(c, g, per_rank))
        terms["total"] = (report.makespan if report else busy) + sum(
            v for k, v in terms.items() if k.startswith(("dp ", "optimizer", "control", "clip")))
        detail.update(microbatches=m, slowest_pp_rank=worst, F=fb[worst]["F"], B=fb[worst]["B"], p2p_s=p2p,
                      bubble=report.bubble_fraction if report else 0.0,
                      peak_stash=report.peak_in_flight if report else [1], groups=g)
        memory = self._memory(c, per_rank, report)
        return Estimate(c, terms, memory, detail, self.s.budget)

    # ---------------------------------------------------------- per micro-batch
    def _microbatch(self, c, g, chunks, pp_rank) -> Dict[str, float]:
        ranks = [grp[pp_rank] for grp in g["pp"]] if c.pp > 1 else list(range(len(c.rank_order)))
        share = max(self.share[r] for r in ranks)
        rows = [row for chunk in chunks for row in chunk]
        tp_groups = [grp for grp in g["tp"] if grp[0] in ranks]
        dp_groups = [grp for grp in g["dp"] if grp[0] in ranks]
        tp_f = sum(self._calls(r["fwd_collectives"], tp_groups, share * r["fwd_s"]) for r in rows)
        tp_b = sum(self._calls(r["bwd_collectives"], tp_groups, share * r["bwd_s"]) for r in rows)
        out = {"compute forward": share * sum(r["fwd_s"] for r in rows),
               "compute backward": share * sum(r["bwd_s"] for r in rows), "tp collectives": tp_f + tp_b}
        z_f, z_b = self._zero_microbatch(c, rows, dp_groups, out["compute backward"], share)
        out["dp ZeRO per micro-batch"] = z_f + z_b
        out["F"] = out["compute forward"] + tp_f + z_f
        out["B"] = out["compute backward"] + tp_b + z_b
        return out

    def _calls(self, calls, tp_groups, compute_s):
        """A layer's collectives; the layer's compute is spread evenly between them (what
        the wake-up cost depends on)."""
        after = compute_s / max(1, len(calls))
        return sum(self.pricer.collective(kind, nbytes, tp_groups, after) for kind, nbytes, _ in calls)

    def _zero_microbatch(self, c, rows, dp_groups, backward_s, share):
        """(forward, backward) seconds of ZeRO-2's reduce-scatter and ZeRO-3's gathers,
        issued inside every micro-batch."""
        if c.dp == 1 or c.zero_stage < 2:
            return 0.0, 0.0
        pb = self.s.param_bytes
        if c.zero_stage == 2:
            f, b = 0.0, self._bucketed("reduce_scatter", sum(r["params"] for r in rows) * pb, dp_groups, backward_s)
        else:
            f = b = 0.0
            for r in rows:
                units = max(1, r["units"])
                unit_bytes = r["params"] * pb / units
                gather = self.pricer.collective("allgather", unit_bytes, dp_groups, 0.0)
                rs = self.pricer.collective("reduce_scatter", unit_bytes, dp_groups, 0.0)
                # the control-flow check opens each unit's use, after the previous unit's compute
                check_f = self.pricer.collective("allgather", 24 * c.dp, dp_groups, share * r["fwd_s"] / units)
                check_b = self.pricer.collective("allgather", 24 * c.dp, dp_groups, share * r["bwd_s"] / units)
                f += units * (gather + check_f)
                b += units * (gather + check_b + rs)
        if self.overlap:    # a spare core per rank: the backward's collectives run beside it
            b -= min(b, backward_s)
        return f, b

    def _bucketed(self, kind, nbytes, groups, compute_s=None):
        """nbytes in 25 MiB buckets; `compute_s` spread over them (None: the first comes
        after a long stretch of compute, the others right after it)."""
        full, rest = divmod(int(nbytes), BUCKET_BYTES)
        n = full + (1 if rest else 0)
        if compute_s is None:
            afters = [None] + [0.0] * (n - 1)
        else:
            afters = [compute_s / max(1, n)] * n
        sizes = [BUCKET_BYTES] * full + ([rest] if rest else [])
        return sum(self.pricer.collective(kind, size, groups, a) for size, a in zip(sizes, afters))

    # ------------------------------------------------------------------ pipeline
    def _p2p(self, c, g, per_rank):
        if c.pp == 1:
            return 0.0
        out = max(chunk[-1]["out_bytes"] for chunks in per_rank for chunk in chunks)
        fwd = min(sum(r["fwd_s"] for r in chunk) for chunks in per_rank for chunk in chunks)
        return self.pricer.collective("send", out + P2P_HEADER_BYTES, pairs(g["pp"]), fwd * max(self.share.values()))

    def _pipeline(self, c, m, f, b, p2p):
        """The schedule checker's report for per-rank costs (f, b) and p2p per message.
        The makespan scales with the three costs together, so reports are cached by the
        ratios b/f and p2p/f to 3 significant digits (at most 0.5 % off) and rescaled."""
        from dataclasses import replace

        from hcomm.parallel.pipeline import build_schedule, check_schedule

        key = (c.schedule, c.pp, m, c.vpp, float(f"{b / f:.3g}"), float(f"{p2p / f:.3g}"))
        if key not in self._reports:
            self._reports[key] = check_schedule(build_schedule(c.schedule, c.pp, m, c.vpp), 1.0, key[4], key[5])
        r = self._reports[key]
        return replace(r, makespan=r.makespan * f, busy=[x * f for x in r.busy])

    # ------------------------------------------------------------------ step end
    def _step_end(self, c, g, per_rank) -> Dict[str, float]:
        pb, terms = self.s.param_bytes, {}
        sync, opt = 0.0, 0.0
        for r, chunks in enumerate(per_rank):
            psi = sum(row["params"] for chunk in chunks for row in chunk)
            ranks = [grp[r] for grp in g["pp"]]
            dp_groups = [grp for grp in g["dp"] if grp[0] in ranks]
            share = max(self.share[x] for x in ranks)
            sync = max(sync, self._dp_sync(c, psi * pb, dp_groups))
            updated = psi / c.dp if c.zero_stage else psi
            opt = max(opt, share * updated * self.profile["optimizer_s_per_element"])
        terms["dp gradient sync"] = sync
        terms["optimizer step"] = opt
        world = [list(range(len(c.rank_order)))]
        # the status all-gather follows the pipeline's last message; the loss allreduce the
        # optimizer step; the norm allreduces follow each other
        terms["control (status, loss)"] = (self.pricer.collective("allgather", 16 * len(c.rank_order), world, 0.0)
                                           + self.pricer.collective("allreduce", 8, g["dp"], opt))
        if self.s.clip:
            axes = ("tp", "pp") + (("dp",) if c.zero_stage else ())
            terms["clip (norm allreduces)"] = sum(self.pricer.collective("allreduce", 8, g[a], 0.0) for a in axes)
        return terms

    def _dp_sync(self, c, nbytes, dp_groups):
        if c.dp == 1:
            return 0.0
        if c.zero_stage == 0:       # the pipeline's _average_grads: one flat allreduce
            return self.pricer.collective("allreduce", nbytes, dp_groups)
        gather = self._bucketed("allgather", nbytes, dp_groups)
        if c.zero_stage == 1:
            return self._bucketed("reduce_scatter", nbytes, dp_groups) + gather
        return gather if c.zero_stage == 2 else 0.0

    # -------------------------------------------------------------------- memory
    def _memory(self, c, per_rank, report) -> Dict[str, float]:
        worst = None
        for r, chunks in enumerate(per_rank):
            mem = self.memory_of_rank(c, chunks, report.peak_in_flight[r] if report else 1)
            if worst is None or mem["total"] > worst["total"]:
                worst = mem
        return worst

    def memory_of_rank(self, c, chunks, peak_stash) -> Dict[str, float]:
        """Bytes one pp rank holds, term by term (model state by memory.py's formulas)."""
        rows = [row for chunk in chunks for row in chunk]
        mem = model_state(sum(r["params"] for r in rows), c.dp, c.zero_stage, self.s.param_bytes,
                          self.s.master_bytes, self.s.state_bytes)
        chunk_saved = max(sum(r["saved_bytes"] for r in chunk) for chunk in chunks)
        mem["activations"] = peak_stash * chunk_saved
        mem["comm buffers"] = self._buffers(c, rows, chunks)
        mem["runtime (torch + hcomm)"] = self.profile.get("baseline_rss", 0)
        mem["total"] = sum(mem.values())
        return mem

    def _buffers(self, c, rows, chunks):
        pb = self.s.param_bytes
        psi_bytes = sum(r["params"] for r in rows) * pb
        p2p = 2 * max(chunk[-1]["out_bytes"] for chunk in chunks) if c.pp > 1 else 0
        if c.dp == 1:
            return p2p
        if c.zero_stage == 0:
            return p2p + psi_bytes                  # the flat copy _average_grads allreduces
        if c.zero_stage == 3:
            unit = max(r["params"] * pb / max(1, r["units"]) for r in rows)
            return p2p + (2 + ZERO_INFLIGHT + 1) * unit
        return p2p + min(psi_bytes, (ZERO_INFLIGHT + 1) * BUCKET_BYTES)


def model_state(psi, n, stage, p, m, k) -> Dict[str, float]:
    """parallel/zero/memory.py's rows: parameters PΨ (stage 3: /N), gradients PΨ (stage
    >= 2: /N), master weights MΨ/N, optimizer state KΨ/N; stage 0 shards nothing."""
    shard = (lambda x: x / n) if stage else (lambda x: x)
    return {"parameters": p * psi / (n if stage == 3 else 1),
            "gradients": p * psi / (n if stage >= 2 else 1),
            "master weights": shard(m * psi),
            "optimizer state": shard(k * psi)}
