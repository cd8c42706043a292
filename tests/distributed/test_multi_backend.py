"""One client, several servers: spreading, per-backend figures, a backend lost mid-run, merging."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys

import pytest

from client.metrics import PERCENTILES, LatencyStats
from client.results import RunResult, backend_skew
from tests.support import NOOP, ROOT, SMALL_RUN, run_cli, sleep_model, wait_until_answered


@pytest.mark.integration
def test_two_servers_share_the_load_and_backends_add_up(server_factory, tmp_path) -> None:
    a, b = server_factory(*NOOP), server_factory(*NOOP)
    full = tmp_path / "run.json"
    proc = run_cli("client", "--server", a.endpoint, "--server", b.endpoint, *SMALL_RUN, "--num-iters", "200",
                   "--concurrency", "4", "--json-file", str(full), "--json")
    assert proc.returncode == 0, proc.stderr
    result = RunResult.read_json(full)
    assert [x["endpoint"] for x in result.backends] == [a.endpoint, b.endpoint]
    assert all(x["ok"] > 0 for x in result.backends)  # both served
    assert sum(x["ok"] for x in result.backends) == result.ok == 200
    assert sum(x["sent"] for x in result.backends) == result.sent
    assert sum(x["latency"].count for x in result.backends) == result.latency.count
    assert len(result.backpressure) == 2  # each server's ZeroMQ counters over the window, from its STATS
    assert all(bp is not None and bp["replies_dropped"] == 0 for bp in result.backpressure)
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["backends"] == 2 and metrics["backend_skew"] >= 1.0
    assert "load-balance skew" in proc.stdout


def test_backend_skew_definition() -> None:
    assert backend_skew([{"throughput": 100.0}]) is None
    assert backend_skew([{"throughput": 100.0}, {"throughput": 50.0}]) == 2.0
    lost = {"throughput": 1.0, "lost_reason": "no reply"}
    assert backend_skew([{"throughput": 30.0}, {"throughput": 30.0}, lost]) == 1.0


@pytest.mark.integration
def test_killed_backend_is_reported_and_the_run_finishes_on_the_other(server_factory, tmp_path) -> None:
    # 5 ms a request on one worker each: the two serve at most 400 requests/s, so the
    # 1000-request run is still going when the victim dies after 50, however fast the machine.
    survivor, victim = server_factory(*sleep_model(5.0)), server_factory(*sleep_model(5.0))
    full = tmp_path / "run.json"
    client = subprocess.Popen(
        [sys.executable, "-m", "client", "--server", survivor.endpoint, "--server", victim.endpoint, *SMALL_RUN,
         "--num-iters", "1000", "--concurrency", "4", "--timeout", "2", "--json-file", str(full)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until_answered(victim.endpoint, 50)
        victim.kill()  # SIGKILL: no DEAD frame, the client must notice by --timeout
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 1, err  # incomplete run: results still written
    assert "Traceback" not in err
    result = RunResult.read_json(full)
    by_endpoint = {x["endpoint"]: x for x in result.backends}
    lost, alive = by_endpoint[victim.endpoint], by_endpoint[survivor.endpoint]
    assert lost["lost_reason"] and lost["lost_at_s"] > 0 and lost["ok"] > 0
    assert not alive["lost_reason"]
    assert result.sent == 1000 and result.ok + result.lost + result.failed_total == 1000
    assert lost["lost"] == result.lost and alive["lost"] == 0
    assert alive["ok"] > lost["ok"]  # the survivor carried the rest of the run
    assert f"backend {victim.endpoint}" in out and "LOST at" in out
    assert backend_skew(result.backends) is None  # only one backend stayed up


def _stats(samples: list[int]) -> LatencyStats:
    s = LatencyStats()
    for ns in samples:
        s.record(ns)
    return s


def test_merged_histograms_equal_one_histogram_of_all_samples() -> None:
    rng = random.Random(7)
    part_a = [int(rng.lognormvariate(14, 0.6)) for _ in range(5000)]  # ~1 ms, long tail
    part_b = [int(rng.lognormvariate(15, 0.3)) for _ in range(3000)]
    merged = _stats(part_a).merge(LatencyStats.from_dict(_stats(part_b).to_dict()))  # b via its encoded form
    union = _stats(part_a + part_b)
    assert merged.count == union.count and merged.sum_ns == union.sum_ns
    assert merged.min_ns == union.min_ns and merged.max_ns == union.max_ns
    for p in PERCENTILES:
        assert merged.percentile_s(p) == union.percentile_s(p)


@pytest.mark.integration
def test_two_client_processes_merge_exactly(noop_server, tmp_path) -> None:
    full = tmp_path / "run.json"
    proc = run_cli("client", "--server", noop_server.endpoint, *SMALL_RUN, "--num-iters", "101", "--concurrency",
                   "2", "--processes", "2", "--json-file", str(full), "--json")
    assert proc.returncode == 0, proc.stderr
    result = RunResult.read_json(full)
    assert result.parts == 2 and result.ok == 101 and result.latency.count == 101
    assert json.loads(proc.stdout.strip().splitlines()[-1])["processes"] == 2


@pytest.mark.integration
def test_infer_merge_combines_results_from_two_clients(server_factory, tmp_path) -> None:
    # Two clients measured at the same time, by construction rather than by timing: the long one
    # is measuring (the server has answered past its warm-up) before the short one starts, and is
    # stopped with Ctrl-C only after the short one has finished, so the short window lies inside it.
    server = server_factory(*NOOP)  # its own: the answered count below must be this test's alone
    long_path, short_path = tmp_path / "host0.json", tmp_path / "host1.json"
    long_run = subprocess.Popen(
        [sys.executable, "-m", "client", "--server", server.endpoint, *SMALL_RUN, "--duration", "600",
         "--warmup", "5", "--seed", "0", "--json-file", str(long_path), "-q"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until_answered(server.endpoint, 5 + 20)  # its warm-up and 20 measured requests
        short = run_cli("client", "--server", server.endpoint, *SMALL_RUN, "--num-iters", "60",
                        "--seed", "1", "--json-file", str(short_path), "-q")
        assert short.returncode == 0, short.stderr
        long_run.send_signal(signal.SIGINT)  # a partial result, still written
        _, err = long_run.communicate(timeout=60)
    finally:
        if long_run.poll() is None:
            long_run.kill()
            long_run.wait()
    assert long_run.returncode == 130, err
    parts = [long_path, short_path]
    merged_path, csv_path = tmp_path / "merged.json", tmp_path / "merged.csv"
    proc = run_cli("client.merge", *map(str, parts), "-o", str(merged_path), "--output-file", str(csv_path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "merged 2 results" in proc.stdout and "throughput:" in proc.stdout
    merged = RunResult.read_json(merged_path)
    a, b = (RunResult.read_json(p) for p in parts)
    assert a.windows_overlap(b) is True
    assert merged.ok == a.ok + b.ok and b.ok == 60 and merged.parts == 2
    union = LatencyStats().merge(a.latency).merge(b.latency)
    for p in PERCENTILES:
        assert merged.latency.percentile_s(p) == union.percentile_s(p)
    # One host, one clock: the merged rate is over the union of the windows, not the sum of the rates.
    start, end = min(a.window_unix[0], b.window_unix[0]), max(a.window_unix[1], b.window_unix[1])
    assert merged.throughput == pytest.approx(merged.ok * merged.batch_size / (end - start), rel=1e-9)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["requests_ok"] == merged.ok
    assert csv_path.read_text().count("\n") == 2


@pytest.mark.integration
def test_infer_merge_rejects_a_file_that_is_not_a_result(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    proc = run_cli("client.merge", str(bad), timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {bad} is ") and last.endswith("expected an infer-client --json-file result")
