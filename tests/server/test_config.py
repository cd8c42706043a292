"""ServerConfig: each option declared once; argv, reload and validation derived from the fields.

Unit tests: no server process. The click command is parsed in-process.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from common import click_options, options
from common.protocol import Limits
from server.cli import main as server_main
from server.config import RELOADABLE, ServerConfig
from tests.support import ROOT

NON_DEFAULT_CONFIGS = [
    ServerConfig(bind=("tcp://127.0.0.1:*",), device="cpu", model="noop", compile=False, num_workers=0),
    ServerConfig(
        bind=("tcp://127.0.0.1:6000", "ipc:///tmp/infer-test.sock"), model="sleep", service_ms=2.5,
        service_dist="exp", service_per_row=True, max_batch_size=8, batch_timeout_us=2000,
    ),
    ServerConfig(
        device="cuda:1", compile_mode="max-autotune", precision="bf16", channels_last=True,
        warmup_batch_sizes=(1, 32, 64), warmup_image_size=128, warmup_dtype="uint8", threads=4,
        cudnn_benchmark=True, log_level="warning",
    ),
    ServerConfig(
        max_inflight=7, max_inflight_bytes=12345, limits=Limits(max_frame_bytes=3 << 20),
        model_dir=Path("/nonexistent/models"), curve_dir=Path("keys"), ready_file=Path("out/ready.json"),
    ),
    ServerConfig(model="vit_b_16", model_dir=Path("models"), allow_random_init=True),
    ServerConfig(model="my_pkg.nets:make_net", input_shape=(1, 28, 28), input_dtype="uint8", warmup_batch_sizes=(8,)),
]

# The reloads that each killed a server before they were validated: well-typed, invalid.
BAD_RELOADS = [
    ("num_workers", {"num_workers": 100000}),
    ("num_workers", {"num_workers": -1}),
    ("max_batch_size", {"max_batch_size": -1}),
    ("batch_timeout_us", {"batch_timeout_us": -5}),
    ("threads", {"threads": -1}),
    ("warmup_image_size", {"warmup_image_size": 1}),
    ("model", {"model": "resnet99"}),  # looks like a torchvision name; torchvision has none such
    ("model", {"model": "Res Net"}),
    ("model", {"model": "my_pkg.nets:make_net", "input_shape": [3, 8, 8]}),  # code named over the wire
    ("precision", {"precision": "int4"}),
    ("compile_mode", {"compile_mode": "fastest"}),
    ("warmup_batch_sizes", {"warmup_batch_sizes": [0]}),
    ("warmup_batch_sizes", {"warmup_batch_sizes": [4096], "warmup_image_size": 4096}),  # ~825 GB of input
    ("warmup_dtype", {"warmup_dtype": "int64"}),
]
WRONG_TYPE_RELOADS = [
    ("num_workers", {"num_workers": "2"}),
    ("compile", {"compile": 1}),
    ("num_workers", {"num_workers": True}),
    ("warmup_batch_sizes", {"warmup_batch_sizes": 8}),
    ("service_ms", {"service_ms": "fast"}),
    ("bind", {"bind": ["tcp://0.0.0.0:1"]}),  # not reloadable
    ("no_such_option", {"no_such_option": 1}),  # unknown
]


def parse(argv: list[str]) -> ServerConfig:
    """What `infer-server ARGV` would run with."""
    ctx = server_main.make_context("infer-server", list(argv))
    params = dict(ctx.params)
    config = click_options.from_params(ServerConfig, params)
    assert not params, f"options that are not ServerConfig fields: {sorted(params)}"
    return config


@pytest.mark.parametrize("config", NON_DEFAULT_CONFIGS, ids=range(len(NON_DEFAULT_CONFIGS)))
def test_argv_round_trip(config: ServerConfig) -> None:
    assert parse(config.to_argv()) == config


def test_default_config_is_the_command_lines_default() -> None:
    assert ServerConfig().to_argv() == []
    assert parse([]) == ServerConfig()


def test_every_field_is_an_option_and_every_option_a_field() -> None:
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    assert fields == {f.name for f, _ in options.options_of(ServerConfig)}
    cli_params = {p.name for p in server_main.params} - {"version", "help", "list_models"}
    assert cli_params == (fields - {"limits"}) | {"limits__max_frame_bytes"}


def test_reloadable_settings_derive_from_the_fields() -> None:
    assert RELOADABLE == options.reloadable(ServerConfig)
    # the settings reload has always accepted, and the new synthetic-model and cuDNN ones
    assert {"compile", "compile_mode", "num_workers", "precision", "channels_last", "max_batch_size",
            "batch_timeout_us", "warmup_batch_sizes", "warmup_image_size", "model", "threads"} <= set(RELOADABLE)
    assert {"service_ms", "service_dist", "service_per_row", "cudnn_benchmark"} <= set(RELOADABLE)
    assert not {"bind", "curve_dir", "ready_file", "limits"} & set(RELOADABLE)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"num_workers": 65}, "--num-workers"),
        ({"bind": ()}, "--bind"),
        ({"bind": ("tcp://127.0.0.1:70000",)}, "--bind"),
        ({"bind": ("localhost:5555",)}, "--bind"),
        ({"bind": ("ipc://" + "x" * 200,)}, "--bind"),
        ({"device": "gpu0"}, "--device"),
        ({"model": "Res Net"}, "--model"),
        ({"model": "os.path"}, "--model"),
        ({"input_shape": (3, 8, 8)}, "--input-shape"),  # only a user model takes it
        ({"input_dtype": "uint8"}, "--input-dtype"),
        ({"model": "my_pkg.nets:make_net"}, "--input-shape"),
        ({"model": "my_pkg.nets:make_net", "input_shape": (4,), "model_dir": Path("m")}, "--model-dir"),
        ({"service_dist": "normal"}, "--service-dist"),
        ({"max_inflight_bytes": 0}, "--max-inflight-bytes"),
        ({"limits": Limits(max_frame_bytes=10)}, "--max-message-bytes"),
        ({"warmup_batch_sizes": (4096,), "warmup_image_size": 4096}, "--warmup-batch-sizes"),
        # 256 x 3 x 250 x 250 float32 is 192 MB: more than a 64 MiB frame limit lets a request carry
        ({"warmup_batch_sizes": (1, 256), "limits": Limits(max_frame_bytes=64 << 20)}, "--warmup-batch-sizes"),
        ({"compile": "yes"}, "--compile"),
    ],
)
def test_invalid_configs_are_refused_naming_the_option(changes: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ServerConfig(**changes)


def test_values_are_normalised_to_the_fields_types() -> None:
    config = ServerConfig(bind=["tcp://127.0.0.1:*"], warmup_batch_sizes=[1, 2], service_ms=5, model_dir="/tmp")
    assert config.bind == ("tcp://127.0.0.1:*",) and config.warmup_batch_sizes == (1, 2)
    assert config.service_ms == 5.0 and isinstance(config.service_ms, float) and config.model_dir == Path("/tmp")


@pytest.mark.parametrize(("setting", "settings"), BAD_RELOADS + WRONG_TYPE_RELOADS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_RELOADS + WRONG_TYPE_RELOADS)])
def test_invalid_reload_settings_are_refused_naming_the_setting(setting: str, settings: dict) -> None:
    base = ServerConfig(bind=("tcp://127.0.0.1:6000",), model="noop")
    with pytest.raises(ValueError, match=setting):
        ServerConfig.from_settings(base, settings)


def test_a_valid_reload_changes_only_its_settings() -> None:
    base = ServerConfig(bind=("tcp://127.0.0.1:6000",), model="noop", max_inflight=9)
    new = ServerConfig.from_settings(base, {"num_workers": 3, "warmup_batch_sizes": [1, 4], "service_ms": 5})
    assert new == base.replace(num_workers=3, warmup_batch_sizes=(1, 4), service_ms=5.0)
    assert parse(new.to_argv()) == new  # what the re-exec will run with


def test_config_as_json_names_every_field() -> None:
    config = NON_DEFAULT_CONFIGS[3]
    as_json = json.loads(json.dumps(config.to_json()))
    assert set(as_json) == {f.name for f in dataclasses.fields(ServerConfig)}
    assert as_json["ready_file"] == "out/ready.json" and as_json["limits"]["max_frame_bytes"] == 3 << 20


def test_byte_sizes_are_accepted_with_units() -> None:
    assert parse(["--max-inflight-bytes", "2GiB", "--max-message-bytes", "512MiB"]) == ServerConfig(
        max_inflight_bytes=2 << 30, limits=Limits(max_frame_bytes=512 << 20)
    )


@pytest.mark.integration
def test_model_names_are_checked_without_importing_torchvision() -> None:
    # Any name shaped like torchvision's is accepted here; whether torchvision has it is checked at start-up.
    proc = _run_python("import sys; from server.config import ServerConfig as C; "
                       "[C(model=m) for m in ('resnet18', 'vit_b_16', 'no_such_net', 'noop')]; "
                       "C(model='a.b:c', input_shape=(3, 8, 8)); print(sorted({'torch', 'torchvision'} & set(sys.modules)))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_reload_may_switch_between_torchvision_models_but_not_to_a_missing_checkpoint(tmp_path: Path) -> None:
    base = ServerConfig(model="resnet18")
    assert ServerConfig.from_settings(base, {"model": "mobilenet_v3_small"}).model == "mobilenet_v3_small"
    with_dir = base.replace(model_dir=tmp_path)  # holds no checkpoint: the re-executed server could not start
    with pytest.raises(ValueError, match="no checkpoint for mobilenet_v3_small"):
        ServerConfig.from_settings(with_dir, {"model": "mobilenet_v3_small"})
    allowed = ServerConfig.from_settings(with_dir, {"model": "mobilenet_v3_small", "allow_random_init": True})
    assert allowed.allow_random_init


def test_a_user_model_keeps_its_own_input_and_warm_up_size() -> None:
    user = NON_DEFAULT_CONFIGS[-1]
    assert parse(user.to_argv()) == user
    # 4096 samples of 1x28x28 uint8 fit in one request; as 3x250x250 float32 images they would not.
    assert user.replace(warmup_batch_sizes=(4096,), limits=Limits(max_frame_bytes=4 << 20)).warmup_batch_sizes
    # The same user model may be reloaded with other settings.
    assert ServerConfig.from_settings(user, {"input_shape": [1, 32, 32]}).input_shape == (1, 32, 32)


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.integration
def test_the_command_line_imports_nothing_heavy() -> None:
    # What keeps --help and usage errors instant: torch alone takes seconds to import.
    proc = _run_python("import sys, server.cli; print(sorted({'torch', 'zmq', 'psutil'} & set(sys.modules)))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "named"),
    [(["--num-workers", "100"], "--num-workers"), (["--bind", "tcp://127.0.0.1:70000"], "--bind"),
     (["--warmup-batch-sizes", "4096", "--warmup-image-size", "4096"], "--warmup-batch-sizes"),
     (["--max-inflight-bytes", "2 GiBs"], "--max-inflight-bytes")],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], named: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and named in last
