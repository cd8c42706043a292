"""Sweep files and axes (sweeps/axes.py, sweeps/plan.py): every option an axis, the two syntaxes, TOML and flags
alike, and the grid's points."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.config import ClientConfig
from common.options import options_of
from server.config import ServerConfig
from sweeps import axes
from sweeps.axes import parse_text
from sweeps.cli import machine_defaults, plan_of
from sweeps.plan import axis_flags, build_plan, flags_doc, plan_from_doc, read_toml

ROOT = Path(__file__).resolve().parents[2]

TOML = """
[sweep]
repeats = 3
mode = "peak"

[peak]
slo_ms = 50

[server]
model = "sleep"
precision = ["fp32", "bf16"]
max_batch_size = [0, 8]
batch_timeout_us = "500:2000:500"
channels_last = "both"

[client]
batch_size = 1
concurrency = [1, 4]
"""

FLAGS = ("precision=fp32,bf16", "max_batch_size=0,8", "batch_timeout_us=500:2000:500", "channels_last=off,on",
         "batch_size=1", "concurrency=1,4", "model=sleep")


def test_every_server_option_of_a_sweepable_kind_is_an_axis() -> None:
    # Derived from the fields, so an option added to ServerConfig is an axis without touching the sweep.
    fields = {f.name for f, opt in options_of(ServerConfig) if opt.kind in axes.AXIS_KINDS}
    assert set(axes.SERVER_AXES) == fields - axes.SWEEP_OWNED
    for name in ("precision", "channels_last", "compile_mode", "num_workers", "threads", "max_batch_size",
                 "batch_timeout_us", "model", "service_ms", "warmup_dtype", "cudnn_benchmark"):
        assert name in axes.SERVER_AXES
    for name in ("request_rate", "concurrency", "batch_size", "wire_dtype", "transport", "arrival"):
        assert name in axes.CLIENT_AXES
    assert "bind" not in axes.SERVER_AXES and "servers" not in axes.CLIENT_AXES


def test_the_toml_file_and_the_flags_give_the_same_grid(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(TOML)
    from_file = build_plan({}, read_toml(path), {})
    from_flags = build_plan({}, None, flags_doc(axes=FLAGS, repeats=3, find_peak=True, slo_ms=50.0))
    assert [p.key for p in from_file.points()] == [p.key for p in from_flags.points()]
    assert len(from_file.points()) == 2 * 2 * 4 * 2 * 2
    assert (from_file.repeats, from_file.mode, from_file.peak) == (3, "peak", {"slo_ms": 50})
    assert from_file.server["batch_timeout_us"] == (500, 1000, 1500, 2000)


def test_flags_override_the_file_and_the_file_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(TOML)
    defaults = {"client": {"image_size": 64, "num_iters": 20, "batch_size": [1, 8]}, "sweep": {"repeats": 2}}
    plan = build_plan(defaults, read_toml(path), flags_doc(concurrency="2", axes=("precision=bf16",)))
    assert plan.client["concurrency"] == (2,) and plan.server["precision"] == ("bf16",)
    assert plan.client["batch_size"] == (1,) and plan.client["image_size"] == (64,) and plan.repeats == 3
    # A duration given anywhere replaces the default number of requests rather than contradicting it.
    timed = build_plan(defaults, None, flags_doc(duration_s=2.0))
    timed.points()[0].client_config(("tcp://127.0.0.1:5555",), 60.0)
    assert timed.client["duration_s"] == (2.0,) and timed.client["num_iters"] == (None,)


def test_points_build_valid_configs_with_server_axes_outermost() -> None:
    flags = flags_doc(axes=("num_workers=1,2", "request_rate=10:30:10", "batch_size=1,4"))
    plan = build_plan(machine_defaults(cuda=False), None, flags)
    points = plan.points()
    assert [dict(p.server)["num_workers"] for p in points] == [1] * 6 + [2] * 6
    assert [dict(p.client)["request_rate"] for p in points[:3]] == [10.0, 20.0, 30.0]  # the curve axis innermost
    assert plan.curve_axis == "request_rate"
    server = points[0].server_config()
    client = points[0].client_config(("tcp://127.0.0.1:5555",), 60.0)
    assert isinstance(server, ServerConfig) and isinstance(client, ClientConfig)
    assert points[0].label == "b1 compile=off c1 w1 request_rate=10"
    assert len({p.key for p in points}) == len(points)


@pytest.mark.parametrize(("text", "kind", "expected"), [
    ("1,2,4", "int", (1, 2, 4)),
    ("0:8:4", "int", (0, 4, 8)),
    ("0.1:0.3:0.1", "float", (0.1, 0.2, 0.3)),
    ("both", "bool", (False, True)),
    ("on", "bool", (True,)),
    ("1/8,1", "ints", ((1, 8), (1,))),
    ("1GiB,2GiB", "bytes", (1 << 30, 2 << 30)),
])
def test_axis_text_syntax(text: str, kind: str, expected: tuple) -> None:
    assert parse_text(axes.Opt(help="", kind=kind), text) == expected


@pytest.mark.parametrize(("doc", "named"), [
    ({"server": {"precision": []}}, "empty"),
    ({"server": {"no_such_option": 1}}, "no_such_option"),
    ({"server": {"precision": ["fp64"]}}, "precision"),
    ({"server": {"max_batch_size": "8:0:1"}}, "step must be positive"),
    ({"client": {"concurrency": [1.5]}}, "concurrency"),
    ({"sweep": {"mode": "peak"}}, "slo_ms"),
    ({"sweep": {"mode": "peak"}, "peak": {"slo_ms": 50}, "client": {"request_rate": [10, 20]}}, "request_rate"),
    ({"sweep": {"repeats": 0}}, "repeats"),
    ({"sweep": {"color": "blue"}}, "color"),
    ({"axes": {}}, "axes"),
])
def test_bad_plans_name_what_is_wrong(doc: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        plan_from_doc(doc)


def test_bad_axis_flags_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="NAME=VALUES"):
        axis_flags(["precision"])
    with pytest.raises(ValueError, match="empty"):
        axis_flags(["precision="])


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\nprecision = 1")
    with pytest.raises(ValueError, match="broken.toml"):
        read_toml(path)


@pytest.mark.parametrize("name", ["cpu-2core.toml", "gpu-h200.toml"])
def test_example_sweep_files_are_valid_plans(name: str) -> None:
    plan = build_plan({}, read_toml(ROOT / "examples" / "sweeps" / name), {})
    points = plan.points()
    assert points and plan.mode == "peak"
    for point in points:
        point.server_config()
        point.client_config(("tcp://127.0.0.1:5555",), 600.0)


def test_a_model_axis_is_named_in_every_label_and_file_name() -> None:
    _, grid = plan_of(False, {"server": {"model": ["resnet18", "resnet50"]}, "client": {"batch_size": 8}}, {})
    assert [c.label for c in grid] == ["b8 compile=off c1 w1 model=resnet18", "b8 compile=off c1 w1 model=resnet50"]
    assert len({c.slug for c in grid}) == 2
