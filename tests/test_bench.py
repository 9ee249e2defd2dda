"""hcomm-bench without processes: bandwidth factors, layouts, flags, the reference and
#wrong, the JSON schema, the report and the plot."""
import io
import json

import numpy as np
import pytest

from hcomm.bench import cli, data, factors, launch, report, sweep
from hcomm.bench.runners import Runner

N_RANKS = (1, 2, 3, 4, 5, 8)


# ---- bandwidth factors and layouts -------------------------------------------------

@pytest.mark.parametrize("n", N_RANKS)
def test_bus_factors_match_nccl_tests(n):
    expect = {"allreduce": 2 * (n - 1) / n, "allgather": (n - 1) / n, "reduce_scatter": (n - 1) / n,
              "alltoall": (n - 1) / n, "broadcast": 1.0, "reduce": 1.0, "sendrecv": 1.0, "barrier": 0.0}
    for coll, f in expect.items():
        assert factors.bus_factor(coll, n) == pytest.approx(f)


def test_bus_factor_rejects_bad_input():
    with pytest.raises(ValueError, match="allgatherv"):
        factors.bus_factor("allgatherv", 2)
    with pytest.raises(ValueError, match="nranks"):
        factors.bus_factor("allreduce", 0)


def test_layouts_round_down_like_nccl_tests():
    ag = factors.layout("allgather", 100, 4, 3)  # 25 elements -> 8 per rank, 24 in all
    assert (ag.count, ag.send, ag.recv, ag.blocks, ag.size_bytes) == (8, 8, 24, 1, 96)
    rs = factors.layout("reduce_scatter", 100, 4, 3)
    assert (rs.count, rs.send, rs.recv, rs.blocks, rs.size_bytes) == (8, 24, 8, 3, 96)
    a2a = factors.layout("alltoall", 1000, 2, 3)
    assert (a2a.count, a2a.send, a2a.recv, a2a.blocks, a2a.size_bytes) == (166, 498, 498, 3, 996)
    ar = factors.layout("allreduce", 10, 4, 5)
    assert (ar.count, ar.send, ar.recv, ar.size_bytes) == (2, 2, 2, 8)
    assert factors.layout("barrier", 4096, 4, 2).size_bytes == 0


def test_bandwidths_use_size_and_factor():
    lay = factors.layout("allreduce", 1 << 20, 4, 4)
    alg, bus = factors.bandwidths(lay, 1e-3, 4)
    assert alg == pytest.approx((1 << 20) / 1e-3 / 1e9)
    assert bus == pytest.approx(alg * 1.5)
    assert factors.bandwidths(factors.layout("barrier", 0, 4, 4), 1e-3, 4) == (0.0, 0.0)


def test_sweep_sizes():
    assert factors.sweep_sizes(8, 64, 2) == [8, 16, 32, 64]
    assert factors.sweep_sizes(4096, 64 << 20, 16384) == [4096, 64 << 20]
    assert factors.sweep_sizes(10, 35, 1, 10) == [10, 20, 30]
    with pytest.raises(ValueError, match="minbytes"):
        factors.sweep_sizes(64, 8, 2)
    with pytest.raises(ValueError, match="stepfactor"):
        factors.sweep_sizes(8, 64, 1, 0)


# ---- flags -----------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [("4096", 4096), ("4K", 4096), ("4k", 4096), ("64M", 64 << 20),
                                        ("1G", 1 << 30), ("2KB", 2048), ("8MiB", 8 << 20)])
def test_parse_size(text, value):
    assert cli.parse_size(text) == value


def test_parse_size_rejects_garbage():
    with pytest.raises(Exception, match="bad size"):
        cli.parse_size("4X")


def test_nccl_tests_flags_parse():
    args = cli.parse_args(["reduce", "-b", "4K", "-e", "64M", "-f", "4", "-n", "7", "-w", "2", "-c", "0",
                           "-d", "half", "-o", "max", "-r", "1", "--algo", "ring", "--ranks", "4",
                           "--compare", "gloo,mpi", "--json", "x.json", "--plot", "x.png"])
    assert (args.collective, args.minbytes, args.maxbytes, args.stepfactor) == ("reduce", 4096, 64 << 20, 4)
    assert (args.iters, args.warmup_iters, args.check, args.datatype, args.op) == (7, 2, 0, "half", "max")
    assert (args.root, args.algo, args.ranks, args.compare) == (1, "ring", 4, ["gloo", "mpi"])
    assert (args.json, args.plot, args.impl) == ("x.json", "x.png", "hcomm")
    spec = cli.make_spec(args)
    assert spec.sizes == tuple(4096 * 4 ** k for k in range(8)) and spec.algo == "ring" and not spec.check


def test_long_flags_and_defaults():
    args = cli.parse_args(["--collective", "allgather", "--minbytes", "1K", "--maxbytes", "1K",
                           "--iters", "3", "--warmup_iters", "0", "--datatype", "float32"])
    assert (args.collective, args.datatype, args.op, args.root, args.algo) == ("allgather", "float", "sum", 0, "auto")
    assert cli.parse_args([]).collective == "allreduce"
    assert cli.make_spec(cli.parse_args(["--algo", "auto"])).algo is None


@pytest.mark.parametrize("argv,message", [
    (["allreduce", "--collective", "allgather"], "collective given twice"),
    (["-t", "allgather"], "-t is nccl-tests' threads per process, not the collective: write 'hcomm-bench allgather'"),
    (["-t", "4"], "-t 4: hcomm-bench runs one thread per rank"),
    (["--device", "npu"], "invalid choice"),
    (["-d", "complex"], "unknown datatype"),
    (["--compare", "gloo,nvshmem"], "bad --compare"),
    (["--impl", "gloo", "--compare", "gloo"], "primary"),
    (["-b", "64M", "-e", "4K"], "minbytes"),
    (["-n", "0"], "must be >= 1"),
    (["-o", "xor"], "invalid choice"),
])
def test_bad_flags_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_worker_args_rebuild_the_same_spec():
    args = cli.parse_args(["alltoall", "-b", "3K", "-e", "96K", "-f", "4", "-n", "3", "-w", "1", "-d", "int8",
                           "-o", "min", "-r", "2", "--algo", "tree", "--compare", "mpi", "--seed", "7"])
    child = cli.parse_args(cli.worker_args(args, "gloo", "/tmp/r.json", progress=True))
    assert cli.make_spec(child) == cli.make_spec(args)
    assert (child.impl, child.result, child.progress, child.compare) == ("gloo", "/tmp/r.json", True, [])


def test_check_world_names_the_problem():
    spec = cli.make_spec(cli.parse_args(["broadcast", "-r", "3"]))
    with pytest.raises(launch.UsageError, match="root 3 is not a rank of a 2-rank world"):
        cli.check_world(spec, 2)
    with pytest.raises(launch.UsageError, match="sendrecv needs at least 2 ranks"):
        cli.check_world(cli.make_spec(cli.parse_args(["sendrecv"])), 1)


@pytest.mark.parametrize("env,expect", [
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4"}, (1, 4, "mpirun")),
    ({"RANK": "2", "WORLD_SIZE": "3", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}, (2, 3, "torchrun")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0"}, (0, 2, "slurm")),
])
def test_detect_world(env, expect):
    w = launch.detect_world(env)
    assert (w.rank, w.size, w.launcher) == expect


def test_detect_world_outside_a_launcher_and_bad_env():
    assert launch.detect_world({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}) is None  # an allocation, not a step
    with pytest.raises(launch.UsageError, match="rank 4 outside world size 4"):
        launch.detect_world({"RANK": "4", "WORLD_SIZE": "4"})
    w = launch.detect_world({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1234", "HCOMM_UNIQUE_ID": "abc"})
    assert (w.master_port, w.unique_id) == (1234, "abc")


# ---- reference and #wrong --------------------------------------------------------

@pytest.mark.parametrize("dtype", ["int8", "uint8", "int32", "int64", "half", "float", "double"])
@pytest.mark.parametrize("op", data.OPS)
def test_reference_reduction_matches_numpy(dtype, op):
    dt = data.np_dtype(dtype)
    blocks = [data.block_input(5, r, 0, 37, dt, op) for r in range(5)]
    got = data.reduce_blocks(blocks, op, dt)
    wide = np.stack([b.astype(np.float64) for b in blocks])
    want = {"sum": wide.sum(0), "prod": wide.prod(0), "min": wide.min(0), "max": wide.max(0),
            "avg": wide.sum(0) / 5}[op]
    if op == "avg" and dt.kind != "f":
        want = np.trunc(want)
    assert got.dtype == dt
    # small inputs: nothing overflows at 5 ranks, so the wide result is exact
    np.testing.assert_allclose(got.astype(np.float64), want, rtol={"half": 1e-3, "float": 1e-6}.get(dtype, 1e-12))


def test_inputs_differ_per_rank_block_and_size():
    dt = np.dtype(np.float32)
    a = data.block_input(1, 0, 0, 1001, dt, "sum")
    assert not np.array_equal(a, data.block_input(1, 1, 0, 1001, dt, "sum"))
    assert not np.array_equal(a, data.block_input(1, 0, 1, 1001, dt, "sum"))
    assert np.array_equal(a, data.block_input(1, 0, 0, 1001, dt, "sum"))
    assert set(np.unique(data.block_input(1, 0, 0, 1001, dt, "prod"))) <= {-1.0, 1.0, 2.0}


@pytest.mark.parametrize("dtype", ["int32", "float", "half"])
def test_count_wrong_counts_planted_errors(dtype):
    dt = data.np_dtype(dtype)
    exp = data.block_input(3, 0, 0, 1003, dt, "sum")
    res = exp.copy()
    assert data.count_wrong(res, exp, dt, "sum") == 0
    res[[0, 500, 1002]] += 1
    assert data.count_wrong(res, exp, dt, "sum") == 3
    if dt.kind == "f":
        res[7] = np.nan
        assert data.count_wrong(res, exp, dt, "sum") == 4


def test_avg_tolerance():
    exp = np.array([3, 3, 3], np.int32)
    assert data.count_wrong(np.array([3, 4, 2], np.int32), exp, exp.dtype, "avg") == 0  # rounding either way
    assert data.count_wrong(np.array([3, 5, 3], np.int32), exp, exp.dtype, "avg") == 1
    f = np.array([1 / 3], np.float32)
    assert data.count_wrong(f * (1 + 1e-7), f, f.dtype, "avg") == 0
    assert data.count_wrong(f * (1 + 1e-4), f, f.dtype, "avg") == 1
    with pytest.raises(ValueError, match="shape"):
        data.count_wrong(exp[:2], exp, exp.dtype, "sum")


# ---- the sweep on a one-rank loopback runner --------------------------------------

class LoopbackRunner(Runner):
    """One rank, collectives done by numpy: what every collective means when n == 1."""

    name = "loopback"

    def __init__(self, spec, writes=True):
        super().__init__(launch.World(0, 1, "test"), spec)
        self.writes = writes

    def run(self, send, recv, in_place):
        if self.writes and self.spec.collective != "barrier" and send is not recv:
            recv[...] = send

    def reduce_floats(self, values, op):
        return np.asarray(values, dtype=np.float64)

    def barrier(self):
        pass


def _spec(coll, **kw):
    base = dict(collective=coll, dtype="float", op="sum", root=0, sizes=(4, 1000, 4099 * 4), iters=2,
                warmup=1, check=True)
    base.update(kw)
    return sweep.Spec(**base)


@pytest.mark.parametrize("coll", factors.COLLECTIVES)
def test_sweep_rows_on_one_rank_are_right(coll):
    spec = _spec("sendrecv" if coll == "sendrecv" else coll)
    rows = sweep.run_sweep(LoopbackRunner(spec), spec, 0, 1)
    assert len(rows) == (1 if coll == "barrier" else 3)
    for row in rows:
        assert row["out_of_place"]["nwrong"] == 0
        assert (row["in_place"] is None) == (coll in ("sendrecv", "barrier"))
        assert row["root"] == (0 if coll in ("broadcast", "reduce") else -1)
        assert row["redop"] == ("sum" if coll in factors.REDUCING else "none")


def test_sweep_counts_a_planted_wrong_result():
    spec = _spec("allreduce", dtype="int32", op="max")
    planted = []

    def tamper(out, rank, in_place):
        if not in_place and not planted and out.size > 10:
            out[[1, 4, 9]] = -77
            planted.append(True)

    rows = sweep.run_sweep(LoopbackRunner(spec), spec, 0, 1, tamper=tamper)
    assert [r["out_of_place"]["nwrong"] for r in rows] == [0, 3, 0]
    assert all(r["in_place"]["nwrong"] == 0 for r in rows)


def test_sweep_counts_an_output_never_written():
    spec = _spec("allgather", sizes=(1000,))
    row = sweep.run_sweep(LoopbackRunner(spec, writes=False), spec, 0, 1)[0]
    assert row["out_of_place"]["nwrong"] == 250  # every element still holds the sentinel
    assert row["in_place"]["nwrong"] == 0        # in place, the input already is the output


def test_unchecked_sweep_reports_no_count():
    spec = _spec("broadcast", check=False)
    rows = sweep.run_sweep(LoopbackRunner(spec), spec, 0, 1)
    assert all(r["out_of_place"]["nwrong"] is None for r in rows)


def test_progress_line_only_when_enabled():
    lay = factors.layout("allreduce", 64, 4, 2)
    on, off = io.StringIO(), io.StringIO()
    for stream, enabled in ((on, True), (off, False)):
        line = report.ProgressLine("gloo allreduce", enabled, stream)
        line(0, 3, lay)
        line.done()
    assert "gloo allreduce: size 64 B (1/3)" in on.getvalue() and off.getvalue() == ""


# ---- the document, the table, the plot -------------------------------------------

def _row(size, t_us, wrong=0):
    mode = {"time": t_us, "alg_bw": size / t_us / 1e3, "bus_bw": size / t_us / 1e3, "nwrong": wrong}
    return {"size": size, "count": size // 4, "type": "float", "redop": "sum", "root": -1,
            "out_of_place": dict(mode), "in_place": dict(mode)}


def _doc():
    args = cli.parse_args(["allreduce", "--impl", "hcomm", "--compare", "gloo,mpi"])
    spec = cli.make_spec(args)
    results = {"hcomm": report.impl_result("ok", rows=[_row(4096, 5.0), _row(1 << 20, 200.0)]),
               "gloo": report.impl_result("ok", rows=[_row(4096, 400.0), _row(1 << 20, 800.0)]),
               "mpi": report.impl_result("skipped", "mpirun is not on PATH")}
    return cli.build_document(args, spec, 2, results, "t0", ["allreduce"])


def test_document_schema_and_comparison():
    doc = _doc()
    report.validate_document(json.loads(json.dumps(doc)))
    ratios = doc["comparison"]["gloo"]
    assert [r["size"] for r in ratios] == [4096, 1 << 20]
    assert ratios[0]["out_of_place"] == pytest.approx(80.0) and ratios[1]["in_place"] == pytest.approx(4.0)
    assert "mpi" not in doc["comparison"]
    assert cli.exit_status(doc) == 0


def test_schema_violations_are_named():
    doc = _doc()
    del doc["implementations"]["gloo"]["rows"][1]["in_place"]["bus_bw"]
    with pytest.raises(ValueError, match=r"implementations\[gloo\]\.rows\[1\]\.in_place: missing keys \['bus_bw'\]"):
        report.validate_document(doc)
    doc = _doc()
    doc["implementations"]["mpi"]["status"] = "meh"
    with pytest.raises(ValueError, match="status 'meh'"):
        report.validate_document(doc)


def test_report_columns_footer_and_exit_status():
    doc = _doc()
    doc["implementations"]["gloo"]["rows"][0]["out_of_place"]["nwrong"] = 2
    text = report.format_report(doc)
    data_lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(data_lines) == 4 + 2  # two impls x two sizes, then the comparison rows
    cells = data_lines[0].split()
    assert cells[:5] == ["4096", "1024", "float", "sum", "-1"] and len(cells) == 13
    assert "# Out of bounds values : 2 FAILED" in text and "mpirun is not on PATH" in text
    assert "# Avg bus bandwidth" in text and "gloo oop" in text
    assert cli.exit_status(doc) == 1


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "busbw.png"
    report.plot(_doc(), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fmt_num_fits_its_width():
    for v in (0.0, 0.004, 3.14159, 123.4, 98765.4, 1.5e9):
        assert len(report.fmt_num(v, 8)) == 8
    assert report.fmt_num(None, 6).strip() == "N/A"


def test_reference_rejects_bad_reductions():
    with pytest.raises(ValueError, match="unknown op 'xor'"):
        data.reduce_blocks([np.ones(3)], "xor", np.float32)
    with pytest.raises(ValueError, match="at least one block"):
        data.reduce_blocks([], "sum", np.float32)


def test_algo_flag():
    assert cli.parse_args(["broadcast", "--algo", "binomial"]).algo == "binomial"
    with pytest.raises(SystemExit):
        cli.parse_args(["--algo", "Ring;rm"])


def test_hcomm_runner_refuses_an_algo_its_call_does_not_take():
    from hcomm.bench.runners import Unsupported, open_runner

    spec = _spec("allgather", algo="ring")
    with pytest.raises(Unsupported, match="hcomm's allgather takes no algorithm"):
        open_runner("hcomm", launch.World(0, 1, "test"), spec, 10)
