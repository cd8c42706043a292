"""sweep.py (sweeps/cli.py) end to end on CPU: real servers, a tiny grid, every output file checked."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import pytest

from tests.support import ROOT, SMALL_SWEEP, only_folder, sweep, sweep_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def parse_table(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "")) == {"-"}
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a small sweep (its --results-dir holds nothing else)."""
    results = tmp_path_factory.mktemp("sweep")
    proc = sweep(results, "--batch-sizes", "1,2", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return only_folder(results)


@pytest.mark.integration
@pytest.mark.timeout(280)
def test_small_sweep_writes_every_file(small_sweep: Path) -> None:
    assert small_sweep.name.startswith("sweep-")  # --results-dir is its parent
    logs = sorted((small_sweep / "logs").glob("server-*.log"))
    assert len(logs) == 4  # one server per configuration and repeat, each logging at info level
    assert all(" INFO " in log.read_text() and "ready: noop" in log.read_text() for log in logs)
    names = {p.name for p in small_sweep.iterdir()}
    assert {"output_1_off.md", "output_2_off.md", "summary.md", "throughput_latency.png", "latency_cdf.png",
            "report.html"} <= names
    for png in ("throughput_latency.png", "latency_cdf.png"):
        data = (small_sweep / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000

    summary = parse_table(small_sweep / "summary.md")
    assert [(r["batch"], r["compile"]) for r in summary] == [("1", "off"), ("2", "off")]
    for row in summary:
        assert row["repeats"] == "2" and row["host"] == socket.gethostname()
        mean, std = row["throughput (samples/s)"].split(" ± ")
        assert float(mean) > 0 and float(std) >= 0
        assert re.fullmatch(r"\d+\.\d ± \d+\.\d", row["throughput (samples/s)"])  # fixed decimals, no 1e+04
        for column in ("warm-up latency (ms)", "average latency (ms)", "p99 latency (ms)"):
            assert re.fullmatch(r"\d+\.\d{3} ± \d+\.\d{3}", row[column]), row[column]
        assert float(row["p99 latency (ms)"].split(" ± ")[0]) >= float(row["average latency (ms)"].split(" ± ")[0]) * 0.5
    title = (small_sweep / "summary.md").read_text().splitlines()[0]
    assert "noop on " in title and "32x32 px" in title and f"host {socket.gethostname()}" in title
    for batch in (1, 2):
        rows = parse_table(small_sweep / f"output_{batch}_off.md")
        assert len(rows) == 1 and rows[0]["repeats"] == "2"
        assert rows[0]["host"] == socket.gethostname() and rows[0]["model"] == "noop"

    (data,) = sweep_json(small_sweep.parent)
    env = data["environment"]
    for key in ("host", "cpu", "torch", "pyzmq", "git_commit", "command", "gpu_name"):
        assert key in env
    assert [len(c["runs"]) for c in data["configurations"]] == [2, 2]
    for conf in data["configurations"]:
        for run in conf["runs"]:
            assert run["spawn_to_ready_s"] > 0
            assert run["result"]["batch_size"] == conf["config"]["batch_size"]
            assert run["result"]["cold_start"][0]["warmup_latency"] > 0
    # A fresh server per run: every run saw a different server process.
    pids = {r["result"]["servers"][0]["pid"] for c in data["configurations"] for r in c["runs"]}
    assert len(pids) == 4


@pytest.mark.integration
@pytest.mark.timeout(280)
def test_a_second_sweep_into_the_same_results_dir_gets_a_folder_of_its_own(small_sweep: Path) -> None:
    before = {p: p.read_bytes() for p in small_sweep.iterdir() if p.is_file()}
    proc = sweep(small_sweep.parent, "--batch-sizes", "4", "--repeats", "1")
    seconds = set(small_sweep.parent.glob("sweep-*/")) - {small_sweep}
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        (second,) = seconds
        assert {"summary.md", "answer.md", "latency_cdf.png"} <= {p.name for p in second.iterdir()}
        assert parse_table(second / "summary.md")[0]["batch"] == "4"
        assert {p: p.read_bytes() for p in small_sweep.iterdir() if p.is_file()} == before  # nothing overwritten
    finally:  # the module's other tests resume the first sweep, alone in its --results-dir
        for folder in seconds:
            shutil.rmtree(folder)


@pytest.mark.integration
@pytest.mark.timeout(280)
def test_resume_says_what_it_reuses_and_runs_nothing_twice(small_sweep: Path) -> None:
    proc = sweep(small_sweep.parent, "--batch-sizes", "1,2,3", "--repeats", "1", "--resume", str(small_sweep))
    assert proc.returncode == 0, proc.stderr[-2000:]
    first_line = proc.stdout.splitlines()[0]
    assert first_line.startswith(f"resuming the sweep in {small_sweep}/ (sweep-") and "reusing 2 of 3" in first_line
    assert "b1 compile=off c1 w1; b2 compile=off c1 w1; running the other 1" in first_line
    assert list(small_sweep.parent.glob("sweep-*/")) == [small_sweep]  # it went on in the sweep's own folder
    first, second = sweep_json(small_sweep.parent)
    by_batch = {c["config"]["batch_size"]: c for c in second["configurations"]}
    assert by_batch[1].get("resumed") and by_batch[2].get("resumed")
    assert not by_batch[3].get("resumed") and len(by_batch[3]["runs"]) == 1
    # Resumed configurations are the earlier runs, not new ones: same server pids.
    old_pids = {r["result"]["servers"][0]["pid"] for c in first["configurations"] for r in c["runs"]}
    assert {r["result"]["servers"][0]["pid"] for r in by_batch[1]["runs"]} <= old_pids
    assert len(parse_table(small_sweep / "output_1_off.md")) == 1  # no second row: not rerun
    assert len(parse_table(small_sweep / "output_3_off.md")) == 1
    assert len(parse_table(small_sweep / "summary.md")) == 3


@pytest.mark.integration
def test_resume_refuses_a_sweep_with_configurations_this_one_lacks(small_sweep: Path) -> None:
    files = sorted(small_sweep.glob("sweep-*.json"))
    proc = sweep(small_sweep.parent, "--batch-sizes", "1", "--resume", str(small_sweep), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "ran configurations this one does not (b2 compile=off c1 w1" in proc.stderr
    assert sorted(small_sweep.glob("sweep-*.json")) == files and proc.stdout == ""  # nothing ran


# Runs sweep.py with one change: configurations with 3 workers get a --ready-file the server cannot
# write, so their server really fails at start (valid settings, a machine-side failure).
FAILING_SERVER_SWEEP = """
import sys
sys.argv[0] = {sweep!r}
sys.path.insert(0, {root!r})
from sweeps import cli, plan
argv = plan.Point.server_argv
def broken_for_three_workers(cfg):
    extra = ["--ready-file", {blocked!r}] if cfg.num_workers == 3 else []
    return argv(cfg) + extra
plan.Point.server_argv = broken_for_three_workers
cli.main()
"""


@pytest.mark.integration
@pytest.mark.timeout(280)
def test_server_that_cannot_start_is_recorded_and_sweep_goes_on_and_exits_1(tmp_path: Path) -> None:
    import subprocess
    import sys

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    script = FAILING_SERVER_SWEEP.format(sweep=str(ROOT / "sweep.py"), root=str(ROOT),
                                         blocked=str(blocker / "ready.json"))
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-c", script, *SMALL_SWEEP, "--results-dir", str(results), "--batch-sizes", "1", "--repeats", "1",
         "--num-workers", "3,1"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]  # some configuration failed
    assert "FAILED" in proc.stderr and "Traceback" not in proc.stderr
    (data,) = sweep_json(results)
    results = only_folder(results)
    bad, good = data["configurations"]
    assert bad["status"] == "failed" and "server did not start" in bad["reason"] and bad["runs"] == []
    assert "--ready-file" in bad["reason"]  # the server's own one-line error
    assert good["status"] == "ok" and len(good["runs"]) == 1
    rows = parse_table(results / "summary.md")
    assert [r["workers"] for r in rows] == ["3", "1"]
    assert rows[0]["throughput (samples/s)"] == "failed" and "server did not start" in rows[0]["note"]
    assert float(rows[1]["throughput (samples/s)"].split(" ± ")[0]) > 0
    assert "1 ok, 1 failed" in proc.stdout


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--batch-sizes", "1,x"], "--batch-sizes"),
        (["--batch-sizes", ""], "--batch-sizes"),  # an empty axis is a mistake, not the default grid
        (["--concurrency", ""], "--concurrency"),
        (["--num-workers", "65,1"], "--num-workers"),  # outside the server's range: refused before any run
        (["--server", "not-an-endpoint"], "--server"),
    ],
)
def test_bad_flags_give_one_readable_line_and_run_nothing(tmp_path: Path, args: list[str], named: str) -> None:
    proc = sweep(tmp_path, *args, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert named in proc.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.iterdir())  # nothing written, no server started


def test_server_argv_is_the_server_configs() -> None:
    from common.click_options import from_params
    from server.cli import main as server_main
    from server.config import ServerConfig
    from sweeps.plan import Point

    cfg = Point(server=(("compile", False), ("num_workers", 3), ("device", "cpu"), ("model", "noop")),
                client=(("batch_size", 4), ("concurrency", 2), ("image_size", 64), ("num_iters", 5)))
    ctx = server_main.make_context("infer-server", cfg.server_argv())
    parsed = from_params(ServerConfig, dict(ctx.params))
    assert parsed == cfg.server_config()
    assert (parsed.num_workers, parsed.compile, parsed.model, parsed.device) == (3, False, "noop", "cpu")
    assert "--bind" not in cfg.server_argv()  # launch_server chooses the endpoint


@pytest.mark.integration
@pytest.mark.timeout(280)
def test_remote_server_is_reloaded_for_server_side_axes(tmp_path: Path, server_factory) -> None:
    remote = server_factory("--device", "cpu", "--model", "noop", "--no-compile", "--num-workers", "2")
    proc = sweep(tmp_path, "--server", remote.endpoint, "--batch-sizes", "1", "--repeats", "1",
                 "--num-workers", "1,3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (data,) = sweep_json(tmp_path)
    served = {}
    for record in data["configurations"]:
        assert record["status"] == "ok", record.get("reason")
        (run,) = record["runs"]
        served[record["config"]["num_workers"]] = run["result"]["servers"][0]["num_workers"]
    assert served == {1: 1, 3: 3}  # each configuration ran on a server reloaded with its setting
    assert remote.proc.poll() is None  # the same process (re-exec keeps the pid) still serves


@pytest.mark.integration
@pytest.mark.timeout(280)
def test_a_server_that_refuses_control_serves_client_side_axes_without_a_reload(tmp_path: Path, server_factory) -> None:
    # Bound beyond loopback without CURVE, the server answers every CONTROL with UNAUTHORIZED.
    remote = server_factory("--device", "cpu", "--model", "noop", "--no-compile", "--num-workers", "1",
                            bind="tcp://0.0.0.0:*")
    endpoint = "tcp://127.0.0.1:" + remote.endpoint.rsplit(":", 1)[1]
    proc = sweep(tmp_path / "a", "--server", endpoint, "--batch-sizes", "1", "--repeats", "2", "--concurrency", "1,2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (data,) = sweep_json(tmp_path / "a")
    runs = [run for record in data["configurations"] for run in record["runs"]]
    assert len(runs) == 4 and all(run["spawn_to_ready_s"] is None for run in runs)  # no reload: no new start
    assert len({run["result"]["servers"][0]["instance"] for run in runs}) == 1  # the same server instance
    assert {r["config"]["num_workers"] for r in data["configurations"]} == {1}  # the server's own setting

    # A server setting it does not run with needs a reload, which it refuses: every configuration fails, and
    # the lines that say so read cleanly (no "wrote ...json, ", no "answer.md ()").
    proc = sweep(tmp_path / "b", "--server", endpoint, "--batch-sizes", "1", "--repeats", "1", "--num-workers", "2,3")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.count("FAILED") == 2 and "CURVE" in proc.stderr
    folder = only_folder(tmp_path / "b")
    lines = proc.stdout.splitlines()
    (wrote,) = [line for line in lines if "; wrote " in line]
    assert wrote == f"0 ok, 2 failed; wrote {folder}/summary.md, {next(folder.glob('sweep-*.json')).name}"
    assert lines[-1] == f"the answer: {folder}/answer.md (report.html)"
    assert remote.proc.poll() is None


@pytest.mark.integration
def test_unwritable_results_dir_is_refused_before_any_run(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for results in (blocker, blocker / "results"):
        proc = sweep(results, "--batch-sizes", "1", timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "--results-dir" in proc.stderr.strip().splitlines()[-1]
        assert proc.stdout == ""  # not even the opening line: nothing ran
