"""benchmarks/perf.py: interleaving, paired ratios, CPU per request, baselines that answer real results,
and a dry run at small sizes that prints every row."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import zmq

from benchmarks import perf, perf_baselines, perf_small
from common import codec
from common.protocol import InferHeader, MsgType, ResultHeader, ServerTimes
from common.wire import recv_frames, send_frames
from tests.support import run_cli


def test_side_by_side_interleaves_trials_and_keeps_every_sample() -> None:
    calls: list[str] = []

    def make(label: str, value: float):
        def fn() -> float:
            calls.append(label)
            return value + len(calls)
        return fn

    a, b = perf.side_by_side(make("a", 0.0), make("b", 100.0), trials=3)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert a == [1.0, 3.0, 5.0] and b == [102.0, 104.0, 106.0]


def test_paired_ratio_is_the_median_of_per_trial_ratios_with_their_range() -> None:
    ratio, text = perf.paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])
    assert ratio == 2.0 and text == "2.000 (2.00-3.00)"
    # A slow phase that hits both sides of one trial cancels out; a ratio of the
    # two medians (10 / 1 here) would not see that the sides moved together.
    ratio, text = perf.paired_ratio([1.0, 10.0, 10.0], [1.0, 1.0, 10.0], unit="x")
    assert ratio == 1.0 and text == "1.000x (1.00-10.00)"


def test_cpu_meter_counts_the_process_cpu_time_per_request() -> None:
    meter = perf.CpuMeter(os.getpid())

    def burn() -> float:
        end = time.process_time() + 0.1
        while time.process_time() < end:
            pass
        return 42.0

    assert meter.measure(burn, requests=10) == 42.0
    assert meter.measure(lambda: 0.0, requests=10) == 0.0
    assert meter.requests == 20
    assert 0.08 <= meter.cpu_s <= 1.0  # the kernel counts in 10 ms ticks
    assert meter.per_request_us == pytest.approx(meter.cpu_s / 20 * 1e6)
    assert len(meter.per_trial_us) == 2 and meter.per_trial_us[0] == pytest.approx(meter.trials[0][0] / 10 * 1e6)


@pytest.mark.integration
def test_bare_client_gets_valid_results_from_echo_floor_and_infer_server(noop_server) -> None:
    """Ratio 2's baseline and its split rows, and the small section's floors, all measure real RESULT round trips."""
    baselines = [perf_baselines.start("echo", batch=2), perf_baselines.start("floor"),
                 perf_baselines.start("floor-worker")]
    try:
        x = torch.randn(2, 3, 32, 32)
        for endpoint in [*(b.endpoint for b in baselines), noop_server.endpoint]:
            assert perf_baselines.bare_zmq(endpoint, x, iters=5) > 0
        for floor in baselines[1:]:  # on its one thread, then on a worker thread
            # The floor server runs the real noop model: row i repeats sample i's first element.
            ctx = zmq.Context()
            sock = ctx.socket(zmq.DEALER)
            sock.connect(floor.endpoint)
            send_frames(sock, codec.encode(MsgType.INFER, InferHeader([], 7, [1, 2]).to_wire(), (x,)))
            assert sock.poll(30_000)
            reply = codec.decode([f.buffer for f in recv_frames(sock)])
            sock.close(linger=0)
            ctx.term()
            # The floor sends the header infer-server sends, its durations all 0.
            result = ResultHeader.from_wire(reply.header)
            assert (result.id, result.ts, result.server) == (7, [1, 2], ServerTimes())
            assert set(reply.header) == set(result.to_wire())
            assert torch.equal(reply.tensors[0], x.reshape(2, -1)[:, :1].expand(2, 1000))
        # With 8 in flight the worker's floor answers every request, each with its own id.
        assert perf_small.floor_client(baselines[2].endpoint, x[:1], iters=200, inflight=8) > 0
        # A request the server refuses is an error, not a fast baseline.
        with pytest.raises(RuntimeError, match="ERROR"):
            perf_baselines.bare_zmq(noop_server.endpoint, torch.randn(1, 3, 8, 8), iters=1)
    finally:
        for b in baselines:
            b.stop()
    assert [b.proc.returncode for b in baselines] == [0, 0, 0], "the stop message ends a baseline cleanly"


def test_memcpy_rate_copies_every_source_in_turn() -> None:
    sources = [torch.full((4, 1000), float(i)) for i in range(3)]
    assert perf_baselines.memcpy_rate(sources, iters=30) > 0


def test_an_unavailable_measurement_is_nan_with_its_reason_and_not_retried() -> None:
    calls = []

    def fail() -> float:
        calls.append(1)
        raise RuntimeError("no shared memory here\nsecond line")

    shm = perf.Unavailable(fail)
    assert math.isnan(shm()) and math.isnan(shm())
    assert calls == [1] and shm.reason == "RuntimeError: no shared memory here"
    row = perf.target_row("6. x", "n/a", "b", (math.nan, f"n/a ({shm.reason})"), "shm_vs_tcp", unit="x")
    assert row.ok is False and row.ratio.startswith("n/a (RuntimeError") and row.target == "≥ 3.0x"


def test_target_rows_pass_at_their_bound_floor_or_ceiling() -> None:
    assert perf.target_row("r", "", "", (0.8, ""), "cliff").ok is True
    assert perf.target_row("r", "", "", (0.79, ""), "cliff").ok is False
    ceiling = perf.target_row("r", "", "", (1.3, ""), "floor_cpu", unit="x", at_most=True)
    assert ceiling.ok is True and ceiling.target == "≤ 1.3x"
    assert perf.target_row("r", "", "", (1.31, ""), "floor_cpu", at_most=True).ok is False


ROW_FAMILIES = ("2. transport efficiency", "3. vs torch.multiprocessing queue", "4. server CPU per request",
                "5. no cliff", "6. shared memory", "7. infer-server against the floor server")


@pytest.mark.integration
def test_dry_run_prints_every_row_with_its_target_and_verdict(tmp_path: Path) -> None:
    """perf.py end to end at small sizes (ratios 2-7), so that no row can rot unnoticed."""
    out = tmp_path / "perf.md"
    done = run_cli("benchmarks.perf", "--sections", "transport,large", "--trials", "1", "--batches", "1",
                   "--large-batches", "2,4", "--wire-image-size", "32", "--out", str(out), timeout=240)
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: a target missed, as it may be at these sizes
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    for family in ROW_FAMILIES:
        assert any(r.startswith(f"| {family}") for r in rows), f"no {family!r} row"
    targeted = [r.split(" | ") for r in rows if "(reported)" not in r]
    assert len(targeted) >= 2 + 1 + 2 + 4 + 2  # 2-3 at tcp/ipc, 5 at batch 4, 6 at batches 2 and 4, 7 at batch 1
    for cells in targeted:
        assert cells[4].startswith(("≥", "≤")) and cells[5].rstrip(" |") in ("yes", "**no**"), cells
    if Path("/dev/shm").is_dir():
        shm_rows = [r for r in rows if r.startswith("| 6.")]
        assert shm_rows and not any("n/a" in r for r in shm_rows), shm_rows


SMALL_FAMILIES = ("small: infer-server, 0 workers", "small: infer-server, 1 worker", "small: the floor server",
                  "small: the floor server with one worker thread",
                  "small: infer-client", "small: the floor client", "small: infer-client, 8 in flight, a core each",
                  "small: scale-out: infer-client --processes 1",
                  "small: scale-out: infer-client --processes 2")


@pytest.mark.integration
def test_dry_run_of_the_small_section_prints_every_row(tmp_path: Path) -> None:
    """The small section end to end with few messages: every row, targets on the server at 8 in flight
    (0 and 1 worker) and on the client at 1 and 8, each with its CPU time per message beside it."""
    out = tmp_path / "perf.md"
    done = run_cli("benchmarks.perf", "--sections", "small", "--trials", "1", "--small-messages", "200",
                   "--out", str(out), timeout=240)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| small:")]
    for family in SMALL_FAMILIES:
        assert any(cells[0].startswith(f"| {family}") for cells in rows), family
    targeted = [cells for cells in rows if cells[4] != "(reported)"]
    assert [c[4] for c in targeted] == ["≥ 0.8", "≥ 0.65", "≥ 0.9", "≥ 0.9"], targeted
    assert all("µs CPU/msg" in c[1] and "µs CPU/msg" in c[2] for c in targeted)


@pytest.mark.integration
def test_the_bare_client_keeps_its_requests_in_flight_and_infer_client_drives_the_mirror() -> None:
    """bare_client at 8 in flight gets a valid RESULT for every request; the mirror answers infer-client and
    the floor client, which matches every reply to its request."""
    echo, mirror = perf_baselines.start("echo", batch=1), perf_baselines.start("mirror", batch=1)
    try:
        x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
        assert perf_baselines.bare_client(echo.endpoint, x, iters=50, inflight=8) > 0
        assert perf_baselines.bare_client(mirror.endpoint, x, iters=50, inflight=8) > 0
        assert perf_small.infer_client(mirror.endpoint, 40, 8) > 0  # every request answered, or it raises
        assert perf_small.floor_client(mirror.endpoint, x, iters=50, inflight=8) > 0  # each matched and recorded
        with pytest.raises(RuntimeError, match="not a request in flight"):  # the echo answers every one as id 0
            perf_small.floor_client(echo.endpoint, x, iters=50, inflight=8)
    finally:
        echo.stop()
        mirror.stop()


def test_the_refresh_baseline_copies_into_shared_memory_and_leaves_none_behind() -> None:
    sources = [torch.full((4, 1000), float(i)) for i in range(2)]
    before = set(Path("/dev/shm").iterdir()) if Path("/dev/shm").is_dir() else set()
    assert perf_baselines.memcpy_rate(sources, iters=10) > 0
    after = set(Path("/dev/shm").iterdir()) if Path("/dev/shm").is_dir() else set()
    assert not {p for p in after - before if p.name.startswith("perf-memcpy-")}


@pytest.mark.integration
def test_time_split_accounts_for_every_nanosecond_of_the_round_trip(noop_server) -> None:
    """Ratio 1's reported split: model + the server's own work + transport and client = round trip."""
    result = perf.served(noop_server.endpoint, 2, 32, iters=20)
    model_s, own_s, transport_s = perf.time_split(result)
    assert model_s > 0 and own_s > 0 and transport_s > 0
    # Per request, transport is what the round trip leaves after the server's stages,
    # so the three means add up to the mean round trip (to rounding).
    assert model_s + own_s + transport_s == pytest.approx(result.rtt.mean_s, rel=1e-6)


@pytest.mark.integration
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to give one each")
def test_core_each_pins_the_server_and_this_thread_apart_and_undoes_it() -> None:
    """Every thread of the server on one core and the calling thread (and threads it starts) on another,
    while inside; each thread's own cores again after."""
    child = subprocess.Popen([sys.executable, "-c", "import sys, threading; "
                              "threading.Thread(target=sys.stdin.read, daemon=True).start(); "
                              "print('ready', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"  # both of its threads are running
        mine = os.sched_getaffinity(0)
        tasks = lambda: [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]  # noqa: E731
        before = {tid: os.sched_getaffinity(tid) for tid in tasks()}
        with perf_small.core_each(child.pid) as pinned:
            assert pinned
            server_cores = {frozenset(os.sched_getaffinity(tid)) for tid in tasks()}
            (server_core,) = next(iter(server_cores))
            assert server_cores == {frozenset({server_core})}
            seen: list[set[int]] = []
            thread = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
            thread.start()
            thread.join(10)
            (client_core,) = os.sched_getaffinity(0)
            assert client_core != server_core and seen == [{client_core}]
        assert os.sched_getaffinity(0) == mine
        assert {tid: os.sched_getaffinity(tid) for tid in before} == before
    finally:
        child.stdin.close()
        child.wait(10)
