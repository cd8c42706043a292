"""The Prometheus metrics: what a STATS reply becomes, the histograms, who may read them, and their docs.

Unit tests: no process. The text is rendered by prometheus_client and read back by its parser,
as Prometheus would read it; tests/server/test_metrics_prometheus.py scrapes real servers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from common.protocol import Backpressure, ErrorCode, ServerCounters, ServerTimes, StatsReplyHeader
from server import prometheus_metrics as pm
from server.config import ServerConfig
from server.histograms import BUCKETS_S, STAGES, StageHistograms, merge
from tests.support import ROOT

DASHBOARD = ROOT / "examples" / "grafana" / "infer-server.json"
MS = 1_000_000


class _Families(Collector):
    def __init__(self, families: list) -> None:
        self._families = families

    def collect(self) -> list:
        return self._families


def scrape(*families: object) -> dict[str, object]:
    """The families as Prometheus reads them: rendered to the text format, then parsed back, by name."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families)))
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family: object) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def a_stats_reply() -> StatsReplyHeader:
    counters = ServerCounters(received=120, infer_received=100, answered=90, errors_sent=12, infer_errors=10,
                              replies_other=5, replies_dropped=3, replies_dropped_gone=1, replies_dropped_bytes=2,
                              send_blocked_ns=1_500_000_000, peers_connected=4, peers_disconnected=1)
    counters.errors[ErrorCode.OVERLOADED] = 8
    counters.errors[ErrorCode.BAD_REQUEST] = 4
    return StatsReplyHeader(
        counters=counters, inflight=7, inflight_peak=9, inflight_bytes=7 * 602112, workers_busy=2,
        cpu_user_s=3.5, cpu_system_s=0.25, rss_bytes=900 << 20, uptime_s=42.0,
        gpu={"util_pct": 87.0, "mem_used_bytes": 3 << 30, "power_w": 250.5, "sm_clock_mhz": 1980.0,
             "mem_total_bytes": 80 << 30, "power_limit_w": 700.0, "energy_mj": 123456.0, "mem_clock_mhz": 2619.0,
             "clocks_event_reasons": 4, "pcie_tx_kbs": 1000.0, "pcie_rx_kbs": 2000.0, "t_ns": 123,
             "name": "H100", "throttled": False, "nvlink": {"rx_bytes": 12}},
        gpu_source="nvml", shm={"regions": 2, "peers": 1, "mapped_bytes": 1 << 26, "pinned_regions": 0},
        backpressure=Backpressure(connections=3, blocked_peers=1, queued_reply_bytes=5 << 20,
                                  queued_reply_peers=1).to_wire(),
    )


def test_a_stats_reply_becomes_counters_and_gauges_in_base_units() -> None:
    got = scrape(*pm.stats_families(a_stats_reply()))
    assert got["infer_server_infer_requests_answered"].type == "counter"
    assert samples(got["infer_server_infer_requests_answered"]) == {
        ("infer_server_infer_requests_answered_total", ()): 90.0}
    assert samples(got["infer_server_infer_requests_failed"])[("infer_server_infer_requests_failed_total", ())] == 10
    errors = samples(got["infer_server_errors_sent"])
    assert errors[("infer_server_errors_sent_total", (("code", "overloaded"),))] == 8
    assert errors[("infer_server_errors_sent_total", (("code", "bad_request"),))] == 4
    assert len(errors) == len(ErrorCode)  # every code, 0 until it happens, as in STATS
    dropped = samples(got["infer_server_replies_dropped"])
    assert dropped == {("infer_server_replies_dropped_total", (("cause", c),)): n
                       for c, n in (("gone", 1), ("hwm", 0), ("bytes", 2))}
    assert samples(got["infer_server_send_blocked_seconds"])[("infer_server_send_blocked_seconds_total", ())] == 1.5
    gauges = {name: got[name] for name in ("infer_server_inflight_requests", "infer_server_inflight_bytes",
                                           "infer_server_workers_busy", "infer_server_queued_reply_bytes",
                                           "infer_server_resident_memory_bytes", "infer_server_connections_open")}
    assert {name: f.type for name, f in gauges.items()} == dict.fromkeys(gauges, "gauge")
    assert [f.samples[0].value for f in gauges.values()] == [7, 7 * 602112, 2, 5 << 20, 900 << 20, 3]
    assert got["infer_server_shm_mapped_bytes"].samples[0].value == 1 << 26
    assert got["infer_server_stats_available"].samples[0].value == 1


def test_gpu_figures_are_taken_generically_in_base_units() -> None:
    got = scrape(*pm.stats_families(a_stats_reply()))
    assert got["infer_server_gpu_util_ratio"].samples[0].value == pytest.approx(0.87)
    assert got["infer_server_gpu_mem_used_bytes"].samples[0].value == 3 << 30
    assert got["infer_server_gpu_power_watts"].samples[0].value == 250.5
    assert got["infer_server_gpu_sm_clock_hertz"].samples[0].value == 1.98e9
    assert got["infer_server_gpu_energy_joules"].samples[0].value == pytest.approx(123.456)
    assert "infer_server_gpu_t_seconds" not in got  # a sample's timestamp is not a figure
    assert got["infer_server_gpu_nvlink_rx_bytes"].samples[0].value == 12  # a figure added later, nested
    assert not {"infer_server_gpu_name", "infer_server_gpu_throttled"} & set(got)  # text and flags are not figures


def test_a_server_without_gpu_or_shared_memory_serves_neither() -> None:
    stats = a_stats_reply()
    stats.gpu, stats.shm = None, None
    names = set(scrape(*pm.stats_families(stats)))
    assert not any(n.startswith("infer_server_gpu_") for n in names)
    assert not {"infer_server_shm_regions", "infer_server_shm_mapped_bytes"} & names
    assert "infer_server_infer_requests_answered" in names


def test_a_scrape_the_loop_did_not_answer_says_so() -> None:
    got = scrape(pm.unavailable_family(), pm.workers_family(2))
    assert got["infer_server_stats_available"].samples[0].value == 0
    assert "infer_server_infer_requests_answered" not in got  # absent, not a made-up 0: Prometheus marks it stale


def times(queue_ms: float, compute_ms: float, other_ms: float = 0.0) -> ServerTimes:
    return ServerTimes(queue_ns=int(queue_ms * MS), compute_ns=int(compute_ms * MS), encode_ns=int(other_ms * MS))


def test_histograms_put_each_request_in_its_bucket_and_add_up_threads() -> None:
    first, second = StageHistograms(), StageHistograms()
    first.observe(times(0.05, 1.0))  # 1 ms exactly: in le="0.001" (bounds are inclusive)
    first.observe(times(3.0, 20.0, 0.5))
    second.observe(times(30_000.0, 2.0))  # beyond the last bound: +Inf only
    got = scrape(*pm.histogram_families(merge([first, second])))
    assert set(got) == {"infer_server_request_queue_seconds", "infer_server_request_compute_seconds",
                        "infer_server_request_server_seconds"}
    compute = samples(got["infer_server_request_compute_seconds"])
    bucket = "infer_server_request_compute_seconds_bucket"
    assert compute[(bucket, (("le", "0.0005"),))] == 0
    assert compute[(bucket, (("le", "0.001"),))] == 1
    assert compute[(bucket, (("le", "0.0025"),))] == 2
    assert compute[(bucket, (("le", "0.025"),))] == 3
    assert compute[(bucket, (("le", "+Inf"),))] == 3
    assert compute[("infer_server_request_compute_seconds_count", ())] == 3
    assert compute[("infer_server_request_compute_seconds_sum", ())] == pytest.approx(0.023)
    queue = samples(got["infer_server_request_queue_seconds"])
    assert queue[("infer_server_request_queue_seconds_bucket", (("le", "10.0"),))] == 2
    assert queue[("infer_server_request_queue_seconds_bucket", (("le", "+Inf"),))] == 3
    total = samples(got["infer_server_request_server_seconds"])
    assert total[("infer_server_request_server_seconds_sum", ())] == pytest.approx(0.00105 + 0.0235 + 30.002)
    assert len([k for k in total if k[0].endswith("_bucket")]) == len(BUCKETS_S) + 1 and len(STAGES) == 3


def test_the_info_metric_labels_say_what_runs() -> None:
    info = {"model": "resnet50", "device": "cuda:0", "device_name": "NVIDIA H100", "precision": "bf16",
            "compile": True, "compile_mode": "max-autotune", "num_workers": 1, "max_batch_size": 32,
            "server_version": "0.1.0", "instance": "ab12"}
    (sample,) = scrape(pm.info_family(pm.info_labels(info)))["infer_server_info"].samples
    assert sample.name == "infer_server_info" and sample.value == 1
    assert sample.labels == {"model": "resnet50", "device": "cuda:0", "device_name": "NVIDIA H100",
                             "precision": "bf16", "compile_mode": "max-autotune", "num_workers": "1",
                             "max_batch_size": "32", "version": "0.1.0", "server_instance": "ab12"}
    assert pm.info_labels({**info, "compile": False})["compile_mode"] == "none"


def test_every_metric_served_is_in_the_list_of_exported_names() -> None:
    timings = StageHistograms()
    timings.observe(times(1, 1))
    got = scrape(*pm.stats_families(a_stats_reply()), pm.workers_family(2),
                 *pm.histogram_families(merge([timings])), pm.info_family(pm.info_labels({})))
    served = {s.name for f in got.values() for s in f.samples}
    served -= {"infer_server_gpu_nvlink_rx_bytes"}  # this test's made-up GPU figure
    assert served == pm.exported_names()


def test_docs_give_every_metric_its_type_and_unit() -> None:
    docs = (ROOT / "docs" / "server.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(infer_server_\w+)` \| (\w+) \|", docs, re.M)}
    documented = set(rows)
    for spec in pm.STATS_METRICS:
        name = pm.PREFIX + spec.name + ("_total" if spec.kind == "counter" else "")
        assert rows.get(name) == spec.kind, f"docs/server.md: no row `{name}` | {spec.kind} |"
    histograms = {pm.PREFIX + name for name, _help in pm.HISTOGRAMS.values()}
    assert all(rows.get(name) == "histogram" for name in histograms), histograms - documented
    shm = {pm.PREFIX + name for _key, name, _unit, _help in pm.SHM_METRICS}
    gpu = {pm.gpu_metric_name(key)[0] for key in pm.GPU_SAMPLER_KEYS}
    others = {"infer_server_info", "infer_server_workers", "infer_server_stats_available"}
    assert shm | gpu | others <= documented, (shm | gpu | others) - documented
    assert ", ".join(repr(b) for b in BUCKETS_S) in " ".join(docs.split())  # the buckets are stated


# -- who may read them ----------------------------------------------------------------


@pytest.mark.parametrize("changes", [
    {"metrics_port": 9100},
    {"metrics_port": 0, "metrics_host": "::1"},
    {"metrics_port": 9100, "metrics_host": "0.0.0.0", "bind": ("tcp://0.0.0.0:5555",)},  # STATS answers anyone
    {"metrics_port": 9100, "metrics_host": "0.0.0.0", "metrics_tls_dir": Path("tls")},
    {"metrics_port": 9100, "curve_dir": Path("keys"), "metrics_tls_dir": Path("tls")},
])
def test_plain_metrics_reach_only_whom_stats_answers(changes: dict) -> None:
    config = ServerConfig(**changes)
    assert ServerConfig.from_settings(config, {}) == config
    assert "--metrics-port" in config.to_argv()


@pytest.mark.parametrize(("changes", "named"), [
    ({"metrics_port": 9100, "metrics_host": "0.0.0.0"}, "--metrics-host"),  # this server's STATS is loopback only
    ({"metrics_port": 9100, "metrics_host": "10.1.2.3", "bind": ("ipc:///tmp/x",)}, "--metrics-host"),
    ({"metrics_port": 9100, "curve_dir": Path("keys")}, "--metrics-tls-dir"),  # STATS needs a CURVE key
    ({"metrics_port": 9100, "curve_dir": Path("keys"), "bind": ("tcp://0.0.0.0:5555",),
      "metrics_host": "0.0.0.0"}, "--metrics-tls-dir"),
    ({"metrics_host": "0.0.0.0"}, "--metrics-port"),
    ({"metrics_tls_dir": Path("tls")}, "--metrics-port"),
    ({"metrics_port": 70000}, "--metrics-port"),
    ({"metrics_port": 9100, "metrics_host": "127.0.0.1/8"}, "--metrics-host"),
])
def test_metrics_that_would_reach_further_than_stats_are_refused(changes: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ServerConfig(**changes)


def test_metrics_are_off_by_default_and_on_loopback() -> None:
    config = ServerConfig()
    assert config.metrics_port is None and config.metrics_host == "127.0.0.1"
    assert not any(a.startswith("--metrics") for a in config.to_argv())


# -- the Grafana dashboard ------------------------------------------------------------


def dashboard_exprs(panels: list[dict]) -> list[str]:
    exprs = []
    for panel in panels:
        exprs += [t["expr"] for t in panel.get("targets", [])]
        exprs += dashboard_exprs(panel.get("panels", []))  # rows
    return exprs


def test_the_grafana_dashboard_is_importable_and_asks_only_for_exported_metrics() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 36 and board["title"] and board["uid"]
    variables = board["templating"]["list"]
    source = next(v for v in variables if v["type"] == "datasource")
    assert source["query"] == "prometheus"
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24 and panel["type"]
        covered = {(x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])}
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${" + source["name"] + "}", panel["title"]
    exprs = dashboard_exprs(panels)
    assert len(exprs) >= 10
    exported = pm.exported_names()
    for expr in exprs:
        named = set(re.findall(r"\binfer_server_\w+", expr))
        assert named, f"{expr!r} names no infer-server metric"
        assert named <= exported, f"{expr!r}: {named - exported} is not served"
    for variable in variables:
        if variable["type"] == "query":
            assert set(re.findall(r"\binfer_server_\w+", json.dumps(variable["query"]))) <= exported
