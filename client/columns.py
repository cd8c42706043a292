"""The metrics thread's RESULTs a column at a time: `Recorder._record` of each, for a batch at once.

The I/O thread hands replies over a batch at a time (client/loop.py: every 2 ms or
32 replies). Nearly every reply in a batch is a well-formed RESULT; for those, the
recorder does what `_record` does for each, but a column at a time: the timestamps,
the server's durations, each distribution's samples appended in one call
(LatencyStats.record_many). The checks `_record` makes are made a column at a time
too; if any reply of the batch fails one (or is anything but a RESULT, or a trace
or a peak-search probe wants each reply on its own), the batch goes through
`_record` one by one, as before. At batch 1 `_record` of each reply cost the client
more than everything else it did per message (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from client.latency import LatencyStats
from common.protocol import BREAKDOWN, MsgType, ServerTimes

if TYPE_CHECKING:
    from client.metrics import Completion, Recorder

# RESULT's `server` map, as ServerTimes.from_wire reads it (every key converted to an int, missing ones 0).
_SERVER_KEYS = tuple(ServerTimes().to_wire())
_INTS, _LISTS, _DICTS, _TWO = frozenset({int}), frozenset({list}), frozenset({dict}), frozenset({2})
_NO_TIMES: dict[str, int] = {}  # a RESULT without `server`: every duration 0


def record_all(rec: Recorder, batch: list[Completion]) -> None:
    """`rec._record` of each completion, in effect; the RESULTs a column at a time when they all pass."""
    plain = rec._trace is None and rec.tail is None
    results = [c for c in batch if c.msg_type is MsgType.RESULT] if plain else []
    columns = _columns(results, rec.batch_size) if results else None
    if columns is None:
        for c in batch:
            rec._record(c)
        return
    if len(results) < len(batch):
        for c in batch:
            if c.msg_type is not MsgType.RESULT:
                rec._record(c)
    _record_results(rec, results, *columns)


def _columns(results: list[Completion], batch_size: int) -> tuple[list, list, dict[str, list]] | None:
    """(scheduled, sent, server durations by wire key) of these RESULTs; None unless each has two int
    timestamps, int durations and one output row per input row (the checks `_record` makes, by column)."""
    headers = [c.header for c in results]
    ts = [h.get("ts") for h in headers]
    if not _LISTS.issuperset(map(type, ts)) or {*map(len, ts)} != _TWO:
        return None
    scheduled, sent = [t[0] for t in ts], [t[1] for t in ts]
    servers = [h.get("server") or _NO_TIMES for h in headers]
    if not (_DICTS.issuperset(map(type, servers)) and _INTS.issuperset(map(type, scheduled))
            and _INTS.issuperset(map(type, sent))):
        return None
    durations = {key: [server.get(key, 0) for server in servers] for key in _SERVER_KEYS}
    if not all(_INTS.issuperset(map(type, column)) for column in durations.values()):
        return None
    tensors = [h.get("tensors") for h in headers]
    if not _LISTS.issuperset(map(type, tensors)):
        return None
    first = [t[0] if t else None for t in tensors]
    if not _DICTS.issuperset(map(type, first)):
        return None
    shapes = [d.get("shape") for d in first]
    if not _LISTS.issuperset(map(type, shapes)):
        return None
    if [s[0] if s else None for s in shapes].count(batch_size) != len(shapes):  # == each, no hashing
        return None
    return scheduled, sent, durations


def _record_results(rec: Recorder, results: list[Completion], scheduled: list[int], sent: list[int],
                    durations: dict[str, list[int]]) -> None:
    """What `rec._record` does for each of these well-formed RESULTs, a column at a time."""
    recv = [c.recv_ns for c in results]
    latency = [r - t for r, t in zip(recv, scheduled)]
    rtt = [r - t for r, t in zip(recv, sent)]
    lag = [b - a for a, b in zip(scheduled, sent)]
    for backend, indices in _by_backend(rec, results):
        b = rec.backends[backend]
        b.ok += len(indices)
        b.latency.record_many([latency[i] for i in indices] if len(indices) < len(results) else latency)
        last = max([recv[i] for i in indices] if len(indices) < len(results) else recv)
        b.last_recv_ns = last if b.last_recv_ns is None else max(b.last_recv_ns, last)
    rec.latency.record_many(latency)
    rec.rtt.record_many(rtt)
    rec.schedule_lag.record_many(lag)
    if rec.progress is not None:
        rec._interval.record_many(latency)
        rec._interval_lag_max_ns = max(rec._interval_lag_max_ns, *lag)
    if rec.slo_ns is not None:
        rec.under_slo += sum(1 for one in latency if one <= rec.slo_ns)
    total = [0] * len(results)
    for stage in BREAKDOWN:
        column = durations[f"{stage}_ns"]  # the wire's name of the stage (BREAKDOWN's rule)
        rec.breakdown[stage].record_many(column)
        total = [a + b for a, b in zip(total, column)]
    # What the server did not spend: both directions of the network stack,
    # ZeroMQ's I/O threads, and this client's own send/receive work.
    rec.breakdown["transport"].record_many([max(0, a - b) for a, b in zip(rtt, total)])
    if rec.window_ns:
        rec._window_count += len(results)
        if rec._window_hist is None:
            rec._window_hist = LatencyStats()
        rec._window_hist.record_many(latency)


def _by_backend(rec: Recorder, results: list[Completion]) -> Iterable[tuple[int, range | list[int]]]:
    """Each backend with the positions of its replies in `results`."""
    if len(rec.backends) == 1:
        return [(0, range(len(results)))]
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(results):
        groups.setdefault(c.backend, []).append(i)
    return groups.items()
