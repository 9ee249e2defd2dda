"""Turning rows into nccl-tests' table, the JSON document, the comparison and a plot.

The JSON document (schema "hcomm-bench/1"; validate_document checks it):

    {"schema", "collective", "datatype", "op", "root", "algo", "ranks", "iters",
     "warmup_iters", "check", "seed", "primary", "command", "host", "start_time", "end_time",
     "implementations": {name: {"status": "ok" | "skipped" | "failed", "note", "launcher",
                                "info": {"version", ...}, "avg_bus_bw",
                                "rows": [{"size", "count", "type", "redop", "root",
                                          "out_of_place": {"time", "alg_bw", "bus_bw", "nwrong"} | null,
                                          "in_place": {...} | null}]}},
     "comparison": {peer: [{"size", "out_of_place", "in_place"}]}}

time is in microseconds, bandwidths in GB/s (1e9 B/s), nwrong null when unchecked, and a
comparison entry is peer time / primary time (null where either side has no number).
"""
import sys

SCHEMA = "hcomm-bench/1"
STATUSES = ("ok", "skipped", "unavailable", "failed")
ROW_KEYS = ("size", "count", "type", "redop", "root", "out_of_place", "in_place")
MODE_KEYS = ("time", "alg_bw", "bus_bw", "nwrong")
DOC_KEYS = ("schema", "collective", "datatype", "op", "root", "algo", "ranks", "iters", "warmup_iters",
            "check", "seed", "primary", "command", "host", "start_time", "end_time",
            "implementations", "comparison")
IMPL_KEYS = ("status", "note", "launcher", "info", "rows", "avg_bus_bw")


def fmt_num(value, width):
    """A number in `width` columns with as many decimals as fit (nccl-tests' getFloatStr)."""
    if value is None:
        return "N/A".rjust(width)
    digits = len(str(int(abs(value)))) if abs(value) >= 1 else 1
    if digits < width - 2:
        return f"{value:{width}.2f}"
    if digits < width - 1:
        return f"{value:{width}.1f}"
    if digits <= width:
        return f"{value:{width}.0f}"
    return f"{value:{width}.1e}"


def _mode_cells(m):
    if m is None:
        return "  " + "  ".join(["N/A".rjust(w) for w in (8, 7, 7, 6)])
    wrong = "N/A" if m["nwrong"] is None else str(m["nwrong"])
    return (f"  {fmt_num(m['time'], 8)}  {fmt_num(m['alg_bw'], 7)}  {fmt_num(m['bus_bw'], 7)}"
            f"  {wrong:>6}")


HEADER = (
    "#" + " " * 61 + "out-of-place" + " " * 26 + "in-place\n"
    f"#{'size':>11}  {'count':>12}  {'type':>6}  {'redop':>6}  {'root':>5}"
    f"  {'time':>8}  {'algbw':>7}  {'busbw':>7}  {'#wrong':>6}  {'time':>8}  {'algbw':>7}  {'busbw':>7}  {'#wrong':>6}\n"
    f"#{'(B)':>11}  {'(elements)':>12}  {'':>6}  {'':>6}  {'':>5}"
    f"  {'(us)':>8}  {'(GB/s)':>7}  {'(GB/s)':>7}  {'':>6}  {'(us)':>8}  {'(GB/s)':>7}  {'(GB/s)':>7}  {'':>6}"
)


def format_row(row):
    return (f"{row['size']:>12}  {row['count']:>12}  {row['type']:>6}  {row['redop']:>6}  {row['root']:>5}"
            + _mode_cells(row["out_of_place"]) + _mode_cells(row["in_place"]))


def avg_bus_bw(rows):
    """Mean bus bandwidth over sizes and both modes, as nccl-tests' footer averages."""
    vals = [r[m]["bus_bw"] for r in rows for m in ("out_of_place", "in_place") if r[m] is not None]
    return sum(vals) / len(vals) if vals else None


def total_wrong(rows):
    return sum(r[m]["nwrong"] or 0 for r in rows for m in ("out_of_place", "in_place") if r[m] is not None)


def _ratio(primary, peer):
    if primary is None or peer is None or primary["time"] <= 0:
        return None
    return peer["time"] / primary["time"]


def comparison(impls, primary):
    """Per peer and size: peer time / primary time (> 1: the primary is faster), which
    equals primary busbw / peer busbw wherever bandwidth is defined."""
    base = impls.get(primary, {})
    if base.get("status") != "ok":
        return {}
    out = {}
    for name, res in impls.items():
        if name == primary or res.get("status") != "ok":
            continue
        peer_rows = {r["size"]: r for r in res["rows"]}
        out[name] = [{"size": r["size"],
                      "out_of_place": _ratio(r["out_of_place"], peer_rows.get(r["size"], {}).get("out_of_place")),
                      "in_place": _ratio(r["in_place"], peer_rows.get(r["size"], {}).get("in_place"))}
                     for r in base["rows"]]
    return out


def impl_result(status, note="", launcher=None, info=None, rows=None):
    rows = rows or []
    return {"status": status, "note": note, "launcher": launcher, "info": info or {},
            "rows": rows, "avg_bus_bw": avg_bus_bw(rows)}


def validate_document(doc):
    """Raise ValueError naming the first field of `doc` that breaks the schema."""
    def need(obj, keys, where):
        missing = [k for k in keys if k not in obj]
        if missing:
            raise ValueError(f"{where}: missing keys {missing}")

    need(doc, DOC_KEYS, "document")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"document: schema {doc['schema']!r}, expected {SCHEMA!r}")
    for name, res in doc["implementations"].items():
        need(res, IMPL_KEYS, f"implementations[{name}]")
        if res["status"] not in STATUSES:
            raise ValueError(f"implementations[{name}]: status {res['status']!r} not in {STATUSES}")
        for i, row in enumerate(res["rows"]):
            need(row, ROW_KEYS, f"implementations[{name}].rows[{i}]")
            for mode in ("out_of_place", "in_place"):
                if row[mode] is not None:
                    need(row[mode], MODE_KEYS, f"implementations[{name}].rows[{i}].{mode}")
                    if not all(isinstance(row[mode][k], (int, float)) for k in MODE_KEYS[:3]):
                        raise ValueError(f"implementations[{name}].rows[{i}].{mode}: non-numeric time/bandwidth")
    for peer, ratios in doc["comparison"].items():
        for i, r in enumerate(ratios):
            need(r, ("size", "out_of_place", "in_place"), f"comparison[{peer}][{i}]")


def _title(doc):
    algo = doc["algo"] or "auto"
    return (f"# hcomm-bench: {doc['collective']}  ranks {doc['ranks']}  type {doc['datatype']}  op {doc['op']}"
            f"  root {doc['root']}  iters {doc['iters']}  warmup {doc['warmup_iters']}"
            f"  check {int(doc['check'])}  algo {algo}  device {doc.get('device', 'cpu')}")


def _impl_block(name, res):
    lines = [f"#", f"# implementation: {name}  [{res['status']}]"
             + (f"  {res['info'].get('version')}" if res["info"].get("version") else "")
             + (f"  (launched by {res['launcher']})" if res["launcher"] else "")]
    if res["note"]:
        lines += ["#   " + line for line in res["note"].splitlines()]
    if res["status"] != "ok":
        return lines
    lines += [HEADER] + [format_row(r) for r in res["rows"]]
    wrong = total_wrong(res["rows"])
    lines.append(f"# Out of bounds values : {wrong} {'OK' if wrong == 0 else 'FAILED'}")
    avg = res["avg_bus_bw"]
    lines.append(f"# Avg bus bandwidth    : {'N/A' if avg is None else f'{avg:.4g}'}")
    return lines


def _comparison_block(doc):
    if not doc["comparison"]:
        return []
    primary, peers = doc["primary"], list(doc["comparison"])
    lines = ["#", f"# {primary} speed-up over each peer, per size: peer time / {primary} time"
                  f" (> 1: {primary} is faster; = {primary} busbw / peer busbw)",
             f"#{'size':>11}" + "".join(f"  {p + ' oop':>10}  {p + ' ip':>10}" for p in peers)]
    for i, r in enumerate(doc["comparison"][peers[0]]):
        cells = []
        for p in peers:
            c = doc["comparison"][p][i]
            cells += [fmt_num(c["out_of_place"], 10), fmt_num(c["in_place"], 10)]
        lines.append(f"{r['size']:>12}" + "".join("  " + c for c in cells))
    return lines


def format_report(doc):
    lines = [_title(doc)]
    for name, res in doc["implementations"].items():
        lines += _impl_block(name, res)
    lines += _comparison_block(doc)
    return "\n".join(lines) + "\n"


def plot(doc, path):
    """busbw (out of place) against size, one line per implementation that ran; barrier
    (no payload) plots its latency instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    barrier = doc["collective"] == "barrier"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, res in doc["implementations"].items():
        rows = [r for r in res["rows"] if r["out_of_place"] is not None and (barrier or r["size"] > 0)]
        if res["status"] != "ok" or not rows:
            continue
        if barrier:
            ax.bar(name, rows[0]["out_of_place"]["time"])
        else:
            ax.plot([r["size"] for r in rows], [r["out_of_place"]["bus_bw"] for r in rows], marker="o", label=name)
    if barrier:
        ax.set_ylabel("time (us)")
    else:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("size (B)")
        ax.set_ylabel("busbw (GB/s), out of place")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{doc['collective']} {doc['datatype']} {doc['op']}, {doc['ranks']} ranks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class ProgressLine:
    """One self-overwriting line on stderr; silent unless `enabled` (stderr is a terminal)."""

    def __init__(self, label, enabled, stream=None):
        self.label, self.enabled, self.stream = label, enabled, stream or sys.stderr

    def __call__(self, i, total, lay):
        if self.enabled:
            self.stream.write(f"\r\x1b[K{self.label}: size {lay.size_bytes} B ({i + 1}/{total})")
            self.stream.flush()

    def done(self):
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


