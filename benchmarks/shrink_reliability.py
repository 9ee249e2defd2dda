"""Shrink after a SIGKILL at a random point of a collective stream: does every survivor's
shrink() return, with the same membership, and is an allreduce on the new communicator
right? Optionally a second rank is killed while the survivors shrink.

    .venv/bin/python benchmarks/shrink_reliability.py --trials 50 --ranks 4
    .venv/bin/python benchmarks/shrink_reliability.py --trials 50 --ranks 5 --netns 2   # tcp between 2 namespace hosts (root)
    .venv/bin/python benchmarks/shrink_reliability.py --trials 50 --ranks 5 --topo 2,3   # simulated hosts: tcp + shm
    .venv/bin/python benchmarks/shrink_reliability.py --trials 10 --ranks 5 --second-kill
    .venv/bin/python benchmarks/shrink_reliability.py --elastic 5    # examples/train_elastic.py: kill -> resumed

One trial: N processes run hcomm.init() and a stream of allreduces (random sizes,
checked against numpy); once all are in the stream the driver SIGKILLs a random rank
after a random delay (0-300 ms). Survivors catch the error and call shrink(); each
reports the new membership (old ranks, by an allgather on the new communicator) and
checks one allreduce there against numpy. With --second-kill the driver kills another
survivor 0-50 ms after the first survivor enters shrink() (the summary counts the
trials where that victim had itself entered shrink() by then). A trial hangs when a process
is still running HCOMM_TIMEOUT + 20 s after the kill. Prints one line per trial and a
summary (hangs, membership disagreements, wrong results, kill-to-shrunk times).
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

WORKER = r"""
import json, os, sys, time
import numpy as np
import hcomm
flags = os.environ["SHRINK_FLAGS"]
comm = hcomm.init()
me = comm.rank
open(os.path.join(flags, f"loop.{me}"), "w").close()
step = 0
try:
    while True:
        rng = np.random.default_rng(step)
        n = int(rng.integers(1, 70000))
        inputs = [np.random.default_rng([step, q]).standard_normal(n).astype(np.float32) for q in range(comm.size)]
        x = inputs[me].copy()
        comm.allreduce(x)
        np.testing.assert_allclose(x, np.sum(np.array(inputs, np.float64), axis=0), rtol=1e-4, atol=1e-4)
        step += 1
except hcomm.Error as e:
    failed_at, error = time.time(), str(e)[:200]
open(os.path.join(flags, f"shrink.{me}"), "w").close()
report = {"rank": me, "steps": step, "failed_at": failed_at, "error": error}
try:
    new = comm.shrink()
    report["shrunk_at"] = time.time()
    members = np.zeros(new.size, np.int64)
    new.allgather(np.array([me], np.int64), members)
    inputs = [np.random.default_rng([99, q]).standard_normal(1001).astype(np.float32) for q in range(new.size)]
    x = inputs[new.rank].copy()
    new.allreduce(x)
    report["members"] = members.tolist()
    report["correct"] = bool(np.allclose(x, np.sum(np.array(inputs, np.float64), axis=0), rtol=1e-4, atol=1e-4))
    new.close()
except hcomm.Error as e:
    report["shrink_error"] = str(e)[:300]
print(json.dumps(report), flush=True)
comm.close()
"""


def _wait_flags(flags, prefix, ranks, deadline):
    while time.monotonic() < deadline:
        if all(os.path.exists(os.path.join(flags, f"{prefix}.{r}")) for r in ranks):
            return True
        time.sleep(0.01)
    return False


def _any_flag(flags, prefix, ranks, deadline):
    while time.monotonic() < deadline:
        if any(os.path.exists(os.path.join(flags, f"{prefix}.{r}")) for r in ranks):
            return True
        time.sleep(0.002)
    return False


def _launch_local(n, env):
    port = 20000 + random.randrange(10000)
    procs = []
    for r in range(n):
        e = dict(env, RANK=str(r), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def run_trial(n, seed, timeout=20.0, second_kill=False, cluster=None, hosts=None):
    """One trial; returns a dict: victims, reports (by rank), hung ranks, and verdicts."""
    rng = random.Random(seed)
    flags = tempfile.mkdtemp(prefix="hcomm-shrink-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HCOMM_", "SLURM_", "OMPI_"))}
    env.update(SHRINK_FLAGS=flags, HCOMM_TIMEOUT=str(timeout), OMP_NUM_THREADS="1", HCOMM_PROBE="0")
    if hosts:
        path = os.path.join(flags, "topo.json")
        with open(path, "w") as f:
            json.dump({"hosts": hosts}, f)
        env["HCOMM_TOPO_FILE"] = path
    if cluster is not None:
        procs = cluster.launch(n // cluster.hosts, [sys.executable, "-c", WORKER], env=env,
                               port=20000 + rng.randrange(10000))
    else:
        procs = _launch_local(n, env)
    victims, started, second_in_shrink = [], time.monotonic(), None
    if _wait_flags(flags, "loop", range(n), started + 60):
        time.sleep(rng.random() * 0.3)
        victims.append(rng.randrange(n))
        procs[victims[0]].send_signal(signal.SIGKILL)
        kill_time = time.time()
        if second_kill:
            rest = [r for r in range(n) if r not in victims]
            _any_flag(flags, "shrink", rest, time.monotonic() + timeout)
            time.sleep(rng.random() * 0.05)
            victims.append(rng.choice(rest))
            second_in_shrink = os.path.exists(os.path.join(flags, f"shrink.{victims[1]}"))
            procs[victims[1]].send_signal(signal.SIGKILL)
    else:
        kill_time = time.time()
    deadline = time.monotonic() + timeout + 20
    outs, hung = {}, []
    for r, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            outs[r] = (p.returncode, out, err)
        except subprocess.TimeoutExpired:
            hung.append(r)
            p.kill()
            p.communicate()
    reports, done_first = {}, []
    for r, (rc, out, err) in outs.items():
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if r not in victims:
            reports[r] = json.loads(lines[-1]) if lines else {"rank": r, "crash": err.strip()[-300:]}
        elif lines and "members" in json.loads(lines[-1]):
            done_first.append(r)  # a second victim that finished the shrink before its kill landed
    return dict(_verdict(n, victims, reports, hung, kill_time, done_first), second_in_shrink=second_in_shrink,
                second_finished_first=bool(done_first))


def _verdict(n, victims, reports, hung, kill_time, done_first=()):
    survivors = [r for r in range(n) if r not in victims]
    shrunk = [reports[r] for r in survivors if r in reports and "members" in reports[r]]
    memberships = {tuple(rep["members"]) for rep in shrunk}
    # A second victim killed after it had shrunk with the others (it printed the new
    # membership) rightly stays a member: the kill came after the agreement.
    expect = tuple(sorted(survivors + list(done_first)))
    return {
        "victims": victims, "hung": hung,
        "shrunk": len(shrunk), "survivors": len(survivors),
        "same_membership": len(memberships) <= 1,
        "membership": sorted(memberships)[0] if memberships else None,
        "membership_is_survivors": memberships == {expect},
        "correct": all(rep["correct"] for rep in shrunk),
        "errors": [reports[r].get("shrink_error") or reports[r].get("crash") for r in survivors
                   if r in reports and "members" not in reports[r]],
        "kill_to_shrunk_s": max((rep["shrunk_at"] - kill_time for rep in shrunk), default=None),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=20.0, help="HCOMM_TIMEOUT of every rank")
    ap.add_argument("--second-kill", action="store_true")
    ap.add_argument("--netns", type=int, default=0, help="spread the ranks over this many namespace hosts")
    ap.add_argument("--topo", help="simulated hosts by HCOMM_TOPO_FILE: ranks per host, e.g. 2,3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--elastic", type=int, default=0, help="instead: this many kill runs of train_elastic.py")
    args = ap.parse_args()
    if args.elastic:
        return elastic(args.elastic, args.ranks, args.seed)
    hosts = None
    if args.topo:
        sizes = [int(k) for k in args.topo.split(",")]
        if sum(sizes) != args.ranks:
            ap.error(f"--topo {args.topo} places {sum(sizes)} ranks, not --ranks {args.ranks}")
        starts = [sum(sizes[:h]) for h in range(len(sizes))]
        hosts = [{"name": f"h{h}", "ranks": list(range(starts[h], starts[h] + k))} for h, k in enumerate(sizes)]
    cluster = None
    if args.netns:
        from hcomm.topology import NetnsCluster

        if args.ranks % args.netns:
            ap.error(f"--ranks {args.ranks} is not a multiple of --netns {args.netns}")
        cluster = NetnsCluster(args.netns, rate="1gbit").__enter__()
    rows = []
    try:
        for t in range(args.trials):
            v = run_trial(args.ranks, args.seed * 1000 + t, args.timeout, args.second_kill, cluster, hosts)
            rows.append(v)
            print(json.dumps({"trial": t, **v}), flush=True)
    finally:
        if cluster is not None:
            cluster.__exit__(None, None, None)
    times = sorted(v["kill_to_shrunk_s"] for v in rows if v["kill_to_shrunk_s"] is not None)
    print(json.dumps({
        "trials": len(rows), "ranks": args.ranks, "netns_hosts": args.netns, "topo": args.topo,
        "second_kill": args.second_kill,
        "hangs": sum(bool(v["hung"]) for v in rows),
        "second_victim_inside_shrink": sum(bool(v["second_in_shrink"]) for v in rows),
        "all_shrunk": sum(v["shrunk"] == v["survivors"] for v in rows),
        "membership_disagreements": sum(not v["same_membership"] for v in rows),
        "membership_not_survivors": sum(not v["membership_is_survivors"] for v in rows if v["shrunk"]),
        "wrong_allreduce": sum(not v["correct"] for v in rows),
        "kill_to_shrunk_s": {"min": times[0], "median": times[len(times) // 2], "max": times[-1]} if times else None,
    }))


def elastic(runs, ranks, seed, timeout=20):
    """examples/train_elastic.py at dp=ranks, a random rank killed in a random step: the
    seconds from the kill to the survivors' resumed training (checkpoint reloaded)."""
    example = os.path.join(os.path.dirname(HERE), "examples", "train_elastic.py")
    rng, times = random.Random(seed), []
    for run in range(runs):
        tmp = tempfile.mkdtemp(prefix="hcomm-elastic-")
        victim, step = rng.randrange(ranks), rng.randrange(2, 5)  # a step with another after it
        port = 20000 + rng.randrange(10000)
        procs = []
        for r in range(ranks):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("HCOMM_", "SLURM_", "OMPI_"))}
            env.update(RANK=str(r), WORLD_SIZE=str(ranks), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), HCOMM_TIMEOUT=str(timeout), OMP_NUM_THREADS="1")
            procs.append(subprocess.Popen([sys.executable, example, "--ckpt", os.path.join(tmp, "ck"), "--json",
                                           os.path.join(tmp, "out"), "--set", "train.steps=6", "--kill-rank",
                                           str(victim), "--kill-step", str(step), "--seed", str(run)],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in procs:
            p.wait(timeout=300)
        killed = float(open(os.path.join(tmp, "out.killed")).read())
        resumed = [json.load(open(os.path.join(tmp, f"out.{r}")))["events"]["resumed_at"]
                   for r in range(ranks) if r != victim]
        times.append(max(resumed) - killed)
        print(json.dumps({"run": run, "victim": victim, "step": step + 1, "kill_to_resumed_s": times[-1]}), flush=True)
    times.sort()
    print(json.dumps({"elastic_runs": runs, "ranks": ranks, "kill_to_resumed_s":
                      {"min": times[0], "median": times[len(times) // 2], "max": times[-1]}}))


if __name__ == "__main__":
    main()
