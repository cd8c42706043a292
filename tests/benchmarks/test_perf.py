"""benchmarks/perf.py: interleaving, paired ratios, CPU per request, and baselines that answer real results."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest
import torch
import zmq

from benchmarks import perf
from common import codec
from common.protocol import InferHeader, MsgType, ResultHeader, ServerTimes
from common.wire import recv_frames, send_frames


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


def test_bare_client_gets_valid_results_from_echo_floor_and_infer_server(noop_server) -> None:
    """Ratio 2's baseline and its split rows all measure real RESULT round trips."""
    mp = multiprocessing.get_context("spawn")
    endpoints = [f"tcp://127.0.0.1:{perf._free_port()}" for _ in range(2)]
    procs = [perf.start_baseline(mp, perf._echo_server, endpoints[0], 2),
             perf.start_baseline(mp, perf._floor_server, endpoints[1])]
    try:
        x = torch.randn(2, 3, 32, 32)
        for endpoint in [*endpoints, noop_server.endpoint]:
            assert perf.bare_zmq(endpoint, x, iters=5) > 0
        # The floor server runs the real noop model: row i repeats sample i's first element.
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.connect(endpoints[1])
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
        # A request the server refuses is an error, not a fast baseline.
        with pytest.raises(RuntimeError, match="ERROR"):
            perf.bare_zmq(noop_server.endpoint, torch.randn(1, 3, 8, 8), iters=1)
    finally:
        for endpoint in endpoints:
            perf.stop_baseline(endpoint)
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def test_time_split_accounts_for_every_nanosecond_of_the_round_trip(noop_server) -> None:
    """Ratio 1's reported split: model + the server's own work + transport and client = round trip."""
    result = perf.served(noop_server.endpoint, 2, 32, iters=20)
    model_s, own_s, transport_s = perf.time_split(result)
    assert model_s > 0 and own_s > 0 and transport_s > 0
    # Per request, transport is what the round trip leaves after the server's stages,
    # so the three means add up to the mean round trip (to rounding).
    assert model_s + own_s + transport_s == pytest.approx(result.rtt.mean_s, rel=1e-6)
