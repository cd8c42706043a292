"""A server's STATS carry its GPU's telemetry to a client on another host, into the report, CSV and JSON.

The server is a real infer-server process on the CPU, told by INFER_SERVER_GPU_TELEMETRY to
report GPU 0, with the stand-in pynvml (tests/common/stand_in_nvml) first on its PYTHONPATH:
its energy counter grows with time and with the server's CPU use, its clocks-event reasons
say SwPowerCap every other sample, and it does not support PCIe throughput. The
client asks only the server (`gpu_source="server"`, as for a server on another host).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import zmq

from client.config import ClientConfig
from client.results import SEED_COLUMNS, RunResult
from client.runner import run as run_client
from client.transport import Backend
from common.protocol import StatsReplyHeader
from server.status import TELEMETRY_ENV
from tests.support import start_server

pytestmark = pytest.mark.integration

STAND_IN_DIR = Path(__file__).parent / "stand_in_nvml"
SCENARIO = {
    "energy_model": {"idle_w": 60.0, "busy_w": 240.0},  # W always, and W per core-second of the server's CPU
    "reasons": [0, 0x4],  # SwPowerCap every other sample: any two samples in a row see it
    "cycle": ["reasons"],
    "not_supported": ["nvmlDeviceGetPcieThroughput"],
}


@pytest.fixture(scope="module")
def gpu_reporting_server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("gpu-stats")
    scenario = tmp / "scenario.json"
    scenario.write_text(json.dumps(SCENARIO))
    pythonpath = os.pathsep.join(filter(None, [str(STAND_IN_DIR), os.environ.get("PYTHONPATH")]))
    server = start_server("--device", "cpu", "--model", "noop", "--no-compile", tmp_path=tmp,
                          env={"PYTHONPATH": pythonpath, TELEMETRY_ENV: "0", "STAND_IN_NVML": str(scenario)})
    yield server
    server.kill()


def test_stats_carry_each_figure_and_info_the_environment(gpu_reporting_server) -> None:
    ctx = zmq.Context()
    backend = Backend(ctx, gpu_reporting_server.endpoint)
    try:
        info = backend.hello(10.0)
        stats = StatsReplyHeader.from_wire(backend.stats(timeout_s=10.0))
    finally:
        backend.close()
        ctx.term()
    assert stats.gpu_source == "nvml" and stats.gpu is not None
    assert {"t_ns", "util_pct", "mem_used_bytes", "mem_total_bytes", "power_w", "power_limit_w", "energy_mj",
            "sm_clock_mhz", "mem_clock_mhz", "clocks_event_reasons"} <= set(stats.gpu)
    assert "pcie_tx_kbs" not in stats.gpu and stats.gpu["unsupported"]["pcie_tx_kbs"].startswith(
        "NVMLError_NotSupported")
    env = info["gpu_environment"]
    assert env["name"] == "Stand-in H200" and env["driver"] == "570.00.00" and env["cuda_driver"] == "12.8"


def test_a_run_reports_energy_throttling_and_what_was_not_supported(gpu_reporting_server, tmp_path: Path) -> None:
    config = ClientConfig(servers=(gpu_reporting_server.endpoint,), batch_size=2, image_size=32, duration_s=2.0,
                          concurrency=4, warmup=1, gpu_source="server")
    result = run_client(config)
    gpu = result.gpu
    assert gpu["source"] == "server" and gpu["devices"][0]["samples"] >= 2  # ~20 on an idle machine
    # The counter's growth over the window, above the idle second before it (the server served: more CPU).
    assert gpu["power_basis"] == "energy counter" and gpu["idle_basis"] == "energy counter"
    assert 60.0 <= gpu["idle_power_w"] < gpu["energy_power_w"]
    assert gpu["throttled"] is True and gpu["throttle_reasons"] == ["SwPowerCap"] and gpu["throttled_windows"]

    row = result.summary()
    net = gpu["energy_power_w"] - gpu["idle_power_w"]
    assert row["samples_per_joule"] == pytest.approx(result.throughput / net)
    assert row["energy_per_request_j"] == pytest.approx(2 * row["energy_per_sample_j"])
    assert row["gpu_throttled"] is True and row["gpu_throttle_reasons"] == "SwPowerCap"
    assert row["gpu_pcie_tx_mean_mibs"] is None and "pcie_tx_kbs" in row["gpu_unsupported"]
    assert row["gpu_name"] == "Stand-in H200" and row["gpu_persistence_mode"] == "on"
    assert row["gpu_sm_clock_mean_mhz"] == 1980.0 and row["gpu_power_limit_w"] == 700.0
    # Existing columns first and unchanged, the telemetry's after them.
    columns = list(row)
    assert tuple(columns[:len(SEED_COLUMNS)]) == SEED_COLUMNS
    assert columns.index("gpu_energy_j") > columns.index("profile_trace")

    text = result.format_text()
    assert "GPU power: " in text and "samples/J" in text
    assert "GPU THROTTLED (SwPowerCap)" in text
    assert "GPU figures not reported: " in text and "pcie_rx_kbs (NVMLError_NotSupported" in text
    assert "GPU environment: Stand-in H200 GPU-00000000-stand-in, driver 570.00.00 (CUDA 12.8)" in text

    result.write(tmp_path / "out.csv", tmp_path / "out.json")
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["gpu"]["throttled_windows"] == gpu["throttled_windows"]
    assert written["summary"]["samples_per_joule"] == pytest.approx(row["samples_per_joule"], rel=1e-4)
    assert RunResult.read_json(tmp_path / "out.json").summary()["gpu_throttled"] is True
    with open(tmp_path / "out.csv") as f:
        csv_row = next(csv.DictReader(f))
    assert csv_row["gpu_throttled"] == "True" and csv_row["gpu_pcie_tx_mean_mibs"] == ""
    assert float(csv_row["samples_per_joule"]) == pytest.approx(row["samples_per_joule"], rel=1e-4)
