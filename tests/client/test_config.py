"""ClientConfig: each option declared once; argv and validation derived from the fields.

Unit tests: no server process. The click command is parsed in-process.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from client.cli import main as client_main
from client.config import ClientConfig, CurveKeys
from client.peak_cli import PEAK_PARAMS
from common import click_options, options
from tests.support import ROOT

OUTPUT_PARAMS = {"output_file", "json_file", "print_json", "progress_interval", "quiet"}  # how the CLI reports
# What the CLI does with the config: one run, or a search over runs (client/peak.py); not a run setting.
MODE_PARAMS = set(PEAK_PARAMS)
CLI_ONLY_PARAMS = OUTPUT_PARAMS | MODE_PARAMS

NON_DEFAULT_CONFIGS = [
    ClientConfig(servers=("tcp://127.0.0.1:6000", "ipc:///tmp/a.sock"), batch_size=1, image_size=32,
                 wire_dtype="uint8", num_iters=7, warmup=0, concurrency=0, seed=-3),
    ClientConfig(duration_s=2.5, request_rate=150.0, arrival="gamma", burstiness=0.5, slo_ms=20.0,
                 window_s=0.5, max_windows=4, stability_windows=4, stability_tolerance=0.2),
    ClientConfig(window_s=1.0, timeout_s=5.0, reconnect_timeout_s=3.0, warmup_timeout_s=60.0,
                 trace_file=Path("out/trace.jsonl"), gpu_source="off", gpu_interval_s=0.5, processes=3,
                 label="fp32 baseline", transport="shm", shm_refresh=True),
    ClientConfig(curve=CurveKeys(Path("pyproject.toml"), Path("Makefile")), request_rate=10.0, concurrency=4),
]


def parse(argv: list[str]) -> ClientConfig:
    """What `infer-client ARGV` would run with (CURVE key paths must exist: they are this repo's files)."""
    ctx = client_main.make_context("infer-client", list(argv))
    params = {k: v for k, v in ctx.params.items() if k not in CLI_ONLY_PARAMS}
    config = click_options.from_params(ClientConfig, params)
    assert not params, f"options that are not ClientConfig fields: {sorted(params)}"
    return config


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the CURVE key paths above are relative to it


@pytest.mark.parametrize("config", NON_DEFAULT_CONFIGS, ids=range(len(NON_DEFAULT_CONFIGS)))
def test_argv_round_trip(config: ClientConfig) -> None:
    assert parse(config.to_argv()) == config


def test_command_line_defaults_are_kept() -> None:
    assert parse([]) == ClientConfig()
    default = ClientConfig()
    assert default.num_iters == 100 and default.concurrency == 1 and default.duration_s is None
    # Open loop: no cap on requests in flight unless one is asked for.
    assert parse(["--request-rate", "50"]).concurrency == 0
    assert parse(["--request-rate", "50", "--concurrency", "3"]).concurrency == 3
    # A duration or a window replaces the default request count.
    assert parse(["--duration", "2"]).num_iters is None
    assert parse(["--window-s", "1"]).run_until_stable


def test_every_field_is_an_option() -> None:
    fields = {f.name for f in dataclasses.fields(ClientConfig)}
    assert fields == {f.name for f, _ in options.options_of(ClientConfig)}
    cli_params = {p.name for p in client_main.params} - {"version", "help"} - CLI_ONLY_PARAMS
    assert cli_params == (fields - {"curve"}) | {"curve__client_secret", "curve__server_public"}
    assert {"transport", "shm_refresh", "label"} <= fields


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"num_iters": 10, "duration_s": 2.0}, "--duration"),
        ({"num_iters": 2, "processes": 4}, "--processes"),
        ({"stability_windows": 5, "max_windows": 4}, "--max-windows"),
        ({"shm_refresh": True}, "--shm-refresh"),
        ({"transport": "rdma"}, "--transport"),
        ({"servers": ("not-an-endpoint",)}, "--server"),
        ({"servers": ("tcp://127.0.0.1:*",)}, "--server"),  # a wildcard port is for binding, not connecting
        ({"servers": ()}, "--server"),
        ({"batch_size": 0}, "--batch-size"),
        ({"batch_size": 2.0}, "--batch-size"),
        ({"wire_dtype": "float16"}, "--wire-dtype"),
        ({"request_rate": 0.0}, "--request-rate"),
        ({"arrival": "bursty"}, "--arrival"),
    ],
)
def test_invalid_configs_are_refused_naming_the_option(changes: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ClientConfig(**changes)


def test_curve_keys_go_together() -> None:
    with pytest.raises(ValueError, match="--curve-client-key and --curve-server-key go together"):
        parse(["--curve-server-key", "Makefile"])


def test_parts_share_the_load() -> None:
    config = ClientConfig(num_iters=10, processes=3, concurrency=4, request_rate=30.0, trace_file=Path("t.jsonl"))
    parts = [config.part(i, 3) for i in range(3)]
    assert [p.num_iters for p in parts] == [4, 3, 3]
    assert [p.concurrency for p in parts] == [2, 1, 1]
    assert {p.request_rate for p in parts} == {10.0} and {p.processes for p in parts} == {1}
    assert [p.trace_file for p in parts] == [Path("t.0.jsonl"), Path("t.1.jsonl"), Path("t.2.jsonl")]


@pytest.mark.integration
def test_the_command_line_imports_nothing_heavy() -> None:
    code = "import sys, client.cli; print(sorted({'torch', 'zmq', 'numpy'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "named"),
    [(["--num-iters", "5", "--duration", "1"], "--duration"), (["--server", "not-an-endpoint"], "--server"),
     (["--server", "tcp://127.0.0.1:70000"], "--server"), (["--curve-server-key", "Makefile"], "--curve-client-key")],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], named: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "client", *args, "--output-file", ""], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and named in last
