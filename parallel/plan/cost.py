"""The cost of one candidate: predicted step time and memory per rank, as named terms.

Every term is stated in docs/planner.md; in short, for a candidate with m micro-batches
per pipeline, on the slowest pipeline rank:

    per micro-batch   F = f * (sum(fwd_s) + runtime/2) + tp collectives (forward) [+ ZeRO-3 gathers]
                      B = f * (sum(bwd_s) + runtime/2) + tp collectives (backward)
                          [+ ZeRO-2 reduce-scatter, + ZeRO-3 gathers and reduce-scatter]
                          [zb-h1, zb-v: less W = f * sum(w_s), the weight gradients]
    pipeline          the schedule checker's makespan with (F, B[, W]) per rank and the p2p
                      price per message: m (F + B + W) plus the bubble (check.py)
    step end          dp gradient sync (ZeRO 0: allreduce; 1: reduce-scatter + all-gather;
                      2: all-gather), the optimizer step and the step's own bookkeeping
                      (f(all of the machine's ranks) * profiled: every rank is busy then;
                      the per-element work what the rank's ZeRO stage touches,
                      optimizer_profile.py, at calibrate.py's optimizer factor, measured
                      with every rank updating, where calibrated),
                      clipping and the step's control collectives (status
                      all-gather over the world, loss allreduce over dp)

Every collective call also pays the measured per-call overhead (calibrate.py's call_s,
call_async_s by group size, every rank running), and every p2p post a rank makes its
measured posting time (post_s) on that rank's own timeline.
`f` = the compute factor of the rank's machine with k of its ranks active at once
(Cluster.compute_factor): k starts at all of them and is then set to the ranks' busy
time over the step (a pipeline's idle ranks leave the cores to the others, less the
WAIT_CPU_SHARE of a wait that still polls and yields on a core), until it settles
(estimate()). Shared-memory communication is CPU work and hides behind no compute unless every
machine has a spare core per rank (`overlap`: the ranks then overlap the ZeRO-2/3
collectives with the backward). The wire time of an async collective over a network link
(its dp group spans hosts) hides behind the compute the rank issues after it, up to that
compute's length: ZeRO-2's reduce-scatters behind the next micro-batch (not the last
micro-batch's, which the optimizer step waits for), ZeRO-3's prefetched gathers behind
the unit before (see _zero_microbatch).

Memory per rank: parameters, gradients, master weights and optimizer state by the ZeRO
formulas of parallel/zero/memory.py (P = parameter bytes, M = master bytes, K = AdamW's
8 bytes), activations = peak stashed stage chunks (schedule checker; F to W for a split
backward) x the chunk's saved bytes (profile), communication buffers, and the process's
own baseline (torch + hcomm).
"""
from dataclasses import dataclass, field
from typing import Dict, List

from .space import SPLIT_BACKWARD, Candidate, groups as axis_groups

BUCKET_BYTES = 25 * 2 ** 20     # ZeroOptimizer's default bucket_mb
ZERO_INFLIGHT = 2               # parallel/zero stage12/stage3 _INFLIGHT
P2P_HEADER_BYTES = 64 * 8       # the pipeline's control block (header_words int64)
STATE_BYTES = {"AdamW": 8}
# The share of a waiting rank's wall time that still uses a core, on a machine with more
# ranks than cores: hcomm's waits poll (HCOMM_SPIN_US), then sched_yield 5000 times
# (HCOMM_YIELD_ITERS when oversubscribed) before they sleep, on the caller's thread and
# the progress thread. Measured (benchmarks/planner_breakdown.py's `cpu` table, wide GPT,
# 4 ranks on 2 cores, load 2.4-4.9; docs/planner.md, eighth round): CPU of the waits
# (caller and other threads) over their wall 0.14-0.43 (median 0.28) for dp1 pp4 mb1
# 1F1B's ranks, 0.16-0.43 GPipe's, 0.07-0.18 for m = 1's few long waits. With more cores
# than ranks nobody waits for the core a waiter burns.
WAIT_CPU_SHARE = 0.25


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


def stage_placement(schedule: str, pp: int, vpp: int):
    """The pp rank of every stage as the schedule places them (schedules.stage_ranks):
    stage s on pp rank s % pp, except zb-v's V (rank r holds stages r and 2pp-1-r)."""
    from hcomm.parallel.pipeline.schedules import stage_ranks

    return stage_ranks("v" if schedule == "zb-v" else "loop", pp, pp * vpp)


def chunks_of_rank(rows, pp, vpp, schedule: str = "1f1b") -> List[List[List[dict]]]:
    """For each pp rank, its stage chunks in stage order (each a list of profile rows),
    placed as the schedule places them (stage_placement)."""
    sizes = balanced_sizes(len(rows), pp * vpp)
    stages, at = [], 0
    for n in sizes:
        stages.append(rows[at:at + n])
        at += n
    where = stage_placement(schedule, pp, vpp)
    return [[stages[s] for s in range(pp * vpp) if where[s] == r] for r in range(pp)]


def weight_grad_s(row) -> float:
    """The W share of a layer's backward (zero-bubble schedules): the profile's measured
    w_s (wgrad.py's split run on the layer, profile.py); a row without one (a profile
    written before it was measured, a hand-written one) takes half of bwd_s, the
    checker's own rule (a Linear's weight gradient g^T x costs the FLOPs of its input
    gradient g W)."""
    w = row.get("w_s")
    return row["bwd_s"] / 2 if w is None else min(w, row["bwd_s"])


# ------------------------------------------------------------------------- model

class CostModel:
    def __init__(self, cluster, pricer, profile, settings: Settings):
        self.cluster, self.pricer, self.profile, self.s = cluster, pricer, profile, settings
        self.machine = cluster.machine_of()
        self.host = cluster.host_of()
        self.ranks_on = {}
        for mc in self.machine:
            self.ranks_on[mc] = self.ranks_on.get(mc, 0) + 1
        self._reports = {}
        self.overlap = all(cluster.cores_of_machine(mc) >= 2 * n for mc, n in self.ranks_on.items())
        self.wait_share = {mc: WAIT_CPU_SHARE if n > cluster.cores_of_machine(mc) else 0.0
                           for mc, n in self.ranks_on.items()}
        self.overheads = profile.get("overheads") or {}
        self.share, self.active, self._all_busy_share = {}, {}, {}   # set for each round of estimate()
        # The update is memory-bound: the matmul piece behind f(k) stays in cache and does
        # not see the ranks' updates slow each other (calibrate.optimizer_seconds).
        self._opt_factor = cluster.optimizer_factor(profile.get("optimizer_s_per_element"))

    def _set_active(self, active: Dict[str, float]):
        """Compute factor of every rank and the per-call collective overhead when `active`
        ranks of each machine compute at once."""
        rep = self.profile.get("piece_rep_s")
        self.share = {r: self.cluster.compute_factor(mc, active[mc], rep) for r, mc in enumerate(self.machine)}
        self.active = active
        # The step end runs on every rank of a machine at about the same time: a rank whose
        # stage finished first updates while the others still compute their last backward,
        # so nobody leaves the cores to it, whatever the pipeline phase's active count.
        self._all_busy_share = {mc: self.cluster.compute_factor(mc, float(n), rep) for mc, n in self.ranks_on.items()}

    def rows(self, c: Candidate):
        from .profile import shape_key

        return self.profile["shapes"][shape_key(c.tp, c.micro_batch_size, c.sequence_parallel)]

    def estimate(self, c: Candidate, rounds: int = 10, tol: float = 0.02) -> Estimate:
        """The estimate at the fixed point of the active ranks k (per machine) and the busy
        share of the step it predicts, k = sum over the machine's ranks of b + w (1 - b),
        b = min(1, busy / step), w the share of a wait that still uses a core
        (_busy_ranks): from every rank active, each round takes the new count, or halfway
        to it where the count turned back (so it cannot oscillate), until no machine's count
        moves by more than tol x k (at most `rounds` estimates). The earlier three rounds,
        each halfway, stopped short where f(k) is steep: dp1 pp4 mb8 (one micro-batch
        through four stages; fixed point k = 1.0) was priced at k = 1.8, f 3.7 against
        f(1) = 1.1 in that calibration, 41 ms against 18 at the fixed point (measured
        10-12)."""
        active = {mc: float(n) for mc, n in self.ranks_on.items()}
        step = {mc: 0.0 for mc in active}
        for i in range(rounds):
            self._set_active(active)
            est = self._estimate(c)
            est.detail["active_ranks"] = dict(active)      # what this estimate was made with
            now = self._busy_ranks(est)
            if i == rounds - 1 or all(abs(now[mc] - k) <= tol * k for mc, k in active.items()):
                break
            for mc, k in active.items():
                turned = step[mc] * (now[mc] - k) < 0
                active[mc] = (k + now[mc]) / 2 if turned else now[mc]
                step[mc] = active[mc] - k
        return est

    def _busy_ranks(self, est) -> Dict[str, float]:
        """Per machine, its ranks' busy share of the predicted step (>= 1), a rank's wait
        counted busy at the machine's wait_share (WAIT_CPU_SHARE: a waiting rank still
        polls and yields on a core). Without it a plan with a larger bubble got fewer
        active ranks, hence a lower compute factor, by more than its bubble cost: dp1 pp4
        mb1 of the wide GPT, zb-h1 (bubble 0.568) priced 3 % under 1F1B (0.512), measured
        21 % over; with f(k) = k (one core) a bubble cost nothing at all."""
        now = {mc: 0.0 for mc in self.ranks_on}
        for r, mc in enumerate(self.machine):
            b = min(1.0, est.detail["busy"][r] / est.step_s)
            now[mc] += b + self.wait_share[mc] * (1.0 - b)
        return {mc: max(1.0, k) for mc, k in now.items()}

    def _estimate(self, c: Candidate) -> Estimate:
        g = axis_groups(c.rank_order, c.dp, c.tp, c.pp)
        per_rank = chunks_of_rank(self.rows(c), c.pp, c.vpp, c.schedule)
        m = c.microbatches(self.s.global_batch_size)
        terms, detail = {}, {}
        fb = [self._microbatch(c, g, chunks, r) for r, chunks in enumerate(per_rank)]
        per_mb = [x["F"] + x["B"] + x.get("W", 0.0) for x in fb]
        worst = max(range(c.pp), key=lambda r: per_mb[r])
        for k, v in fb[worst].items():
            if k not in ("F", "B", "W", "busy"):
                terms[k] = v * m
        p2p = self._p2p(c, g, per_rank)
        w = [x["W"] for x in fb] if c.schedule in SPLIT_BACKWARD else None
        report = self._pipeline(c, m, [x["F"] for x in fb], [x["B"] for x in fb], p2p, w)
        busy = m * per_mb[worst]
        terms["pipeline bubble + p2p"] = max(0.0, report.makespan - busy) if report else 0.0
        end, busy_end = self._step_end(c, g, per_rank)
        terms.update(end)
        # the step end's own terms only: ZeRO's per-micro-batch collectives are inside F and
        # B, hence inside the makespan (a match on the "dp " prefix counted them twice)
        terms["total"] = (report.makespan if report else busy) + sum(end.values())
        busy_rank = [0.0] * len(c.rank_order)
        for pos, rank in enumerate(c.rank_order):
            r = pos // (c.dp * c.tp)
            busy_rank[rank] = m * fb[r]["busy"] + busy_end[r]
        detail.update(microbatches=m, slowest_pp_rank=worst, F=fb[worst]["F"], B=fb[worst]["B"],
                      W=fb[worst].get("W"), p2p_s=max(p2p),
                      p2p_per_link=p2p,
                      makespan=report.makespan if report else busy, F_per_rank=[x["F"] for x in fb],
                      bubble=report.bubble_fraction if report else 0.0,
                      peak_stash=report.peak_in_flight if report else [1], groups=g, busy=busy_rank,
                      compute_factor=max(self.share.values()), call_overhead_s=self._call_overhead(2))
        memory = self._memory(c, per_rank, report)
        return Estimate(c, terms, memory, detail, self.s.budget)

    def _coll(self, kind, nbytes, groups, async_op=False) -> float:
        """The tuner's price of one collective call plus the measured per-call overhead
        (async_op: issued async and waited for, as ZeRO's and the pipeline's are)."""
        price = self.pricer.collective(kind, nbytes, groups)
        if price <= 0:
            return 0.0
        return price + self._call_overhead(max(len(grp) for grp in groups), async_op)

    def _call_overhead(self, group_size, async_op=False) -> float:
        """calibrate.py's overhead of a call on a group of `group_size`, measured with every
        rank of the job running such groups: a rank waiting in a collective keeps polling
        and yielding before it sleeps, so during a plan's collectives all of a machine's
        ranks compete for its cores, not only those computing (ZeRO-3's per-unit gathers on
        4 ranks and 2 cores: 1.8 ms a call measured, where the pattern with 2 active ranks
        gave 0.3)."""
        return self.cluster.collective_overhead(group_size, async_op, max(self.ranks_on.values()))

    def _overhead(self, name, stage) -> float:
        return float((self.overheads.get(name) or {}).get(str(stage), 0.0))

    # ---------------------------------------------------------- per micro-batch
    def _microbatch(self, c, g, chunks, pp_rank) -> Dict[str, float]:
        ranks = [grp[pp_rank] for grp in g["pp"]] if c.pp > 1 else list(range(len(c.rank_order)))
        share = max(self.share[r] for r in ranks)
        rows = [row for chunk in chunks for row in chunk]
        tp_groups = [grp for grp in g["tp"] if grp[0] in ranks]
        dp_groups = [grp for grp in g["dp"] if grp[0] in ranks]
        tp_f = sum(self._calls(r["fwd_collectives"], tp_groups) for r in rows)
        tp_b = sum(self._calls(r["bwd_collectives"], tp_groups) for r in rows)
        units = sum(max(1, r["units"]) for r in rows)
        z = c.zero_stage if c.dp > 1 else 0
        runtime = share * (len(chunks) * self._overhead("microbatch_s", z)
                           + units * self._overhead("unit_microbatch_s", z))
        posting = self._posts_each_way(c, pp_rank) * self.cluster.post_overhead()
        out = {"compute forward": share * sum(r["fwd_s"] for r in rows),
               "compute backward": share * sum(r["bwd_s"] for r in rows),
               "runtime per micro-batch": runtime, "tp collectives": tp_f + tp_b, "p2p posting": 2 * posting}
        m = c.microbatches(self.s.global_batch_size)
        z_f, z_b = self._zero_microbatch(c, rows, dp_groups, share, m)
        out["dp ZeRO per micro-batch"] = z_f + z_b
        out["F"] = out["compute forward"] + runtime / 2 + tp_f + z_f + posting
        out["B"] = out["compute backward"] + runtime / 2 + tp_b + z_b + posting
        if c.schedule in SPLIT_BACKWARD:
            # W (the Linears' weight gradients) leaves B and runs where the schedule puts it
            out["W"] = share * sum(weight_grad_s(r) for r in rows)
            out["B"] -= out["W"]
        out["busy"] = out["compute forward"] + out["compute backward"] + runtime + 2 * posting
        return out

    @staticmethod
    def _posts_each_way(c, pp_rank) -> int:
        """p2p posts pp_rank makes per micro-batch in the forward (the backward makes as
        many): each of its stages receives from the stage before (unless first) and sends
        to the one after (unless last), and every message is two posts, its control block
        and then its tensor (p2p.py's Exchanger; a GPT stage passes one tensor). Posting
        is CPU work on the rank's own timeline (0.3-1.5 ms a post at load 5-8), not only
        latency on the critical path."""
        where = stage_placement(c.schedule, c.pp, c.vpp)
        last = len(where) - 1
        # a neighbour stage on the same rank (zb-v's turn, stages p-1 and p) is a local hand-off
        return 2 * sum((s > 0 and where[s - 1] != pp_rank) + (s < last and where[s + 1] != pp_rank)
                       for s in range(last + 1) if where[s] == pp_rank)

    def _calls(self, calls, tp_groups):
        return sum(self._coll(kind, nbytes, tp_groups) for kind, nbytes, _ in calls)

    def _crosses_hosts(self, groups) -> bool:
        return any(len({self.host[r] for r in grp}) > 1 for grp in groups)

    def _zero_microbatch(self, c, rows, dp_groups, share, m):
        """(forward, backward) seconds of ZeRO-2's reduce-scatter and ZeRO-3's gathers,
        issued inside every micro-batch, less the wire time hidden behind compute.

        A spare core per rank (`overlap`): the backward's collectives run beside it.
        Otherwise only a network link's wire time hides (over shared memory the copy is
        the ranks' own CPU work; measured: an async reduce-scatter of 6.6 MB across two
        namespace hosts at 1 Gbit/s, 27-34 ms alone, added a median ~10 ms to 200-260 ms of
        compute issued after it; over shared memory it added its whole 3-6 ms), and only
        behind compute the rank issues before it waits: ZeRO-2's reduce-scatter (waited
        at most two buckets later, or by the optimizer step) behind the next micro-batch's
        compute, so the last micro-batch's hides nothing; ZeRO-3's all-gather of a unit,
        prefetched when the unit before starts (stage3.py _use), behind that unit's
        compute. ZeRO-3's reduce-scatter hides nothing: the next unit's blocking
        control-flow check follows at once on the same group, and a communicator's
        collectives complete in issue order."""
        if c.dp == 1 or c.zero_stage < 2:
            return 0.0, 0.0
        pb = self.s.param_bytes
        fwd, bwd = share * sum(r["fwd_s"] for r in rows), share * sum(r["bwd_s"] for r in rows)
        remote = not self.overlap and self._crosses_hosts(dp_groups)
        if c.zero_stage == 2:
            nbytes = sum(r["params"] for r in rows) * pb
            f, b = 0.0, self._bucketed("reduce_scatter", nbytes, dp_groups)
            if remote:
                wire = sum(self.pricer.collective("reduce_scatter", size, dp_groups) for size in _buckets(nbytes))
                b -= (m - 1) / m * min(wire, fwd + bwd)
        else:
            f, b, seq = 0.0, 0.0, []
            for r in rows:
                units = max(1, r["units"])
                unit_bytes = r["params"] * pb / units
                gather = self._coll("allgather", unit_bytes, dp_groups, async_op=True)
                rs = self._coll("reduce_scatter", unit_bytes, dp_groups, async_op=True)
                check = self._coll("allgather", 24 * c.dp, dp_groups)   # the control-flow check per unit
                f += units * (gather + check)
                b += units * (gather + check + rs)
                wire = self.pricer.collective("allgather", unit_bytes, dp_groups)
                seq += [(wire, share * r["fwd_s"] / units, share * r["bwd_s"] / units)] * units
            if remote:   # forward in unit order, backward in reverse: each gather behind the unit before
                f -= sum(min(w, prev[1]) for (w, _, _), prev in zip(seq[1:], seq[:-1]))
                b -= sum(min(w, nxt[2]) for (w, _, _), nxt in zip(seq[:-1], seq[1:]))
        if self.overlap:
            b -= min(b, bwd)
        return f, b

    def _bucketed(self, kind, nbytes, groups):
        """nbytes in 25 MiB buckets, one async call each (ZeRO's Collectives)."""
        return sum(self._coll(kind, size, groups, async_op=True) for size in _buckets(nbytes))

    # ------------------------------------------------------------------ pipeline
    def _p2p(self, c, g, per_rank) -> List[float]:
        """The price of one message on each link of the pipeline: entry r between pp ranks r
        and (r + 1) % pp (the schedule checker's links), the slowest of the pipelines'. Each
        link is priced on its own: in an uneven layout (hosts of 3 + 1 ranks, pp 4) one
        boundary crosses hosts and the others stay in shared memory, and pricing every
        message at the slowest pair's (as before) charged 1.86 ms to each of the six
        messages of dp1 pp4 mb8 where four cost 1.33."""
        if c.pp == 1:
            return [0.0]
        out = max(chunk[-1]["out_bytes"] for chunks in per_rank for chunk in chunks)
        links = [[[grp[r], grp[(r + 1) % c.pp]] for grp in g["pp"]] for r in range(c.pp)]
        return [self._message(out + P2P_HEADER_BYTES, link) for link in links]

    def _message(self, nbytes, pairs) -> float:
        """One pipeline message: the tuner's price plus its delivery to a waiting rank
        (calibrate.py's message_s). The async call overhead charged before is measured with
        both sides computing and arriving apart, a wait the schedule checker already
        simulates: 1.0-5.2 ms a message against 0.11-0.70 ms delivered (load 4-9)."""
        price = self.pricer.collective("send", nbytes, pairs)
        return price + self.cluster.message_overhead() if price > 0 else 0.0

    def _pipeline(self, c, m, f, b, p2p, w=None):
        """The schedule checker's report for each pp rank's own per-micro-batch costs
        (lists f, b; w: the W part, b then B alone, for a split-backward schedule) and p2p
        per message on each link (list, _p2p). Each rank keeps its own stage's cost: pricing
        every rank at the slowest one's (as before) put the lighter stages' time on the
        critical path too (dp1 pp4 of the wide GPT, stages of 2, 2, 1 and 0 blocks:
        +35-39 %). The makespan scales with all the costs together, so reports are cached
        by their ratios to the slowest forward, to 3 significant digits (at most 0.5 % off),
        and rescaled."""
        from dataclasses import replace

        from hcomm.parallel.pipeline import build_schedule, check_schedule

        unit = max(f)
        ratios = tuple(float(f"{x / unit:.3g}") for x in list(f) + list(b) + list(p2p) + list(w or []))
        key = (c.schedule, c.pp, m, c.vpp, ratios)
        if key not in self._reports:
            n = len(p2p)
            self._reports[key] = check_schedule(build_schedule(c.schedule, c.pp, m, c.vpp),
                                                ratios[:c.pp], ratios[c.pp:2 * c.pp], ratios[2 * c.pp:2 * c.pp + n],
                                                w_cost=list(ratios[2 * c.pp + n:]) if w else None)
        r = self._reports[key]
        return replace(r, makespan=r.makespan * unit, busy=[x * unit for x in r.busy])

    # ------------------------------------------------------------------ step end
    def _step_end(self, c, g, per_rank):
        """(terms, busy seconds per pp rank) of what runs once per step after the pipeline."""
        pb, terms, busy = self.s.param_bytes, {}, []
        sync, opt = 0.0, 0.0
        z = c.zero_stage if c.dp > 1 else 0
        for r, chunks in enumerate(per_rank):
            rows = [row for chunk in chunks for row in chunk]
            psi = sum(row["params"] for row in rows)
            units = sum(max(1, row["units"]) for row in rows)
            ranks = [grp[r] for grp in g["pp"]]
            dp_groups = [grp for grp in g["dp"] if grp[0] in ranks]
            share = max(self._all_busy_share[self.machine[x]] for x in ranks)
            sync = max(sync, self._dp_sync(c, psi * pb, dp_groups))
            mine = (self._optimizer_elements_s(psi, c.dp, z) * (self._opt_factor or share)
                    + share * (self._overhead("step_s", z) + units * self._overhead("unit_step_s", z)))
            busy.append(mine)
            opt = max(opt, mine)
        terms["dp gradient sync"] = sync
        terms["optimizer step + bookkeeping"] = opt
        if c.sequence_parallel and c.tp > 1:
            terms["sp grads (allreduce)"] = self._sp_grads(c, g, per_rank)
        world = [list(range(len(c.rank_order)))]
        terms["control (status, loss)"] = (self._coll("allgather", 16 * len(c.rank_order), world)
                                           + self._coll("allreduce", 8, g["dp"]))
        if self.s.clip:
            axes = ("tp", "pp") + (("dp",) if c.zero_stage else ())
            terms["clip (norm allreduces)"] = sum(self._coll("allreduce", 8, g[a]) for a in axes)
        return terms, busy

    def _optimizer_elements_s(self, psi, dp, z) -> float:
        """Seconds (one process, alone) of the optimizer step's per-element work on a rank
        of ZeRO stage z holding psi elements of its pp stage: psi * full + psi / dp * shard
        (optimizer_profile.py: stage 0 plain AdamW and the clip's norm over psi; stage 1 the
        whole gradient copied into its buckets, then the shard's norm and fused AdamW;
        stages 2 and 3 the shard's only). Pricing every stage as psi / dp elements of plain
        AdamW (before) left out ZeRO-0's norm and ZeRO-1's copy of the whole gradient (the
        z1 - z2 difference of opt.step, 13-18 against 5-10 ms, dp2 pp2 mb4 of the wide GPT).
        A profile without the stages' figures prices as before."""
        per_stage = (self.profile.get("optimizer_step_s") or {}).get(str(z))
        if per_stage is None:
            return (psi / dp if z else psi) * self.profile["optimizer_s_per_element"]
        full, shard = per_stage
        return psi * full + psi / dp * shard

    def _sp_grads(self, c, g, per_rank):
        """Sequence parallelism's one allreduce a step over tp of the replicated parameters'
        partial gradients (train_gpt.py's reduce_sequence_parallel_grads, or ZeroOptimizer
        on the rank's shard of them: /dp), the slowest pp rank's."""
        worst = 0.0
        for r, chunks in enumerate(per_rank):
            elems = sum(row.get("sp_params", 0) for chunk in chunks for row in chunk)
            width = self.s.param_bytes      # p.grad's dtype; ZeroOptimizer reduces its fp32 master grads
            if c.zero_stage and c.dp > 1:
                elems, width = elems / c.dp, 4
            ranks = {grp[r] for grp in g["pp"]}
            tp_groups = [grp for grp in g["tp"] if grp[0] in ranks]
            worst = max(worst, self._coll("allreduce", int(elems * width), tp_groups))
        return worst

    def _dp_sync(self, c, nbytes, dp_groups):
        if c.dp == 1:
            return 0.0
        if c.zero_stage == 0:       # the pipeline's _average_grads: one flat allreduce
            return self._coll("allreduce", nbytes, dp_groups)
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


def _buckets(nbytes) -> List[int]:
    """The sizes of ZeroOptimizer's buckets for nbytes of gradients."""
    full, rest = divmod(int(nbytes), BUCKET_BYTES)
    return [BUCKET_BYTES] * full + ([rest] if rest else [])


def model_state(psi, n, stage, p, m, k) -> Dict[str, float]:
    """parallel/zero/memory.py's rows: parameters PΨ (stage 3: /N), gradients PΨ (stage
    >= 2: /N), master weights MΨ/N, optimizer state KΨ/N; stage 0 shards nothing."""
    shard = (lambda x: x / n) if stage else (lambda x: x)
    return {"parameters": p * psi / (n if stage == 3 else 1),
            "gradients": p * psi / (n if stage >= 2 else 1),
            "master weights": shard(m * psi),
            "optimizer state": shard(k * psi)}
