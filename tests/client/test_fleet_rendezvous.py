"""The fleet's rendezvous on real sockets, ranks as threads of this process: join, clock, start, results, faults."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Callable

import msgpack
import pytest

from client.coordinator import Coordinator, Outcome
from client.fleet_member import Clock, Delivery, Member, best_clock
from client.fleet_result import FleetInfo, RankRow, fleet_lines, fleet_row
from client.fleet_wire import MAX_CONTROL_BYTES, FleetError, WireError, pack, unpack
from client.interrupt import Interrupt
from client.metrics import LatencyStats

TIMEOUT_S = 20.0


def _rank(endpoint: str, rank: int, world: int, out: dict, argv: list[str] | None = None,
          measure: Callable[[Interrupt], None] | None = None, deliver: bool = True) -> threading.Thread:
    """One rank's main-thread steps, in a thread: join, ready, wait for the start, (measure,) deliver."""

    def steps() -> None:
        interrupt = Interrupt()
        member = Member(endpoint, rank, world, interrupt, argv=argv, timeout_s=2.0)
        try:
            out[rank, "clock"] = member.joined()
            member.ready()
            member.wait()
            member.started(time.monotonic_ns())
            if measure is not None:
                measure(interrupt)
            if deliver:
                out[rank] = member.deliver(json.dumps({"rank": rank, "stopped": interrupt.interrupted}))
        except FleetError as exc:
            out[rank] = exc
        finally:
            member.close()

    thread = threading.Thread(target=steps, daemon=True)
    thread.start()
    return thread


def _fleet(world: int, ranks: list[int], timeout_s: float = TIMEOUT_S, **kw) -> tuple[Coordinator, dict, list]:
    coordinator = Coordinator("tcp://127.0.0.1:*", world, timeout_s=timeout_s)
    coordinator.start()
    out: dict = {}
    threads = [_rank(coordinator.endpoint, r, world, out, **kw) for r in ranks]
    return coordinator, out, threads


def _finish(coordinator: Coordinator, threads: list) -> Outcome | FleetError:
    try:
        return coordinator.wait(TIMEOUT_S)
    except FleetError as exc:
        return exc
    finally:
        for t in threads:
            t.join(TIMEOUT_S)
        coordinator.close()


def test_ranks_join_start_together_and_every_result_arrives() -> None:
    coordinator, out, threads = _fleet(3, [0, 1, 2])
    outcome = _finish(coordinator, threads)
    assert isinstance(outcome, Outcome) and not outcome.stopped
    assert [out[r] for r in range(3)] == [Delivery(True)] * 3
    for r, rank in outcome.ranks.items():
        assert json.loads(rank.result) == {"rank": r, "stopped": False}
        clock: Clock = out[r, "clock"]
        # One host, one clock: the estimate is within its stated bound of the true offset, 0.
        assert abs(clock.offset_ns) <= clock.uncertainty_ns and rank.clock["rtt_ns"] == clock.rtt_ns
        assert 0 <= rank.late_ns < 50_000_000  # waited for the instant, then started at once


def test_a_missing_rank_is_named_and_every_rank_that_came_is_told() -> None:
    coordinator, out, threads = _fleet(3, [0, 2], timeout_s=1.0)
    error = _finish(coordinator, threads)
    assert isinstance(error, FleetError)
    assert str(error).startswith("rank 1 of 3 did not arrive within 1 s at tcp://127.0.0.1:")
    assert [str(out[r]) for r in (0, 2)] == [str(error)] * 2


def test_a_rank_with_other_options_is_refused() -> None:
    coordinator = Coordinator("tcp://127.0.0.1:*", 2, argv=["--batch-size", "4"], timeout_s=TIMEOUT_S)
    coordinator.start()
    out: dict = {}
    threads = [_rank(coordinator.endpoint, 0, 2, out, argv=["--batch-size", "4"]),
               _rank(coordinator.endpoint, 1, 2, out, argv=["--batch-size", "8"])]
    error = _finish(coordinator, threads)
    assert isinstance(error, FleetError) and "runs other options than rank 0" in str(error)
    assert "'--batch-size 8' where rank 0 has '--batch-size 4'" in str(error)


def test_a_rank_claimed_twice_is_refused() -> None:
    coordinator, out, threads = _fleet(2, [1, 1])
    error = _finish(coordinator, threads)
    assert isinstance(error, FleetError) and "rank 1 joined twice" in str(error)


def test_stop_from_rank_0_reaches_every_rank_while_it_measures() -> None:
    coordinator = Coordinator("tcp://127.0.0.1:*", 2, timeout_s=TIMEOUT_S)
    coordinator.start()
    out: dict = {}
    measuring = threading.Barrier(3)

    def measure(interrupt: Interrupt) -> None:
        measuring.wait(TIMEOUT_S)
        assert interrupt.stop.wait(TIMEOUT_S)  # a measurement loop would stop now

    threads = [_rank(coordinator.endpoint, r, 2, out, measure=measure) for r in (0, 1)]
    measuring.wait(TIMEOUT_S)
    coordinator.stop_fleet()
    outcome = _finish(coordinator, threads)
    assert isinstance(outcome, Outcome) and outcome.stopped
    assert [json.loads(outcome.ranks[r].result)["stopped"] for r in (0, 1)] == [True, True]


def test_a_rank_gone_after_the_start_is_reported_and_the_others_kept() -> None:
    coordinator = Coordinator("tcp://127.0.0.1:*", 2, timeout_s=TIMEOUT_S)
    coordinator.start()
    out: dict = {}
    threads = [_rank(coordinator.endpoint, 0, 2, out), _rank(coordinator.endpoint, 1, 2, out, deliver=False)]
    outcome = _finish(coordinator, threads)
    assert isinstance(outcome, Outcome)
    assert outcome.ranks[0].result is not None and outcome.ranks[0].gone_ns is None
    gone = outcome.ranks[1]
    assert gone.result is None and gone.gone_ns >= outcome.start_ns and "connection closed" in gone.gone_reason


def test_the_shortest_round_trip_bounds_the_offset() -> None:
    rng = random.Random(1)
    true_offset = 3_000_000_000  # rank 0's clock reads 3 s ahead of this one
    samples = []
    for _ in range(16):
        t0 = rng.randrange(10**9)
        there, back = rng.randrange(50_000, 5_000_000), rng.randrange(50_000, 5_000_000)  # asymmetric delays
        samples.append((t0, t0 + there + true_offset, t0 + there + back))
    clock = best_clock(samples)
    assert clock.rtt_ns == min(s[2] - s[0] for s in samples)
    assert abs(clock.offset_ns - true_offset) <= clock.uncertainty_ns == (clock.rtt_ns + 1) // 2


def test_messages_are_bounded_and_typed() -> None:
    assert unpack(pack("ping", t0=5)) == {"t": "ping", "t0": 5}
    with pytest.raises(WireError, match="over the limit"):
        unpack(pack("result", json=b"x" * MAX_CONTROL_BYTES))
    for raw in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"x": 1}), msgpack.packb({1: "t"})):
        with pytest.raises(WireError):
            unpack(raw)


def _row(rank: int, ok: int = 10, **kw) -> RankRow:
    latency = LatencyStats()
    for ns in range(1, ok + 1):
        latency.record(ns * 1_000_000)
    return RankRow(rank, host=kw.pop("host", "a"), ok=ok, sent=ok, throughput=100.0, latency=latency,
                   window=[1000.0, 1000.1], clock_offset_s=0.0, clock_uncertainty_s=1e-4, **kw)


def test_the_report_names_the_lost_rank_and_shows_each_rank_and_host() -> None:
    info = FleetInfo("Open MPI", 3, "tcp://a:29500", 1000.0, batch_size=1, ranks=[
        _row(0, start_offset_s=0.001), _row(1, host="b", start_offset_s=0.003),
        RankRow(2, host="b", gone_at_s=1.5, gone_reason="its connection closed", clock_offset_s=-0.2,
                clock_uncertainty_s=1e-4)])
    text = "\n".join(fleet_lines(info))
    assert "fleet: 3 ranks on 2 hosts (Open MPI)" in text
    assert "start skew: 2.000 ms" in text and "+- 0.200 ms" in text
    assert "PARTIAL: rank 2 (b) went away 1.500 s after the start: its connection closed" in text
    assert "GONE" in text and "-200.000 +- 0.100" in text
    assert "b (host)" in text and "1-2" in text
    row = fleet_row(info)
    assert row["ranks"] == 3 and row["ranks_missing"] == 1
    assert row["start_skew"] == pytest.approx(0.002) and row["max_clock_offset"] == pytest.approx(0.2)
    again = FleetInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert again is not None and again.ranks[0].latency.count == 10 and again.missing[0].rank == 2
    assert fleet_row(None)["ranks"] is None and fleet_lines(None) == []


def test_ctrl_c_stops_the_measurement_once_then_interrupts() -> None:
    said: list[str] = []
    interrupt = Interrupt(say=lambda line, _: said.append(line))
    hooked: list[bool] = []
    interrupt.on_interrupt(lambda: hooked.append(True))
    with pytest.raises(KeyboardInterrupt):  # before the measured phase: nothing to keep
        interrupt.on_signal()
    interrupt.measuring = True
    interrupt.on_signal()
    assert interrupt.interrupted and interrupt.stop.is_set() and hooked == [True]
    assert said and "Ctrl-C again to abort" in said[0]
    with pytest.raises(KeyboardInterrupt):
        interrupt.on_signal()


def test_handling_installs_and_restores_the_handlers() -> None:
    interrupt = Interrupt()
    before = signal.getsignal(signal.SIGTERM)
    with interrupt.handling((signal.SIGINT, signal.SIGTERM)):
        assert signal.getsignal(signal.SIGTERM) == interrupt.on_signal
    assert signal.getsignal(signal.SIGTERM) == before
