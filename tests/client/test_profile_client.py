"""infer-client --profile-dir: the servers' torch.profiler trace of the measured window, named in the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from server import profiling
from tests.support import run_cli

ITERS = 4


@pytest.mark.integration
def test_report_names_a_trace_of_the_measured_requests_only(server_factory, tmp_path: Path) -> None:
    server = server_factory("--device", "cpu", "--model", "resnet18", "--no-compile", "--warmup-image-size", "64")
    traces, csv_path, json_path = tmp_path / "traces", tmp_path / "out.csv", tmp_path / "out.json"
    traces.mkdir()
    proc = run_cli("client", "--server", server.endpoint, "--profile-dir", str(traces), "--batch-size", "2",
                   "--image-size", "64", "--num-iters", str(ITERS), "--warmup", "2",
                   "--output-file", str(csv_path), "--json-file", str(json_path))
    assert proc.returncode == 0, proc.stderr
    named = [line.removeprefix("profile trace: ") for line in proc.stdout.splitlines()
             if line.startswith("profile trace: ")]
    assert len(named) == 1, proc.stdout
    trace = Path(named[0])
    assert trace.parent == traces
    # The warm-up requests came before the window: one infer_job range per measured request.
    assert [e["name"] for e in profiling.load_events(trace)].count(profiling.JOB_RANGE) == ITERS
    assert json.loads(json_path.read_text())["profile_trace"] == [str(trace)]
    with open(csv_path) as f:
        assert next(csv.DictReader(f))["profile_trace"] == str(trace)


@pytest.mark.integration
def test_a_relative_profile_dir_is_refused_before_any_work() -> None:
    proc = run_cli("client", "--server", "tcp://127.0.0.1:9", "--profile-dir", "traces", timeout=60)
    assert proc.returncode == 2
    assert "absolute" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.integration
def test_a_missing_profile_dir_is_made_and_one_it_cannot_make_is_one_error_line(server_factory, tmp_path: Path) -> None:
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile")
    run = ("--server", server.endpoint, "--batch-size", "1", "--image-size", "32", "--num-iters", "2",
           "--output-file", "")
    made = tmp_path / "new" / "traces"
    proc = run_cli("client", *run, "--profile-dir", str(made), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"profile trace: {made}/trace-" in proc.stdout and len(list(made.glob("trace-*.json"))) == 1
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_cli("client", *run, "--profile-dir", str(blocker / "traces"), timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"Error: --profile-dir: {server.endpoint} answered BAD_REQUEST: "
                                            f"cannot create profile dir {blocker / 'traces'}: Not a directory")
    assert "requests:" not in proc.stdout  # refused before the measured phase


def test_config_refuses_profiling_several_processes() -> None:
    from client.config import ClientConfig

    with pytest.raises(ValueError, match="processes"):
        ClientConfig(profile_dir=Path("/tmp"), processes=2, num_iters=4)
    assert ClientConfig(profile_dir="/tmp").to_dict()["profile_dir"] == "/tmp"
