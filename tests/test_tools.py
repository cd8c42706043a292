"""Every command-line tool: instant --help and usage errors, --version, -h, and help that states defaults.

Instant means nothing heavy is imported before it is needed: checked exactly
(which modules a `--help` loaded) and by the clock with a generous bound (the
3 s that importing torch costs would still fail it).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time

import click
import pytest

from tests.support import ROOT

# name -> (module, function): console scripts from pyproject.toml, and sweep.py (infer-sweep's entry point)
TOOLS = {
    "infer-server": ("server.cli", "main"),
    "infer-client": ("client.cli", "main"),
    "infer-merge": ("client.merge", "main"),
    "infer-keygen": ("common.security", "keygen_main"),
    "infer-stats": ("client.stats_cli", "main"),
    "infer-compare": ("sweeps.compare", "main"),
    "infer-sweep": ("sweeps.cli", "main"),
    "sweep.py": ("sweep", "main"),
}
HEAVY = ("torch", "numpy", "matplotlib", "tqdm")
HELP_BOUND_S = 1.5  # wall clock for a whole interpreter start plus --help; torch alone takes longer
NO_DEFAULT_NEEDED = {"help", "version"}

PROBE = """
import sys, time
sys.argv = [{name!r}, *{args!r}]
from {module} import {function} as entry
code = 0
try:
    entry()
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _probe(name: str, *args: str) -> tuple[subprocess.CompletedProcess, float, list[str]]:
    module, function = TOOLS[name]
    code = PROBE.format(name=name, args=list(args), module=module, function=function, heavy=HEAVY)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    heavy_line = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")][-1]
    return proc, elapsed, [m for m in heavy_line[len("HEAVY="):].split(",") if m]


@pytest.mark.integration
@pytest.mark.parametrize("name", TOOLS)
@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--frobnicate"]], ids=["help", "h", "usage-error"])
def test_help_and_usage_errors_answer_at_once(name: str, args: list[str]) -> None:
    proc, elapsed, heavy = _probe(name, *args)
    assert heavy == [], f"{name} {args[0]} imported {heavy}"
    assert elapsed < HELP_BOUND_S, f"{name} {args[0]} took {elapsed:.2f} s"
    if args[0] == "--frobnicate":
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and errors[0].startswith("Error: No such option '--frobnicate'."), proc.stderr
    else:
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: "), proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("name", TOOLS)
def test_version(name: str) -> None:
    from common import __version__

    proc, _, _ = _probe(name, "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"{name}, version {__version__}"


def _command(name: str) -> click.Command:
    module, function = TOOLS[name]
    if name == "infer-keygen":  # its command is built inside the entry point
        import common.security

        captured: list[click.Command] = []
        original = click.Command.__call__
        click.Command.__call__ = lambda self, *a, **k: captured.append(self)  # type: ignore[method-assign]
        try:
            common.security.keygen_main()
        finally:
            click.Command.__call__ = original  # type: ignore[method-assign]
        return captured[0]
    return getattr(importlib.import_module(module), function)


@pytest.mark.parametrize("name", TOOLS)
def test_every_option_has_help_and_states_its_default(name: str) -> None:
    command = _command(name)
    ctx = click.Context(command, **command.context_settings)
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in NO_DEFAULT_NEEDED:
            continue
        record = param.get_help_record(ctx)
        assert record and len(record[1]) > 20, f"{name} {param.opts}: no help"
        if param.is_flag and not param.secondary_opts:
            continue  # a plain switch: off unless given
        assert "default:" in record[1], f"{name} {param.opts} does not state its default: {record[1]!r}"


def test_byte_sizes_are_shown_and_accepted_as_binary_units() -> None:
    from click.testing import CliRunner

    from server.cli import main as server_main

    text = CliRunner().invoke(server_main, ["--help"]).stdout
    assert "[default: 2GiB]" in " ".join(text.split())
    ctx = server_main.make_context("infer-server", ["--max-inflight-bytes", "512MiB"])
    assert ctx.params["max_inflight_bytes"] == 512 << 20


@pytest.mark.integration
@pytest.mark.parametrize(
    ("model", "says"),
    [("bad name!", "is not a model"), ("resnet_that_does_not_exist", "unknown model")],
    ids=["syntax", "unknown-torchvision-name"],
)
def test_sweep_model_is_any_server_model_and_a_bad_one_is_exit_2_before_any_run(tmp_path, model, says) -> None:
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "--model", model, "--num-iters", "1",
                           "--results-dir", str(results)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "--model" in last and says in last, last
    assert not results.exists()  # nothing written, no server started
    ctx = importlib.import_module("sweep").main.make_context("sweep.py", ["--model", "mobilenet_v3_small"])
    assert ctx.params["model"] == "mobilenet_v3_small"  # not limited to the built-in names
