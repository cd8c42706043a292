"""The models in-process: names without torch, the stand-ins' logits, the sleep model's service time.

Times are measured with time.monotonic around calls. A call must never end
before its service time (the model waits for a deadline); the upper bounds are
generous multiples, loose enough for a busy machine, tight enough to catch a
wait that is doubled or serialised.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import threading
import time

import pytest
import torch

from server.model import MODEL_NAMES, SERVICE_DISTS, build_model
from server.runner import ModelRunner
from server.synthetic import SleepModel, wait_until
from tests.conftest import ROOT

CPU = torch.device("cpu")


def _timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def test_model_names_import_without_torch(monkeypatch) -> None:
    # A fresh copy of server/model.py with torch unimportable: the CLI validates --model this way.
    monkeypatch.setitem(sys.modules, "torch", None)
    spec = importlib.util.spec_from_file_location("model_without_torch", ROOT / "server" / "model.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.MODEL_NAMES == ("resnet18", "noop", "sleep") == MODEL_NAMES
    assert module.SERVICE_DISTS == ("fixed", "exp") == SERVICE_DISTS


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
