"""hcomm-plan: choose dp x tp x pp, ZeRO stage, micro-batch, schedule and rank placement
for examples/train_gpt.py's model, with no trial runs.

    hcomm-plan --np 4                                     # this machine, 4 ranks (links measured)
    hcomm-plan --cluster "2 hosts x 4 ranks, 1 Gbit/s between hosts, 2 cores per host" --out plan.json
    HCOMM_TOPO_FILE=cluster.json hcomm-plan --config cfg.json --budget 2G
    hcomm-plan --np 4 --explain 1                         # every term of plan 1 (or a plan's name)
    hcomm-plan --np 4 --memory --config cfg.json          # one given layout's memory per rank
    hcomm-plan --np 4 --validate 3                        # run the top 3 a few steps: predicted vs measured

The model, global batch size and train section come from --config (a train_gpt.py config
file; its parallel keys are ignored except by --memory), else train_gpt.py's defaults.
--out writes the chosen plan as a config that `examples/train_gpt.py --config` runs as is.
"""
import argparse
import json
import os
import sys

DEFAULT_MODEL = {"vocab_size": 64, "seq_len": 32, "hidden": 64, "heads": 4, "n_layers": 4}
DEFAULT_GLOBAL_BATCH = 8


def _parser():
    p = argparse.ArgumentParser(prog="hcomm-plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cluster", help='a description, e.g. "2 hosts x 4 ranks, 1 Gbit/s between hosts"')
    where.add_argument("--topology", help="a topology file (HCOMM_TOPO_FILE format; default: $HCOMM_TOPO_FILE)")
    p.add_argument("--np", type=int, help="world size (with no cluster: that many ranks on this machine, detected)")
    p.add_argument("--config", help="train_gpt.py config file (model, train, global_batch_size)")
    p.add_argument("--model", help="the model section as JSON (overrides --config's)")
    p.add_argument("--global-batch-size", type=int, help="sequences per optimizer step")
    p.add_argument("--seq-len", type=int, help="sequence length (model.seq_len)")
    p.add_argument("--budget", help="memory per rank, e.g. 2G (default: host memory / its ranks)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--no-placement", action="store_true", help="only the default rank placement")
    p.add_argument("--top", type=int, default=20, help="rows of the table")
    p.add_argument("--explain", metavar="PLAN", help="every cost term of one plan (its rank or name)")
    p.add_argument("--memory", action="store_true", help="per-rank memory of the --config layout, no processes")
    p.add_argument("--validate", type=int, metavar="K", help="run the top K plans a few steps here")
    p.add_argument("--steps", type=int, default=6, help="steps per --validate run")
    p.add_argument("--out", help="write the chosen plan's config here")
    p.add_argument("--json", action="store_true", help="print the ranked plans as JSON")
    p.add_argument("--no-cache", action="store_true", help="profile again even if cached")
    return p


def _inputs(args):
    config = {}
    if args.config:
        try:
            with open(args.config) as f:
                config = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"hcomm-plan: cannot read --config {args.config}: {exc}")
    model = dict(json.loads(args.model) if args.model else config.get("model") or DEFAULT_MODEL)
    if args.seq_len:
        model["seq_len"] = args.seq_len
    gb = args.global_batch_size or config.get("global_batch_size") or DEFAULT_GLOBAL_BATCH
    return config, model, gb


def _cluster(args):
    from .cluster import Cluster

    if args.cluster:
        return Cluster.describe(args.cluster)
    if args.topology:
        return Cluster.from_file(args.topology)
    return None


def _as_json(result, top):
    rows = []
    for i, e in enumerate(result.ranked[:top]):
        rows.append({"rank": i + 1, "plan": e.cand.name, "step_s": e.step_s, "memory_bytes": e.memory_total,
                     "fits": e.fits, "terms": e.terms, "memory": e.memory, "config": result.config(e)})
    return json.dumps({"cluster": result.cluster.summary(), "seconds": result.seconds, "plans": rows}, indent=1)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from hcomm.topology import parse_size

    from . import planner
    from .cluster import Cluster

    config, model, gb = _inputs(args)
    budget = parse_size(args.budget) if args.budget else None
    cluster = _cluster(args)
    if args.memory:
        if not args.config:
            raise SystemExit("hcomm-plan: --memory needs --config cfg.json (the layout to size)")
        cfg = dict(config, model=model, global_batch_size=gb)
        if cluster is None and not os.environ.get("HCOMM_TOPO_FILE"):
            if not args.np:
                raise SystemExit("hcomm-plan: --memory needs --np N (or --cluster / --topology)")
            cluster = Cluster.from_hosts([args.np], origin=f"{args.np} ranks on one host")   # nothing started
        cl = planner.resolve_cluster(cluster, args.np)
        mem = planner.memory_of_config(cfg, cl, args.dtype, cache=not args.no_cache)
        if budget is not None:
            mem["estimate"].budget = budget
        print(planner.format_memory(mem))
        return 0
    try:
        result = planner.plan(model, gb, cluster=cluster, world_size=args.np, memory_budget=budget, dtype=args.dtype,
                              train=config.get("train"), placement=False if args.no_placement else None,
                              cache=not args.no_cache)
    except ValueError as exc:
        print(f"hcomm-plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(_as_json(result, args.top))
    else:
        print(planner.format_table(result, args.top))
    if args.explain:
        print("\n" + planner.format_explain(result, result.find(args.explain)))
    if not args.json:
        print("\nchosen plan (examples/train_gpt.py --config):\n" + json.dumps(result.config()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result.config(), f, indent=1)
    if args.validate:
        from .validate import validate

        print(f"\nvalidating the top {args.validate} plans ({args.steps} steps each, first left out):")
        validate(result, args.validate, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
