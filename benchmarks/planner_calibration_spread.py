"""How much a calibration moves between runs minutes apart, with the rule that keeps the
least of its passes for a rank's own work (calibrate.combine_passes) beside the rule
before it (each pass's slope and figures, then the median of the passes), both on the
same raw passes.

    python benchmarks/planner_calibration_spread.py --np 4 --times 5 --gap 60 --out-dir /tmp/cal
    python benchmarks/planner_calibration_spread.py --files /tmp/cal/*.json      # again, no run

Each calibration is `python -m hcomm.parallel.plan.calibrate --np N` (one at a time); the
1-minute load is read before and after it. Per calibration and rule it prints f(k) (the
seconds per repetition with k ranks active over a piece timed alone here, as the cost
model divides them), call_s[2], call_async_s[2], post_s, message_s and opt_elem_s; then
per figure the spread over the calibrations, (max - min) / median. Asserts nothing.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def old_rule(passes, span=None, opt_span=None):
    """The calibration as the rule before combine_passes took it: per pass the slope, and
    per figure the median of the passes (the passes were then sequential, not interleaved)."""
    from hcomm.parallel.plan import calibrate as cal_mod

    span = span or cal_mod.PIECE_REPS - cal_mod.SHORT_REPS
    opt_span = opt_span or cal_mod.OPT_ELEMENTS - cal_mod.OPT_ELEMENTS // 8
    med = statistics.median
    keys = passes[0]["round_s"]
    cal = {"rep_s": {k: med(max(0.0, (p["round_s"][k][1] - p["round_s"][k][0]) / span) for p in passes)
                     for k in keys},
           "opt_elem_s": med(max(0.0, (p["opt_round_s"][1] - p["opt_round_s"][0]) / opt_span) for p in passes)}
    for name in ("call_s", "call_async_s"):
        cal[name] = {g: med(p[name][g] for p in passes) for g in passes[0][name]}
    for name in ("post_s", "message_s"):
        cal[name] = med(p[name] for p in passes)
    return cal


def _int_keys(one_pass):
    return {name: ({int(k): v for k, v in value.items()} if isinstance(value, dict) else value)
            for name, value in one_pass.items()}


def figures(cal, piece_rep_s):
    out = {f"f({k})": v / piece_rep_s for k, v in sorted(cal["rep_s"].items())}
    out["call_s[2] ms"] = cal["call_s"][2] * 1e3
    out["call_async_s[2] ms"] = cal["call_async_s"][2] * 1e3
    out["post_s ms"] = cal["post_s"] * 1e3
    out["message_s ms"] = cal["message_s"] * 1e3
    out["opt_elem_s ns"] = cal["opt_elem_s"] * 1e9
    return out


def calibrate_once(np_, path):
    before = os.getloadavg()[0]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "hcomm.parallel.plan.calibrate", "--np", str(np_), "--out", path],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    data = json.loads(Path(path).read_text())
    data["planner"]["load"] = [before, os.getloadavg()[0]]
    data["planner"]["started"] = time.strftime("%H:%M:%S", time.gmtime(t0))
    Path(path).write_text(json.dumps(data))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--np", type=int, default=4)
    ap.add_argument("--times", type=int, default=5)
    ap.add_argument("--gap", type=float, default=60.0, help="seconds between calibrations")
    ap.add_argument("--out-dir", default="/tmp/planner_calibration_spread")
    ap.add_argument("--files", nargs="*", help="calibrations written before (no run)")
    args = ap.parse_args(argv)
    from hcomm.parallel.plan import calibrate as cal_mod

    files = args.files
    if not files:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        files = []
        for i in range(args.times):
            if i:
                time.sleep(args.gap)
            files.append(str(Path(args.out_dir, f"cal{i}.json")))
            calibrate_once(args.np, files[-1])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    piece_rep_s = cal_mod.piece_seconds() / cal_mod.PIECE_REPS
    span = cal_mod.PIECE_REPS - cal_mod.SHORT_REPS
    opt_span = cal_mod.OPT_ELEMENTS - cal_mod.OPT_ELEMENTS // 8
    rows = {"now (combine_passes)": [], "median (before)": []}
    for path in files:
        planner = json.loads(Path(path).read_text())["planner"]
        passes = [_int_keys(p) for p in planner["passes"]]      # JSON made the k and g keys strings
        rows["now (combine_passes)"].append(figures(cal_mod.combine_passes(passes), piece_rep_s))
        rows["median (before)"].append(figures(old_rule(passes, span, opt_span), piece_rep_s))
        load = planner.get("load", [float("nan")] * 2)
        print(f"{path}: started {planner.get('started', '?')} UTC, load {load[0]:.1f} -> {load[1]:.1f}")
    print(f"piece alone here: {piece_rep_s * 1e6:.2f} us a repetition")
    for rule, table in rows.items():
        print(f"\n{rule}")
        names = list(table[0])
        print("  " + " ".join(f"{n:>18s}" for n in names))
        for row in table:
            print("  " + " ".join(f"{row[n]:18.3f}" for n in names))
        spread = [(max(r[n] for r in table) - min(r[n] for r in table)) / max(statistics.median(r[n] for r in table),
                                                                             1e-12) for n in names]
        print("  " + " ".join(f"{s:17.0%} " for s in spread) + "  spread (max - min) / median")
    return 0


if __name__ == "__main__":
    sys.exit(main())
