"""The models in-process: names without torch, the input each takes, user factories, the stand-ins'
logits, the sleep model's service time (torchvision's models: tests/server/test_zoo.py).

Times are measured with time.monotonic around calls. A call must never end
before its service time (the model waits for a deadline); the upper bounds are
generous multiples, loose enough for a busy machine, tight enough to catch a
wait that is doubled or serialised.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import statistics
import sys
import threading
import time

import pytest
import torch

from common.protocol import ErrorCode, Limits, ProtocolError
from server.models.build import build_model, check_model
from server.models.spec import MODEL_NAMES, SERVICE_DISTS, InputSpec, ModelError, check_model_syntax
from server.models.synthetic import SleepModel, wait_until
from server.runner import ModelRunner
from tests.support import ROOT

CPU = torch.device("cpu")


def _timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def test_model_names_import_without_torch(monkeypatch) -> None:
    # Fresh copies of server/models/spec.py and build.py with torch unimportable: the CLI validates --model this way.
    monkeypatch.setitem(sys.modules, "torch", None)
    modules = {}
    for name in ("spec", "build"):
        spec = importlib.util.spec_from_file_location(f"{name}_without_torch", ROOT / "server" / "models" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        modules[name] = module
    assert modules["spec"].MODEL_NAMES == ("resnet18", "noop", "sleep") == MODEL_NAMES
    assert modules["spec"].SERVICE_DISTS == ("fixed", "exp") == SERVICE_DISTS
    assert callable(modules["build"].check_model)


@pytest.mark.parametrize("name", ["noop", "sleep"])
def test_stand_ins_return_each_samples_rows(name: str) -> None:
    model, info = build_model(name, CPU, None, service_ms=0.0)
    x = torch.rand(5, 3, 8, 8)
    out = model(x)
    assert out.shape == (5, 1000) and out.dtype == torch.float32
    assert torch.equal(out, x[:, 0, 0, 0].unsqueeze(1).expand(5, 1000))
    assert info.source == ("noop" if name == "noop" else "sleep(fixed 0 ms)")


def test_sleep_model_through_the_runner_takes_uint8_and_returns_float32() -> None:
    model, _ = build_model("sleep", CPU, None, service_ms=1.0)
    out = ModelRunner(model, CPU)(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8))
    assert out.shape == (2, 1000) and out.dtype == torch.float32


def test_unknown_model_and_bad_sleep_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet99'"):
        build_model("resnet99", CPU, None)
    with pytest.raises(ValueError, match="fixed, exp"):
        build_model("sleep", CPU, None, service_dist="gamma")
    with pytest.raises(ValueError, match=">= 0 ms"):
        build_model("sleep", CPU, None, service_ms=-1.0)


def test_fixed_service_time_is_never_short_and_not_much_long() -> None:
    model = SleepModel(service_ms=20.0)
    x = torch.zeros(1, 3, 4, 4)
    times = [_timed(lambda: model(x)) for _ in range(5)]
    assert all(t >= 0.020 for t in times), times
    assert statistics.median(times) < 0.020 * 1.5, times


def test_per_row_service_time_scales_with_the_batch() -> None:
    model = SleepModel(service_ms=5.0, per_row=True)
    assert model.service_s(4) == pytest.approx(0.020)
    assert _timed(lambda: model(torch.zeros(4, 3, 4, 4))) >= 0.020
    assert min(_timed(lambda: model(torch.zeros(1, 3, 4, 4))) for _ in range(3)) < 0.020


def test_wait_until_ends_at_its_deadline() -> None:
    lateness = []
    for _ in range(5):
        deadline = time.perf_counter_ns() + 5_000_000
        wait_until(deadline)
        lateness.append(time.perf_counter_ns() - deadline)
    assert all(late >= 0 for late in lateness)
    assert min(lateness) < 1_000_000, lateness  # a plain sleep overshoots; the spin lands on time


def test_exp_service_times_are_seeded_and_have_the_configured_mean() -> None:
    a, b, other = SleepModel(8.0, "exp", seed=3), SleepModel(8.0, "exp", seed=3), SleepModel(8.0, "exp", seed=4)
    draws = [a.service_s(1) for _ in range(20_000)]
    assert draws[:100] == [b.service_s(1) for _ in range(100)]  # same seed, same sequence
    assert draws[:100] != [other.service_s(1) for _ in range(100)]
    assert statistics.fmean(draws) == pytest.approx(0.008, rel=0.03)
    # Exponential, not just the right mean: P(T > mean) = 1/e, and the spread equals the mean.
    assert sum(d > 0.008 for d in draws) / len(draws) == pytest.approx(0.3679, abs=0.015)
    assert statistics.pstdev(draws) == pytest.approx(0.008, rel=0.05)


def test_exp_per_row_scales_each_draw() -> None:
    plain, per_row = SleepModel(2.0, "exp", seed=1), SleepModel(2.0, "exp", per_row=True, seed=1)
    assert [per_row.service_s(3) for _ in range(10)] == pytest.approx([3 * plain.service_s(1) for _ in range(10)])


def test_sleep_model_releases_the_gil_while_it_waits() -> None:
    # With a 10 s switch interval a thread keeps the GIL until it blocks. The worker
    # thread signals, then calls the model; this thread can only run again (and see the
    # call still in progress) if the model's wait released the GIL.
    previous = sys.getswitchinterval()
    model = SleepModel(service_ms=200.0)
    x = torch.zeros(1, 3, 4, 4)
    entering, done = threading.Event(), threading.Event()

    def call() -> None:
        entering.set()
        model(x)
        done.set()

    sys.setswitchinterval(10.0)
    try:
        worker = threading.Thread(target=call)
        worker.start()
        assert entering.wait(10)
        in_progress = not done.is_set()
    finally:
        sys.setswitchinterval(previous)
    worker.join(10)
    assert in_progress, "the model held the GIL for its whole service time"
    assert done.is_set()


# -- model names and the input a model takes --------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "noop", "sleep", "vit_b_16", "no_such_net", "pkg.sub.mod:make_net"])
def test_model_names_of_every_kind_pass_the_cheap_check(name: str) -> None:
    check_model_syntax(name)


@pytest.mark.parametrize("name", ["Res Net", "os.path", "pkg:", ":factory", "pkg.mod:make:more", "../x:y", ""])
def test_names_of_no_kind_are_refused_at_once(name: str) -> None:
    with pytest.raises(ValueError, match="package.module:factory"):
        check_model_syntax(name)


def test_check_model_knows_torchvision_names_and_wants_checkpoints_in_an_explicit_dir(tmp_path) -> None:
    check_model("mobilenet_v3_small")
    check_model("my_pkg.nets:make_net", tmp_path)  # the user's module is not imported before the model loads
    with pytest.raises(ModelError, match="unknown model 'resnet99'.*--list-models"):
        check_model("resnet99")
    with pytest.raises(ModelError, match="no checkpoint for resnet18 at .*resnet18-f37072fd.pth.*--allow-random-init"):
        check_model("resnet18", tmp_path)
    check_model("resnet18", tmp_path, allow_random_init=True)


LIMITS = Limits()
VIT = InputSpec(shape=(3, 224, 224), min_side=224)
USER = InputSpec(shape=(1, 20, 30), min_side=1, dtypes=("float16",), raw=True)


@pytest.mark.parametrize(
    ("spec", "shape", "dtype", "message"),
    [
        (InputSpec(), (2, 3, 64), torch.float32, "got rank 3"),
        (InputSpec(), (2, 4, 64, 64), torch.float32, "3 channels, got 4"),
        (InputSpec(), (1, 3, 16, 64), torch.float32, r"image size 16x64 outside \[32, 4096\]"),
        (InputSpec(), (1, 3, 64, 64), torch.int64, "not accepted"),
        (InputSpec(min_side=75), (1, 3, 64, 64), torch.float32, r"outside \[75,"),
        (VIT, (1, 3, 250, 250), torch.float32, r"must be \[B, 3, 224, 224\], got \[B, 3, 250, 250\]"),
        (USER, (2, 1, 20, 31), torch.float16, r"must be \[B, 1, 20, 30\]"),
        (USER, (2, 1, 20, 30), torch.float32, "float32 not accepted; use one of .'float16'."),
        (USER, (0, 1, 20, 30), torch.float16, "batch size 0"),
    ],
)
def test_inputs_the_model_cannot_take_are_bad_requests(spec: InputSpec, shape, dtype, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as caught:
        spec.check(torch.zeros(shape, dtype=dtype), LIMITS)
    assert caught.value.code == ErrorCode.BAD_REQUEST


def test_inputs_the_model_takes_pass() -> None:
    InputSpec().check(torch.zeros(2, 3, 32, 48, dtype=torch.uint8), LIMITS)
    VIT.check(torch.zeros(1, 3, 224, 224), LIMITS)
    USER.check(torch.zeros(5, 1, 20, 30, dtype=torch.float16), LIMITS)


def test_input_spec_round_trips_through_info_and_sets_free_sides() -> None:
    for spec in (InputSpec(), VIT, USER):
        info = json.loads(json.dumps(spec.to_info()))
        assert InputSpec.from_info(info) == dataclasses.replace(spec, raw=False)
    assert InputSpec.from_info({}) == InputSpec()  # a server that does not say takes images
    assert InputSpec().to_info()["input_shape"] == [3, None, None]
    assert InputSpec().sample_shape(64) == (3, 64, 64) and VIT.sample_shape(64) == (3, 224, 224)
    assert USER.warmup_dtype("float32") == "float16" and InputSpec().warmup_dtype("uint8") == "uint8"


# -- the user's own model -------------------------------------------------------------------------

FACTORY_SOURCE = '''
import torch
from torch import nn

def make_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(20 * 30, 7))

def not_a_module():
    return 42

def broken():
    raise RuntimeError("no weights here")

NOT_CALLABLE = 1
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch) -> str:
    package = tmp_path / "my_user_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_user_pkg.nets"
    for name in ("my_user_pkg", "my_user_pkg.nets"):
        sys.modules.pop(name, None)


def test_a_user_factory_is_built_seeded_with_its_declared_input(user_package: str) -> None:
    model, info = build_model(f"{user_package}:make_net", CPU, None, input_shape=(1, 20, 30), seed=3)
    again, _ = build_model(f"{user_package}:make_net", CPU, None, input_shape=(1, 20, 30), seed=3)
    assert info.source == f"user:{user_package}:make_net" and not model.training
    assert info.input == InputSpec(shape=(1, 20, 30), min_side=1, dtypes=("float32",), raw=True)
    x = torch.randn(4, 1, 20, 30)
    assert torch.equal(model(x), again(x)) and model(x).shape == (4, 7)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("not_a_module", "returned int, not a torch.nn.Module"),
        ("broken", "the factory raised RuntimeError: no weights here"),
        ("NOT_CALLABLE", "non-callable attribute 'NOT_CALLABLE'"),
        ("missing", "has no attribute 'missing'"),
    ],
)
def test_a_user_factory_that_fails_is_one_line(user_package: str, factory: str, message: str) -> None:
    with pytest.raises(ModelError, match=message) as caught:
        build_model(f"{user_package}:{factory}", CPU, None, input_shape=(1, 20, 30))
    assert "\n" not in str(caught.value)


def test_a_user_module_that_is_not_there_is_one_line() -> None:
    with pytest.raises(ModelError, match="cannot import no_such_user_pkg.nets.*PYTHONPATH"):
        build_model("no_such_user_pkg.nets:make", CPU, None, input_shape=(3,))
    with pytest.raises(ModelError, match="needs --input-shape"):
        build_model("no_such_user_pkg.nets:make", CPU, None)
