"""infer-server --metrics-port with the real parts: HTTP scrapes, a real Prometheus server, TLS from openssl.

Every wait has a deadline and polls a condition (a ready endpoint, a scrape newer than
the client's run); none sleeps to synchronise.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.test_metrics_endpoint import DASHBOARD, dashboard_exprs
from tests.support import run_cli, sleep_model

pytestmark = pytest.mark.integration

SERVICE_MS = 2.0
DEADLINE_S = 60.0


def metrics_url(server_factory, tmp_path: Path, *args: str) -> tuple[object, str]:
    """A sleep-model server with the endpoint on any free port; (server, its metrics URL from the ready file)."""
    ready = tmp_path / f"ready-{time.monotonic_ns()}.json"
    server = server_factory(*sleep_model(SERVICE_MS), "--metrics-port", "0", "--ready-file", str(ready), *args)
    return server, json.loads(ready.read_text())["metrics"]


def get(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=30, context=context) as reply:
        return reply.read().decode()


def scrape(url: str, context: ssl.SSLContext | None = None) -> dict[str, float]:
    """Every sample of one scrape, by name and labels ('name{k="v"}'), parsed by prometheus_client."""
    out = {}
    for family in text_string_to_metric_families(get(url, context)):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def run_client(endpoint: str, requests: int) -> int:
    """A short infer-client run; the requests it says were answered."""
    proc = run_cli("client", "--server", endpoint, "--batch-size", "1", "--image-size", "32", "--num-iters",
                   str(requests), "--warmup", "0", "--concurrency", "2", "--output-file", "", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])["requests_ok"]


@pytest.mark.parametrize("workers", [1, 0])  # 0: the I/O thread runs the model, and keeps the histograms
def test_a_scrape_is_one_consistent_stats_snapshot(server_factory, tmp_path: Path, workers: int) -> None:
    server, url = metrics_url(server_factory, tmp_path, "--num-workers", str(workers))
    before = scrape(url)
    assert before["infer_server_stats_available"] == 1 and before["infer_server_workers"] == workers
    info = next(k for k in before if k.startswith("infer_server_info{"))
    assert 'model="sleep"' in info and 'device="cpu"' in info and 'compile_mode="none"' in info
    ok = run_client(server.endpoint, 120)
    after = scrape(url)
    assert ok == 120
    assert after["infer_server_infer_requests_answered_total"] == ok
    assert after["infer_server_infer_requests_received_total"] == ok
    assert after["infer_server_request_server_seconds_count"] == ok  # one observation per answered request
    assert after["infer_server_request_compute_seconds_sum"] >= ok * SERVICE_MS / 1000 * 0.95
    assert after["infer_server_inflight_requests"] == 0 and after["infer_server_workers_busy"] == 0
    # A scrape is one STATS through the I/O loop, counted like any other, never a connection.
    assert after["infer_server_replies_other_total"] - before["infer_server_replies_other_total"] >= 1
    assert after["infer_server_connections_open"] == 0
    assert server.terminate() == 0


def test_the_port_is_checked_before_the_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("server", "--device", "cpu", "--model", "noop", "--no-compile", "--bind",
                       "tcp://127.0.0.1:*", "--metrics-port", str(port), timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"Error: --metrics-port: cannot bind 127.0.0.1:{port}")


def test_a_curve_server_will_not_serve_plain_metrics(tmp_path: Path) -> None:
    proc = run_cli("server", "--curve-dir", str(tmp_path), "--metrics-port", "9100", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--metrics-tls-dir" in proc.stderr.strip().splitlines()[-1]


# -- HTTPS with client certificates ------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    """server.crt (self-signed, for 127.0.0.1), client_ca.crt, and a scraper's client.crt signed by that CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: it makes this test's certificates")
    d = tmp_path / "tls"
    d.mkdir()
    new = ("req", "-newkey", "rsa:2048", "-nodes", "-days", "1")
    openssl(*new, "-x509", "-keyout", "server.key", "-out", "server.crt", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", cwd=d)
    openssl(*new, "-x509", "-keyout", "ca.key", "-out", "client_ca.crt", "-subj", "/CN=scrapers", cwd=d)
    openssl(*new, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=prometheus", cwd=d)
    openssl("x509", "-req", "-in", "client.csr", "-CA", "client_ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-out", "client.crt", cwd=d)
    return d


def test_tls_metrics_answer_only_a_client_with_a_certificate(server_factory, tmp_path: Path, tls_dir: Path) -> None:
    server, url = metrics_url(server_factory, tmp_path, "--metrics-host", "0.0.0.0", "--metrics-tls-dir",
                              str(tls_dir))
    assert url.startswith("https://0.0.0.0:")
    url = url.replace("0.0.0.0", "127.0.0.1")
    trusted = ssl.create_default_context(cafile=str(tls_dir / "server.crt"))
    anonymous = ssl.create_default_context(cafile=str(tls_dir / "server.crt"))
    trusted.load_cert_chain(tls_dir / "client.crt", tls_dir / "client.key")
    port = urllib.parse.urlsplit(url).port
    with socket.create_connection(("127.0.0.1", port), timeout=30):  # connects, never says hello
        assert scrape(url, trusted)["infer_server_stats_available"] == 1  # the handshake is not on the accept loop
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        get(url, anonymous)
    with pytest.raises((urllib.error.URLError, ConnectionError, http_errors())):
        get(url.replace("https://", "http://"))
    assert scrape(url, trusted)["infer_server_stats_available"] == 1  # refusals did not stop the endpoint
    assert server.terminate() == 0


def http_errors() -> type[Exception]:
    import http.client

    return http.client.HTTPException


# -- a real Prometheus --------------------------------------------------------------------


@dataclass
class Prometheus:
    proc: subprocess.Popen
    api: str

    def query(self, promql: str) -> list[dict]:
        url = f"{self.api}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        reply = json.loads(get(url))
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def wait_for(self, promql: str, what: str) -> list[dict]:
        """The query's result once it is not empty (polled; fails at the deadline)."""
        deadline = time.monotonic() + DEADLINE_S
        while not (result := self.query(promql)):
            assert time.monotonic() < deadline, f"Prometheus: no {what} within {DEADLINE_S:g} s ({promql})"
            assert not exited(self.proc, 0.2), "Prometheus exited"
        return result


def exited(proc: subprocess.Popen, wait_s: float) -> bool:
    """Whether `proc` exits within `wait_s`: the pause between two polls, which also notices an exit."""
    try:
        proc.wait(wait_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prometheus(tmp_path: Path, target: str) -> Prometheus:
    """Prometheus scraping `target` (host:port) every second, once its /-/ready answers."""
    binary = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if binary is None:
        pytest.skip("prometheus is not installed (Debian's prometheus package: .ci/run installs it when run as root)")
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                      f"  - job_name: infer\n    static_configs:\n      - targets: ['{target}']\n")
    for _attempt in range(3):  # another process may take the free port before Prometheus binds it
        api = f"http://127.0.0.1:{free_port()}"
        log = open(tmp_path / "prometheus.log", "ab")  # noqa: SIM115 (Prometheus writes it until stopped)
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address={api[len('http://'):]}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=log, cwd=tmp_path)
        log.close()
        if wait_ready(proc, f"{api}/-/ready"):
            return Prometheus(proc, api)
    pytest.fail(f"Prometheus did not start: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")


def wait_ready(proc: subprocess.Popen, url: str) -> bool:
    """True once `url` answers 200; False if the process exits first; fails at the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError):
            pass
        if exited(proc, 0.2):
            return False
    proc.kill()
    pytest.fail(f"Prometheus's {url} did not answer within {DEADLINE_S:g} s")


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator:
    started: list[Prometheus] = []

    def factory(target: str) -> Prometheus:
        p = start_prometheus(tmp_path, target)
        started.append(p)
        return p

    yield factory
    for p in started:
        p.proc.terminate()
        try:
            p.proc.wait(30)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(30)


def test_prometheus_counts_the_requests_of_a_client_run(server_factory, prometheus_factory, tmp_path: Path) -> None:
    server, url = metrics_url(server_factory, tmp_path)
    prometheus = prometheus_factory(urllib.parse.urlsplit(url).netloc)
    prometheus.wait_for('up{job="infer"} == 1', "a first successful scrape")
    ok = run_client(server.endpoint, 400)
    finished = time.time()
    answered = "infer_server_infer_requests_answered_total"
    # A sample scraped after the client finished holds every request it sent.
    (sample,) = prometheus.wait_for(f"{answered} and timestamp({answered}) > {finished}", "a scrape after the run")
    counted = float(sample["value"][1])
    print(f"PromQL {answered}: {counted:g}; infer-client: {ok} requests answered")
    assert abs(counted - ok) <= 0.10 * ok
    server_s = "infer_server_request_server_seconds"
    (mean,) = prometheus.query(f"{server_s}_sum / {server_s}_count")
    assert float(mean["value"][1]) >= SERVICE_MS / 1000 * 0.95  # a sleep model's request takes its service time
    (p50,) = prometheus.query(f"histogram_quantile(0.5, {server_s}_bucket)")
    assert 0.001 < float(p50["value"][1]) <= 1.0  # interpolated in the bucket holding the service time, or above
    for expr in dashboard_exprs(json.loads(DASHBOARD.read_text())["panels"]):  # as Grafana would send them
        promql = expr.replace("$__rate_interval", "1m").replace("$job", "infer").replace("$instance", ".*")
        result = prometheus.query(promql)  # fails unless Prometheus accepts the query
        assert result or "gpu_" in expr or "> 0" in expr, f"the dashboard's {expr!r} finds nothing"
    assert server.terminate() == 0  # while Prometheus goes on scraping


def test_a_reloaded_server_serves_its_metrics_on_the_same_port(server_factory, tmp_path: Path) -> None:
    from tests.reliability.test_reload import control, next_instance, probe

    port = free_port()  # fixed, so the re-executed process must bind it again once the old one let it go
    server = server_factory(*sleep_model(SERVICE_MS), "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    before = probe(server.endpoint)
    assert f'server_instance="{before["instance"]}"' in get(url)
    assert control(server.endpoint, "reload", settings={"max_batch_size": 4})["accepted"] is True
    info, _ = next_instance(server.endpoint, before["instance"])
    after = get(url)
    assert f'server_instance="{info["instance"]}"' in after and 'max_batch_size="4"' in after
    assert server.terminate() == 0
