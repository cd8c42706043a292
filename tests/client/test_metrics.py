"""LatencyStats and the stability criterion against known samples."""

from __future__ import annotations

import numpy as np
import pytest

from client.metrics import PERCENTILES, LatencyStats, Window, is_stable


def _stats(samples_ns: np.ndarray) -> LatencyStats:
    s = LatencyStats()
    for v in samples_ns:
        s.record(int(v))
    return s


def _samples(seed: int, n: int = 20_001) -> np.ndarray:
    # n = 20_001 keeps p*n/100 off integers, where numpy's ceil and hdr's rounding
    # of the rank could pick neighbouring samples through float error alone.
    # Lognormal around 5 ms with a long tail: the shape of real latencies.
    return np.random.default_rng(seed).lognormal(np.log(5e6), 0.6, n).astype(np.int64)


@pytest.mark.parametrize("seed", [0, 1])
def test_percentiles_match_numpy_within_hdr_precision(seed: int) -> None:
    samples = _samples(seed)
    s = _stats(samples)
    for p in (*PERCENTILES, 0.0, 100.0):
        exact = np.percentile(samples, p, method="inverted_cdf")
        got = s.percentile_s(p) * 1e9
        assert abs(got - exact) <= 1e-3 * exact + 1000, (p, got, exact)
    assert s.count == len(samples)
    assert s.min_ns == samples.min() and s.max_ns == samples.max()
    assert s.mean_s == pytest.approx(samples.mean() / 1e9, rel=1e-12)
    assert s.stdev_s == pytest.approx(samples.std() / 1e9, rel=1e-9)


def test_percentile_never_exceeds_max_nor_falls_below_min() -> None:
    # hdr reports the top of a bucket; a lone sample must still be its own p100.
    for v in (1, 999, 1_234_567, 987_654_321):
        s = _stats(np.array([v]))
        for p in (0.0, 50.0, 99.9, 100.0):
            assert s.min_ns / 1e9 <= s.percentile_s(p) <= s.max_ns / 1e9


def test_merge_equals_histogram_of_union() -> None:
    a, b = _samples(2, 5_000), _samples(3, 7_000) * 3
    merged = _stats(a).merge(_stats(b))
    union = _stats(np.concatenate([a, b]))
    assert merged.count == union.count
    assert (merged.min_ns, merged.max_ns, merged.sum_ns) == (union.min_ns, union.max_ns, union.sum_ns)
    assert merged.mean_s == union.mean_s and merged.stdev_s == union.stdev_s
    for p in (*PERCENTILES, 1.0, 100.0):
        assert merged.percentile_s(p) == union.percentile_s(p)
    assert merged.cdf() == union.cdf()


def test_merge_with_empty_is_identity() -> None:
    s = _stats(_samples(4, 100))
    before = s.summary("x")
    assert s.merge(LatencyStats()).summary("x") == before
    assert LatencyStats().merge(s).summary("x") == before


def test_encode_decode_round_trip() -> None:
    s = _stats(_samples(5, 3_000))
    back = LatencyStats.from_dict(s.to_dict())
    assert back.summary("lat") == s.summary("lat")
    assert back.cdf() == s.cdf()
    # And the decoded form keeps merging exactly.
    assert back.merge(s).count == 2 * s.count
    empty = LatencyStats.from_dict(LatencyStats().to_dict())
    assert empty.count == 0 and empty.percentile_s(50) is None


def test_summary_keys_ordered_and_monotone() -> None:
    summ = _stats(_samples(6, 1_000)).summary("lat")
    assert list(summ) == ["lat_min", "lat_mean", "lat_stdev", "lat_p50", "lat_p90", "lat_p95", "lat_p99",
                          "lat_p99_9", "lat_max"]
    ordered = [summ[k] for k in ("lat_min", "lat_p50", "lat_p90", "lat_p95", "lat_p99", "lat_p99_9", "lat_max")]
    assert ordered == sorted(ordered)


def _windows(throughputs: list[float], p50s: list[float]) -> list[Window]:
    return [Window(t, p, 100) for t, p in zip(throughputs, p50s)]


def test_is_stable_steady_windows() -> None:
    rng = np.random.default_rng(7)
    steady = _windows(list(1000 * (1 + 0.02 * rng.standard_normal(6))), list(0.010 * (1 + 0.02 * rng.standard_normal(6))))
    assert is_stable(steady)


def test_is_stable_rejects_drift_short_runs_and_missing_p50() -> None:
    drifting_throughput = _windows([1000, 800, 640, 512, 410], [0.01] * 5)
    assert not is_stable(drifting_throughput)
    growing_latency = _windows([1000] * 5, [0.01, 0.02, 0.04, 0.08, 0.16])  # an overloaded queue
    assert not is_stable(growing_latency)
    assert not is_stable(_windows([1000, 1000], [0.01, 0.01]))  # fewer windows than the criterion needs
    assert not is_stable([Window(1000, None, 0)] * 3)
    # A drift that has settled in the last three windows counts as stable.
    assert is_stable(_windows([500, 700, 1000, 1010, 995], [0.02, 0.015, 0.01, 0.0101, 0.0099]))
    assert not is_stable(_windows([1000, 1080, 1160], [0.01] * 3), tolerance=0.05)


def test_recorder_closes_no_window_after_sending_stopped() -> None:
    from client.metrics import Recorder

    rec = Recorder(batch_size=1, backends=["x"], window_ns=100)
    rec.start_ns = 0
    rec._close_windows(250)
    assert len(rec.windows) == 2
    rec.send_end_ns = 300
    rec._close_windows(10_000)  # the drain after the last send: not a window of the offered load
    assert len(rec.windows) == 3


def test_recorder_takes_completions_in_batches() -> None:
    """The I/O thread hands over one list per loop turn; each reply in it is recorded once."""
    from client.metrics import Completion, Recorder
    from common.protocol import ErrorCode, ErrorHeader, MsgType, ResultHeader, ServerTimes, tensor_desc

    rec = Recorder(batch_size=2, backends=["a", "b"])
    rec.start()

    def reply(backend: int, rid: int, recv_ns: int, rows: int = 2) -> Completion:
        header = ResultHeader(rid, [0, 10], [tensor_desc("float32", [rows, 1000])], ServerTimes(compute_ns=5))
        return Completion(backend, MsgType.RESULT, header.to_wire(), recv_ns)

    overloaded = ErrorHeader(int(ErrorCode.OVERLOADED), "OVERLOADED", "busy", id=4, ts=[0, 10])
    rec.inbox.put([reply(0, 1, 1_000), reply(1, 2, 3_000)])
    rec.inbox.put([reply(0, 3, 2_000)])
    rec.inbox.put([Completion(1, MsgType.ERROR, overloaded.to_wire(), 4_000), reply(0, 5, 5_000, rows=3)])
    rec.stop()
    assert [b.ok for b in rec.backends] == [2, 1]
    assert rec.backends[1].failed == {"OVERLOADED": 1}
    assert rec.backends[0].failed == {"BAD_REPLY": 1}  # three rows answering a batch of two
    assert rec.latency.count == 3 and rec.latency.max_ns == 3_000 and rec.rtt.min_ns == 990
    assert rec.backends[0].last_recv_ns == 5_000
    assert rec.breakdown["compute"].count == 3 and rec.breakdown["transport"].max_ns == 3_000 - 10 - 5


def test_recorder_takes_the_send_phase_from_events() -> None:
    """The I/O thread never writes the recorder's fields: it sends events through the inbox."""
    from client.metrics import Recorder, SendingStarted, SendingStopped

    rec = Recorder(batch_size=1, backends=["x"])
    rec.start()
    rec.inbox.put(SendingStarted(5))
    rec.inbox.put(SendingStopped(9))
    rec.stop()
    assert (rec.start_ns, rec.send_end_ns) == (5, 9)


@pytest.mark.parametrize("window_ns", [None, 2_500])
def test_replies_recorded_in_columns_count_as_recorded_one_by_one(window_ns: int | None, monkeypatch) -> None:
    """The well-formed RESULTs of a batch are recorded a column at a time (client/columns.py): the same
    distributions, counts, goodput and windows as `_record` of each, whatever else the batch holds."""
    from client import metrics
    from client.metrics import Completion, Recorder
    from common.protocol import ErrorCode, ErrorHeader, MsgType, ResultHeader, ServerTimes, tensor_desc

    rng = np.random.default_rng(5)

    def result(backend: int, recv_ns: int, **changes: object) -> Completion:
        sent = recv_ns - int(rng.integers(100, 900))
        times = ServerTimes(*(int(v) for v in rng.integers(0, 40, 6)), batch_rows=2)
        header = ResultHeader(1, [sent - int(rng.integers(0, 50)), sent], [tensor_desc("float32", [2, 1000])],
                              times).to_wire()
        header.update(changes)
        return Completion(backend, MsgType.RESULT, header, recv_ns)

    error = ErrorHeader(int(ErrorCode.OVERLOADED), "OVERLOADED", "busy", id=4, ts=[0, 10]).to_wire()
    batches, recv = [], 1_000
    for turn in range(40):
        batch = []
        for _ in range(int(rng.integers(1, 6))):
            recv += int(rng.integers(50, 400))
            batch.append(result(int(rng.integers(0, 2)), recv))
        recv += 10
        odd = [result(0, recv, ts=[True, recv - 5]), result(1, recv, server={"compute_ns": "7", "x": "y"}),
               result(0, recv, tensors=[tensor_desc("float32", [3, 1000])]), result(1, recv, server=None),
               result(0, recv, tensors=[{"shape": [[2], 1000]}]),
               Completion(1, MsgType.ERROR, error, recv), result(0, recv, server={"compute_ns": 1.5})]
        if turn % 3:  # else a batch of plain RESULTs, recorded in columns as a whole
            batch.insert(int(rng.integers(0, len(batch))), odd[turn % len(odd)])
        batches.append(batch)

    def recorded() -> Recorder:
        rec = Recorder(batch_size=2, backends=["a", "b"], slo_ns=600, window_ns=window_ns)
        rec.start_ns = 0
        rec.progress = object()  # fed by _take (its interval's latencies and largest lag), shown by run()
        for batch in batches:
            rec._take(batch)
        return rec

    columns = recorded()
    monkeypatch.setattr(metrics, "record_all", lambda rec, batch: [rec._record(c) for c in batch])  # as before
    single = recorded()
    stats = ["latency", "rtt", "schedule_lag"]
    assert [getattr(columns, s).to_dict() for s in stats] == [getattr(single, s).to_dict() for s in stats]
    assert {k: v.to_dict() for k, v in columns.breakdown.items()} == {
        k: v.to_dict() for k, v in single.breakdown.items()}
    assert [(b.ok, b.failed, b.last_recv_ns, b.latency.to_dict()) for b in columns.backends] == [
        (b.ok, b.failed, b.last_recv_ns, b.latency.to_dict()) for b in single.backends]
    assert columns.under_slo == single.under_slo and 0 < single.under_slo < single.latency.count
    assert (columns._interval.to_dict(), columns._interval_lag_max_ns) == (
        single._interval.to_dict(), single._interval_lag_max_ns) and single._interval_lag_max_ns > 0
    assert columns.windows == single.windows and (window_ns is None or len(single.windows) > 10)
    assert single.backends[0].failed and single.backends[1].failed  # the odd replies were there
