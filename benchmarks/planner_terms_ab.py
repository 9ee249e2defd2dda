"""The cost model's terms for the same plans and profile, an earlier commit's cost.py beside
this tree's: how a change to the model moves each term (docs/planner.md's before/after).

    python benchmarks/planner_terms_ab.py --rev 1ff7740 --model small \\
        --cluster "2 hosts x 2 ranks, 1 Gbit/s between hosts, 1 cores per host" \\
        --plan "dp2 tp2 pp1 z2 mb1 - [tp<dp<pp]"
    python benchmarks/planner_terms_ab.py --rev 1ff7740 --topology new.json --old-topology old.json \\
        --plan "dp1 tp2 pp2 z0 mb1 1f1b [tp<dp<pp]"

The earlier parallel/plan is taken with `git archive` into a temporary package; it prices
the candidates this tree enumerates, with the profile this tree measures or caches.
Calibrated topologies (calibrate.py's output) may differ between the two: each model reads
the tables of its own format (--old-topology for the earlier one). Asserts nothing.
"""
import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"small": {"vocab_size": 64, "seq_len": 32, "hidden": 64, "heads": 4, "n_layers": 4},
          "wide": {"vocab_size": 256, "seq_len": 64, "hidden": 256, "heads": 8, "n_layers": 4}}


def old_cost_module(rev, into):
    """parallel/plan at `rev` as the package `oldplan` under `into`; its cost module."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "parallel/plan"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into)
    Path(into, "parallel", "plan").rename(Path(into, "oldplan"))
    sys.path.insert(0, into)
    import oldplan.cost

    return oldplan.cost


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", required=True, help="the earlier commit")
    ap.add_argument("--model", default="small", choices=sorted(MODELS))
    ap.add_argument("--global-batch-size", type=int, default=8)
    ap.add_argument("--cluster", help="a cluster description (both models)")
    ap.add_argument("--topology", help="a calibrated topology file for this tree's model")
    ap.add_argument("--old-topology", help="the earlier model's topology file (default: --topology)")
    ap.add_argument("--plan", action="append", required=True, help="a plan's name as the table prints it")
    args = ap.parse_args(argv)
    from hcomm.parallel.plan import Cluster, plan
    from hcomm.parallel.plan.pricing import Pricer

    if bool(args.cluster) == bool(args.topology):
        raise SystemExit("give one of --cluster or --topology")
    new_cluster = Cluster.describe(args.cluster) if args.cluster else Cluster.from_file(args.topology)
    old_cluster = Cluster.from_file(args.old_topology) if args.old_topology else new_cluster
    result = plan(MODELS[args.model], args.global_batch_size, cluster=new_cluster)
    by_name = {e.cand.name: e for e in result.ranked}
    with tempfile.TemporaryDirectory() as tmp:
        cost = old_cost_module(args.rev, tmp)
        old = cost.CostModel(old_cluster, Pricer(old_cluster), result.profile,
                             cost.Settings(args.global_batch_size, budget=1 << 40))
        for name in args.plan:
            if name not in by_name:
                raise SystemExit(f"no plan {name!r}; e.g. {sorted(by_name)[:5]}")
            new, before = by_name[name], old.estimate(by_name[name].cand)
            print(f"\n{args.model} {name} ({new_cluster.summary()})")
            for k in sorted(set(before.terms) | set(new.terms)):
                a, b = before.terms.get(k, 0.0), new.terms.get(k, 0.0)
                if a or b:
                    print(f"  {k:32s} {args.rev[:10]:>10s} {a * 1e3:9.2f} ms   now {b * 1e3:9.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
