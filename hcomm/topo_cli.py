"""hcomm-topo: print the detected topology, the fitted alpha/beta table and the tuner's
reasoning; or run a command on a simulated cluster of network namespaces.

    hcomm-topo                                     # this machine, one rank
    hcomm-topo --np 4 --hosts 2 --explain allreduce 64M --measure
    hcomm-topo --np 6 --hosts 2 --explain broadcast 64M --root 4   # also: allgather (the gathered total)
    HCOMM_TOPO_FILE=cluster.json hcomm-topo --np 4 --json
    mpirun -np 8 hcomm-topo --explain allreduce 1M # under a launcher: the job's own ranks
    hcomm-topo netns --hosts 2 --ranks-per-host 2 --rate 1gbit -- python train.py
    hcomm-topo --topology cluster.json --explain allreduce 64M   # a described topology, no processes

Without a launcher, --np N starts N local processes; --hosts H gives them H simulated
host identities (HCOMM_HOST_ID, contiguous blocks of ranks), so they talk tcp between
"hosts" and shared memory inside one.
"""
import argparse
import json
import multiprocessing as mp
import os
import sys

from . import topology as topo_mod


def _parser():
    p = argparse.ArgumentParser(prog="hcomm-topo", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print JSON instead of the tree")
    p.add_argument("--explain", nargs=2, metavar=("COLLECTIVE", "SIZE"),
                   help="allreduce, broadcast or allgather and a size, e.g. broadcast 64M")
    p.add_argument("--root", type=int, default=0, help="the broadcast's root for --explain")
    p.add_argument("--measure", action="store_true", help="time every candidate beside its prediction")
    p.add_argument("--iters", type=int, default=3, help="timed repetitions per candidate (median)")
    p.add_argument("--np", type=int, default=1, help="local ranks to start when not under a launcher")
    p.add_argument("--hosts", type=int, default=1, help="simulated hosts for the local ranks")
    p.add_argument("--topology", metavar="FILE",
                   help="print a topology file or dump (hosts, racks, GPU domains) and explain on it; starts no ranks")
    return p


def _described(args):
    """--topology FILE: the file's topology and the tuner's table on it, no processes."""
    if args.measure:
        raise SystemExit("hcomm-topo: --measure needs running ranks, not --topology")
    topo = topo_mod.load(args.topology)
    explanation = None
    if args.explain:
        collective, size = args.explain
        explanation = topo_mod.explain(collective, topo_mod.parse_size(size), topology=topo, root=args.root)
    if args.json:
        return json.dumps({"topology": topo}, indent=2)
    return topo_mod.format_tree(topo) + ("\n\n" + str(explanation) if explanation else "")


def _netns_parser():
    p = argparse.ArgumentParser(prog="hcomm-topo netns",
                                description="run a command on ranks spread over network namespaces")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--ranks-per-host", type=int, default=2)
    p.add_argument("--rate", default="1gbit", help="tc tbf rate of every host link")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("command", nargs=argparse.REMAINDER)
    return p


def report(comm, args):
    """What rank 0 prints (every rank calls: --measure runs collectives)."""
    topo = topo_mod.topology(comm)
    explanation = None
    if args.explain:
        collective, size = args.explain
        explanation = topo_mod.explain(collective, topo_mod.parse_size(size), comm=comm, measure=args.measure,
                                       iters=args.iters, root=args.root)
    if comm.rank != 0:
        return None
    if args.json:
        out = {"topology": topo}
        if explanation:
            out["explain"] = {"collective": explanation.collective, "nbytes": explanation.nbytes,
                              "chosen": explanation.chosen, "why": explanation.why,
                              "candidates": [c.__dict__ for c in explanation.candidates]}
        return json.dumps(out, indent=2)
    text = topo_mod.format_tree(topo)
    return text + ("\n\n" + str(explanation) if explanation else "")


def _local_rank(rank, size, uid, args, host, out):
    if host is not None:
        os.environ["HCOMM_HOST_ID"] = f"simulated-host{host}"
    import hcomm

    comm = hcomm.init(rank=rank, size=size, unique_id=uid)
    try:
        text = report(comm, args)
        comm.barrier()
    finally:
        comm.close()
    if text is not None:
        out.put(text)


def _run_local(args):
    import hcomm

    if args.np < 1 or args.hosts < 1 or args.hosts > args.np:
        raise SystemExit(f"hcomm-topo: need 1 <= --hosts ({args.hosts}) <= --np ({args.np})")
    uid = hcomm.get_unique_id()
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    per = -(-args.np // args.hosts)
    procs = [ctx.Process(target=_local_rank, args=(r, args.np, uid, args, r // per if args.hosts > 1 else None, out))
             for r in range(args.np)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit(f"hcomm-topo: ranks failed with exit codes {[p.exitcode for p in procs]}")
    print(out.get(timeout=5))


def _run_netns(argv):
    args = _netns_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("hcomm-topo netns: give the command to run after --")
    reason = topo_mod.NetnsCluster.unavailable()
    if reason:
        raise SystemExit(f"hcomm-topo netns: {reason}")
    with topo_mod.NetnsCluster(args.hosts, rate=args.rate) as cluster:
        results = topo_mod.wait_all(cluster.launch(args.ranks_per_host, command), args.timeout)
    code = 0
    for r, (rc, so, se) in enumerate(results):
        sys.stdout.write("".join(f"[rank {r}] {line}\n" for line in so.splitlines()))
        sys.stderr.write("".join(f"[rank {r}] {line}\n" for line in se.splitlines()))
        code = code or rc
    return code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["netns"]:
        return _run_netns(argv[1:])
    args = _parser().parse_args(argv)
    if args.topology:
        print(_described(args))
        return 0
    from .launch import detect_rank_size

    rank, size = detect_rank_size()
    if size > 1:  # under torchrun / mpirun / Slurm: the job's own ranks
        import hcomm

        comm = hcomm.init()
        try:
            text = report(comm, args)
            comm.barrier()
        finally:
            comm.close()
        if text is not None:
            print(text)
        return 0
    _run_local(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
