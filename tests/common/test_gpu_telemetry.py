"""GPU telemetry without a GPU: common/gpu.py, gpu_window.py and gpu_env.py read a stand-in `pynvml`.

The stand-in (tests/common/stand_in_nvml/pynvml.py) answers NVML's calls with the figures
each test sets, in NVML's units, and raises pynvml's error classes where told: so each
figure, a throttled window, an unsupported call and the energy counter's wrap and reset are
checked through the same code a GPU run goes through.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from common import gpu_env, gpu_window
from common.gpu import BackgroundSampler, GpuSampler

STAND_IN = Path(__file__).parent / "stand_in_nvml" / "pynvml.py"


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh stand-in pynvml in sys.modules for this test only."""
    monkeypatch.delenv("STAND_IN_NVML", raising=False)
    spec = importlib.util.spec_from_file_location("pynvml", STAND_IN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def at(seconds: float, **figures: Any) -> dict[str, Any]:
    """A sample taken `seconds` into a window."""
    return {"t_ns": int(seconds * 1e9), "util_pct": 50.0, "mem_used_bytes": 1e9, **figures}


def test_each_figure_is_read_in_nvml_units_and_converted(nvml: ModuleType) -> None:
    nvml.CONFIG.update(power_mw=412_500, power_limit_mw=700_000, energy_mj=123_456, sm_mhz=1755, mem_mhz=2619,
                       reasons=0x4, pcie_tx_kbs=2048, pcie_rx_kbs=4096, util=87, mem_used=3 * 2**30)
    sampler = GpuSampler(uuid="GPU-00000000-stand-in")
    assert sampler.source == "nvml" and sampler.name == "Stand-in H200"
    s = sampler.sample()
    assert s is not None
    assert {k: v for k, v in s.items() if k != "t_ns"} == {
        "util_pct": 87.0, "mem_used_bytes": 3 * 2**30, "mem_total_bytes": 141 * 2**30, "power_w": 412.5,
        "power_limit_w": 700.0, "energy_mj": 123_456.0, "sm_clock_mhz": 1755.0, "mem_clock_mhz": 2619.0,
        "clocks_event_reasons": 0x4, "pcie_tx_kbs": 2048.0, "pcie_rx_kbs": 4096.0}
    assert isinstance(s["t_ns"], int)


def test_an_unsupported_call_is_left_out_with_its_reason_and_not_asked_again(nvml: ModuleType) -> None:
    nvml.CONFIG["not_supported"] = ["nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPcieThroughput"]
    nvml.CONFIG["power_mw"] = [200_000, 300_000, 400_000]
    sampler = GpuSampler()
    samples = [sampler.sample() for _ in range(3)]
    for s in samples:
        assert s is not None and "energy_mj" not in s and "pcie_tx_kbs" not in s and "pcie_rx_kbs" not in s
        assert s["unsupported"]["energy_mj"].startswith("NVMLError_NotSupported")
    assert nvml.CALLS["nvmlDeviceGetTotalEnergyConsumption"] == 1
    figures = gpu_window.summarise(samples)
    # No counter: no energy, and the mean power comes from the power samples, saying so; never a 0.
    assert figures["energy_j"] is None and figures["pcie_tx_mean_mibs"] is None
    assert figures["energy_power_w"] == pytest.approx(300.0) and figures["power_basis"] == "power samples"
    assert set(figures["unsupported"]) == {"energy_mj", "pcie_tx_kbs", "pcie_rx_kbs"}


def test_a_transient_error_costs_one_sample_its_figure_not_the_run(nvml: ModuleType) -> None:
    nvml.CONFIG["timeouts"] = ["nvmlDeviceGetPowerUsage"]
    sampler = GpuSampler()
    first, second = sampler.sample(), sampler.sample()
    assert first is not None and second is not None
    assert "power_w" not in first and second["power_w"] == 300.0
    assert sampler.errors == {"power_w": 1} and "power_w" not in sampler.unsupported


def test_energy_power_and_efficiency_over_a_window_above_the_idle_baseline() -> None:
    # 300 W for 2 s (counter +600 J) while idle was 100 W; 1000 samples/s served in requests of 8.
    window = [at(0.0, energy_mj=1_000_000, power_w=290.0), at(1.0, energy_mj=1_300_000, power_w=310.0),
              at(2.0, energy_mj=1_600_000, power_w=300.0)]
    idle = [at(-1.2, energy_mj=880_000), at(-0.2, energy_mj=980_000)]
    figures = gpu_window.summarise(window, idle)
    assert figures["energy_j"] == pytest.approx(600.0) and figures["energy_span_s"] == pytest.approx(2.0)
    assert figures["energy_power_w"] == pytest.approx(300.0) and figures["power_basis"] == "energy counter"
    assert figures["idle_power_w"] == pytest.approx(100.0) and figures["idle_basis"] == "energy counter"
    assert figures["power_max_w"] == 310.0
    eff = gpu_window.efficiency(figures, throughput=1000.0, batch=8)
    assert eff["samples_per_joule"] == pytest.approx(5.0)  # 1000 samples/s / 200 W above idle
    assert eff["energy_per_sample_j"] == pytest.approx(0.2) and eff["energy_per_request_j"] == pytest.approx(1.6)
    assert eff["samples_per_joule_gross"] == pytest.approx(1000.0 / 300.0)
    # Without a baseline, only the gross figure: nothing above idle is invented.
    assert gpu_window.efficiency({**figures, "idle_power_w": None}, 1000.0, 8)["samples_per_joule"] is None


def test_the_energy_counter_unwraps_and_drops_the_interval_of_a_reset() -> None:
    wrap = 2**64
    wrapped = [at(0.0, energy_mj=wrap - 500), at(1.0, energy_mj=1_500)]
    assert gpu_window.energy_span(wrapped) == (pytest.approx(2.0), pytest.approx(1.0), 0)
    # 1000 -> 5000 mJ, then a driver reload (the counter restarts), then 200 -> 1200 mJ.
    reset = [at(0.0, energy_mj=1_000), at(1.0, energy_mj=5_000), at(2.0, energy_mj=200), at(3.0, energy_mj=1_200)]
    joules, seconds, resets = gpu_window.energy_span(reset)
    assert (joules, seconds, resets) == (pytest.approx(5.0), pytest.approx(2.0), 1)
    figures = gpu_window.summarise(reset)
    assert figures["energy_counter_resets"] == 1 and figures["energy_power_w"] == pytest.approx(2.5)


def test_every_throttled_window_is_flagged_with_its_reasons() -> None:
    masks = [0x0, 0x4, 0x4, 0x1, 0x40 | 0x8, 0x2]  # GpuIdle and ApplicationsClocksSetting are not throttling
    samples = [at(0.1 * i, clocks_event_reasons=m) for i, m in enumerate(masks)]
    figures = gpu_window.summarise(samples)
    assert figures["throttled"] is True and figures["throttled_samples"] == 3
    assert figures["throttle_reasons"] == ["HwSlowdown", "HwThermalSlowdown", "SwPowerCap"]
    assert figures["throttled_windows"] == [
        {"start_s": 0.1, "end_s": 0.2, "reasons": ["SwPowerCap"]},
        {"start_s": 0.4, "end_s": 0.4, "reasons": ["HwSlowdown", "HwThermalSlowdown"]},
    ]
    calm = gpu_window.summarise([at(0.0, clocks_event_reasons=0x1), at(0.1, clocks_event_reasons=0)])
    assert calm["throttled"] is False and calm["throttled_windows"] == []
    assert gpu_window.summarise([at(0.0)])["throttled"] is None  # the GPU did not say: unknown, not "no"


def test_clocks_pcie_and_memory_over_the_window() -> None:
    samples = [at(0.0, sm_clock_mhz=1980.0, mem_clock_mhz=2619.0, pcie_tx_kbs=1024.0, pcie_rx_kbs=2048.0,
                  mem_used_bytes=1e9, mem_total_bytes=8e9),
               at(0.1, sm_clock_mhz=1500.0, mem_clock_mhz=2619.0, pcie_tx_kbs=3072.0, pcie_rx_kbs=6144.0,
                  mem_used_bytes=3e9, mem_total_bytes=8e9)]
    f = gpu_window.summarise(samples)
    assert (f["sm_clock_mean_mhz"], f["sm_clock_min_mhz"], f["mem_clock_mean_mhz"]) == (1740.0, 1500.0, 2619.0)
    assert (f["pcie_tx_mean_mibs"], f["pcie_rx_mean_mibs"], f["pcie_rx_max_mibs"]) == (2.0, 4.0, 6.0)
    assert (f["mem_used_mean_bytes"], f["mem_peak_bytes"], f["mem_total_bytes"]) == (2e9, 3e9, 8e9)


def test_several_gpus_add_their_power_and_any_throttled_one_flags_the_run() -> None:
    a = {"endpoint": "tcp://a", "energy_power_w": 300.0, "idle_power_w": 100.0, "energy_j": 600.0,
         "throttled": False, "throttled_windows": []}
    b = {"endpoint": "tcp://b", "energy_power_w": 200.0, "idle_power_w": 80.0, "energy_j": 400.0, "throttled": True,
         "throttle_reasons": ["SwPowerCap"], "throttled_windows": [{"start_s": 1.0, "end_s": 1.2,
                                                                     "reasons": ["SwPowerCap"]}]}
    merged = gpu_window.merge_devices([a, b])
    assert (merged["energy_power_w"], merged["idle_power_w"], merged["energy_j"]) == (500.0, 180.0, 1000.0)
    assert merged["throttled"] is True and merged["throttled_windows"][0]["endpoint"] == "tcp://b"


def test_the_background_sampler_answers_at_once_and_samples_in_its_own_thread(nvml: ModuleType) -> None:
    nvml.CONFIG["power_mw"] = [100_000, 200_000, 300_000]
    background = BackgroundSampler(GpuSampler(), interval_s=0.01, idle_s=60.0)
    try:
        first = background.latest()  # no thread yet: this call sampled once itself
        assert first is not None and first["power_w"] == 100.0
        thread = background._thread
        assert thread is not None and thread.is_alive() and thread.name == "gpu-sampler"
        assert background.latest() is not None  # from whatever the thread has by now, without a wait
    finally:
        background.close()
    thread.join(30.0)
    assert not thread.is_alive()


def test_the_environment_of_a_gpu_run(nvml: ModuleType, tmp_path: Path) -> None:
    nvml.CONFIG.update(mig=[0, 1], not_supported=["nvmlDeviceGetApplicationsClock"])
    env = gpu_env.environment()
    assert {k: env[k] for k in ("driver", "cuda_driver", "name", "uuid", "power_limit_w", "persistence_mode",
                                "mig_mode", "ecc", "max_clock_sm_mhz", "pcie_link")} == {
        "driver": "570.00.00", "cuda_driver": "12.8", "name": "Stand-in H200", "uuid": "GPU-00000000-stand-in",
        "power_limit_w": 700.0, "persistence_mode": True, "mig_mode": {"current": False, "pending": True},
        "ecc": {"current": True, "pending": True}, "max_clock_sm_mhz": 1980, "pcie_link": "gen 5 x16"}
    assert set(env["unsupported"]) == {"app_clock_sm_mhz", "app_clock_mem_mhz"} and "app_clock_sm_mhz" not in env
    columns = gpu_env.summary(env)
    assert columns["gpu_mig_mode"] == "off (pending on)" and columns["gpu_ecc"] == "on"
    assert columns["gpu_app_clocks_mhz"] is None and columns["gpu_power_limit_w"] == 700.0
    # The CPU governor, where /sys says it.
    for cpu, governor in (("cpu0", "performance"), ("cpu1", "powersave")):
        (tmp_path / cpu / "cpufreq").mkdir(parents=True)
        (tmp_path / cpu / "cpufreq" / "scaling_governor").write_text(governor + "\n")
    assert gpu_env.cpu_governor(tmp_path) == "performance,powersave"
    assert gpu_env.cpu_governor(tmp_path / "absent") is None


def test_without_nvml_the_environment_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as where nvidia-ml-py is not installed
    env = gpu_env.environment()
    assert env["error"].startswith("NVML: ") and "cpu_governor" in env


def test_docs_metrics_defines_every_gpu_column() -> None:
    from types import SimpleNamespace

    from client.gpu_report import gpu_columns
    from tests.support import ROOT

    doc = (ROOT / "docs" / "metrics.md").read_text()
    columns = gpu_columns(SimpleNamespace(gpu={}, throughput=0.0, batch_size=1, servers=[]))
    assert [c for c in columns if f"`{c}`" not in doc] == []
