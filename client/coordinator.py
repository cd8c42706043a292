"""Rank 0's coordinator: the fleet's rendezvous, its common start, and the gathering of its results.

A thread of rank 0 (or of the parent of a --processes run) that owns one ROUTER
socket (client/fleet_wire.py) and takes each rank, rank 0's own measuring side
included, through these steps:

1. join: every rank says who it is within --fleet-timeout. A rank missing then is
   named to every rank that came (abort), and nothing is measured; so is a rank
   whose options differ from rank 0's, or one that claims a rank twice.
2. clock: each rank asks this clock's time (ping/pong) to estimate its offset.
3. ready: each rank has warmed up. Once all have, the start instant is announced,
   START_LEAD_S ahead on this clock; each rank starts measuring then, on its own
   clock corrected by its offset.
4. results: each rank's result is acknowledged. A rank whose connection closes
   before (it died, or its host stopped answering ZMTP heartbeats) or that reports
   an error is gone at that instant; the others' results are kept.

Before the start any failure aborts the whole fleet. The thread ends when every
rank has sent its result or is gone, or at once when told to give up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from client.fleet_wire import (
    MAX_RESULT_BYTES,
    PROTOCOL,
    FleetError,
    Watch,
    WireError,
    bind_endpoint,
    curve_server,
    local_endpoint,
    open_socket,
    pack,
    unpack,
)

START_LEAD_S = 0.5  # between the announcement and the start: the ranks' last set-up fits in it
POLL_MS = 50


@dataclass
class Rank:
    """One rank as the coordinator knows it."""

    rank: int
    peer: bytes
    host: str
    pid: int
    fd: int = -1  # its connection's file descriptor here: a disconnection names it
    clock: dict[str, int] = field(default_factory=dict)  # offset_ns, uncertainty_ns, rtt_ns, from its ready
    result: bytes | None = None  # its RunResult as JSON text
    late_ns: int | None = None  # its first send after the start instant, on its own clock
    gone_ns: int | None = None  # when it went away, on this clock (Unix ns)
    gone_reason: str = ""

    def __str__(self) -> str:
        return f"rank {self.rank} ({self.host})"


@dataclass
class Outcome:
    """What the fleet did: every rank's result or when it went away."""

    world_size: int
    start_ns: int  # the announced start instant on rank 0's clock (Unix ns)
    ranks: dict[int, Rank]
    stopped: bool  # told to stop early (Ctrl-C on rank 0)


class Coordinator(threading.Thread):
    """Binds at once (FleetError if it cannot); `start()` runs the steps above; `wait()` gives the outcome."""

    def __init__(self, endpoint: str, world_size: int, *, argv: list[str] | None = None,
                 curve_dir: Path | None = None, timeout_s: float = 60.0):
        super().__init__(name="fleet-coordinator", daemon=True)
        self.world_size = world_size
        self.argv = argv  # rank 0's options: every rank must run with the same (None: not checked)
        self.timeout_s = timeout_s
        self.ctx = zmq.Context()
        self.sock = open_socket(self.ctx, zmq.ROUTER, MAX_RESULT_BYTES)
        self._auth = curve_server(self.ctx, self.sock, curve_dir)
        bound = bind_endpoint(endpoint)
        if bound.startswith(("tcp://*:", "tcp://[")):
            self.sock.setsockopt(zmq.IPV6, 1)  # dual stack
        try:
            self.sock.bind(bound)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise FleetError(f"rank 0 cannot listen on {endpoint} ({exc}): is this rank 0's host, and is the "
                             "port free?") from None
        # What was bound, as this host's processes reach it (a wildcard bind: over loopback).
        self.endpoint = local_endpoint(self.sock.getsockopt_string(zmq.LAST_ENDPOINT).rstrip("\x00"))
        self.named = endpoint if "*" not in endpoint else self.endpoint  # as the ranks know it, for messages
        self.watch = Watch(self.sock)
        self.ranks: dict[int, Rank] = {}
        self.phase = "join"  # join -> warm (welcomed) -> run (start announced)
        self.start_ns = 0
        self.outcome: Outcome | None = None
        self.error: str | None = None
        self.done = threading.Event()
        self._stop_fleet = threading.Event()
        self._stop_sent = False
        self._give_up = threading.Event()
        self._abort: str | None = None
        self._closing = threading.Event()

    # -- the caller's side (any thread; stop_fleet also from a signal handler) --------

    def stop_fleet(self) -> None:
        """Tell every rank to stop measuring now (Ctrl-C on rank 0): their partial results still come."""
        self._stop_fleet.set()

    def give_up(self) -> None:
        """Stop waiting for results: the ranks that have not sent theirs are counted gone."""
        self._give_up.set()

    def abort(self, reason: str) -> None:
        """Tell every rank the fleet is off (rank 0 itself failed)."""
        self._abort = reason

    def wait(self, timeout_s: float | None = None) -> Outcome:
        """The outcome once every rank is accounted for; FleetError if the fleet was aborted."""
        if not self.done.wait(timeout_s):
            raise TimeoutError
        if self.error is not None or self.outcome is None:
            raise FleetError(self.error or "the coordinator ended without an outcome")
        return self.outcome

    def collect(self, check: Callable[[], None] | None = None) -> Outcome:
        """`wait`, calling `check` now and then; a second Ctrl-C (KeyboardInterrupt) gives up on the missing
        results and keeps those that came."""
        gave_up = False
        while True:
            try:
                return self.wait(0.2)
            except TimeoutError:
                pass
            except KeyboardInterrupt:
                if gave_up:
                    raise
                gave_up = True
                self.give_up()
            if check is not None:
                check()

    def close(self) -> None:
        if self.is_alive():
            self.abort("rank 0 closed the fleet")
            self._closing.set()
            self.join()
        self.watch.close()
        self._close_sockets()

    def _close_sockets(self) -> None:
        self.sock.close()
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()

    # -- the thread -------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # the caller waits on `done`: never end silently
            self._fail(f"the coordinator failed: {exc!r}")
        finally:
            self.done.set()
        if self.error is not None:
            self._refuse_latecomers()

    def _refuse_latecomers(self) -> None:
        """After an abort, a rank that joins late (rank 0's own, too) hears why at once, until `close`."""
        while not self._closing.is_set():
            if not self.sock.poll(POLL_MS):
                continue
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            if len(frames) == 2:
                self._send(frames[0], "abort", reason=self.error)

    def _serve(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.watch.sock, zmq.POLLIN)
        while self.error is None and self.outcome is None:
            if self._abort is not None:
                self._fail(self._abort)
            elif self.phase == "join" and time.monotonic() > deadline:
                self._fail(self._missing())
            elif self.phase == "run" and (self._give_up.is_set() or self._settled()):
                self._finish()
            else:
                ready = dict(poller.poll(POLL_MS))
                if self.sock in ready:
                    self._receive()
                if self.watch.sock in ready:
                    self._watch()
                if self._stop_fleet.is_set() and self.phase == "run" and not self._stop_sent:
                    self._stop_sent = True
                    self._broadcast("stop")

    def _receive(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue  # one frame per message: anything else is not a rank of ours
            peer, body = frames[0].bytes, frames[1]
            try:
                message = unpack(body.bytes, MAX_RESULT_BYTES)
                self._handle(peer, message, body.get(zmq.SRCFD))
            except (WireError, KeyError, TypeError, ValueError) as exc:
                self._send(peer, "abort", reason=f"rank 0 cannot read your message: {exc}")
            if self.error is not None:
                return

    def _handle(self, peer: bytes, m: dict[str, Any], fd: int) -> None:
        kind = m["t"]
        if kind == "ping":  # first: its round trip is the clock estimate's error bound
            self._send(peer, "pong", t0=m["t0"], t1=time.time_ns())
            return
        if kind == "join":
            self._join(peer, m, fd)
            return
        rank = self._by_peer(peer)
        if rank is None:
            self._send(peer, "abort", reason="rank 0 does not know this rank: it never joined")
            return
        rank.fd = fd
        if kind == "ready":
            rank.clock = {k: int(m[k]) for k in ("offset_ns", "uncertainty_ns", "rtt_ns")}
            if self.phase == "warm" and all(r.clock for r in self.ranks.values()):
                self._announce_start()
        elif kind == "result":
            rank.result, rank.late_ns = bytes(m["json"]), int(m["late_ns"])
            rank.gone_ns, rank.gone_reason = None, ""  # back after a broken connection: its result counts
            self._send(peer, "ack")
        elif kind == "error":
            self._lose(rank, str(m["message"])[:1000])

    def _join(self, peer: bytes, m: dict[str, Any], fd: int) -> None:
        r, world, host = int(m["rank"]), int(m["world"]), str(m["host"])[:255]
        who = f"rank {r} ({host})"
        if self.phase != "join":
            self._send(peer, "abort", reason=f"the fleet has started without {who}")
            return
        refusal = None
        if m.get("protocol") != PROTOCOL:
            refusal = f"{who} speaks {m.get('protocol')!r}, rank 0 {PROTOCOL!r}: different versions"
        elif world != self.world_size or not 0 <= r < world:
            refusal = f"{who} says the fleet has {world} ranks, rank 0 says {self.world_size}"
        elif r in self.ranks:
            refusal = f"rank {r} joined twice: from {self.ranks[r].host} and from {host}"
        elif self.argv is not None and m.get("argv") != self.argv:
            refusal = f"{who} runs other options than rank 0: {_difference(self.argv, m.get('argv'))}"
        if refusal is not None:
            self._send(peer, "abort", reason=refusal)  # it is not one of the ranks `_fail` tells
            self._fail(refusal)
            return
        self.ranks[r] = Rank(r, peer, host, int(m["pid"]), fd)
        if len(self.ranks) == self.world_size:
            self.phase = "warm"
            self._broadcast("welcome")

    def _watch(self) -> None:
        for event, fd in self.watch.events():
            if event != zmq.EVENT_DISCONNECTED:
                continue
            rank = next((r for r in self.ranks.values() if r.fd == fd), None)
            if rank is None or rank.result is not None or rank.gone_ns is not None:
                continue
            if self.phase != "run":
                self._fail(f"{rank} went away before the start (its connection closed): nothing measured")
                return
            self._lose(rank, "its connection closed")

    def _lose(self, rank: Rank, reason: str) -> None:
        if self.phase != "run":
            self._fail(f"{rank}: {reason}")
            return
        rank.gone_ns, rank.gone_reason = time.time_ns(), reason

    def _announce_start(self) -> None:
        worst_rtt = max(r.clock["rtt_ns"] for r in self.ranks.values())
        self.start_ns = time.time_ns() + int(START_LEAD_S * 1e9) + 4 * worst_rtt
        self.phase = "run"
        self._stop_sent = self._stop_fleet.is_set()
        self._broadcast("start", at_ns=self.start_ns, stop=self._stop_sent)

    def _settled(self) -> bool:
        return all(r.result is not None or r.gone_ns is not None for r in self.ranks.values())

    def _finish(self) -> None:
        now = time.time_ns()
        for r in self.ranks.values():
            if r.result is None and r.gone_ns is None:
                r.gone_ns, r.gone_reason = now, "no result yet when rank 0 stopped waiting (Ctrl-C)"
        self.outcome = Outcome(self.world_size, self.start_ns, dict(sorted(self.ranks.items())),
                               self._stop_fleet.is_set())

    def _fail(self, reason: str) -> None:
        self.error = reason
        self._broadcast("abort", reason=reason)

    def _missing(self) -> str:
        missing = [str(r) for r in range(self.world_size) if r not in self.ranks]
        came = ", ".join(str(r) for r in sorted(self.ranks.values(), key=lambda r: r.rank)) or "none"
        return (f"rank{'s' if len(missing) > 1 else ''} {', '.join(missing)} of {self.world_size} did not arrive "
                f"within {self.timeout_s:g} s at {self.named} (arrived: {came}): nothing measured")

    def _by_peer(self, peer: bytes) -> Rank | None:
        return next((r for r in self.ranks.values() if r.peer == peer), None)

    def _broadcast(self, kind: str, **fields: Any) -> None:
        for r in self.ranks.values():
            if r.gone_ns is None:
                self._send(r.peer, kind, **fields)

    def _send(self, peer: bytes, kind: str, **fields: Any) -> None:
        try:
            self.sock.send_multipart([peer, pack(kind, **fields)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # that peer is gone: its disconnection is being reported


def _difference(ours: list[str], theirs: Any) -> str:
    """The first option where two argument lists differ, for a one-line error."""
    if not isinstance(theirs, list):
        return "it sent none"
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            around = slice(max(0, i - 1), i + 2)
            return f"{' '.join(map(str, theirs[around]))!r} where rank 0 has {' '.join(ours[around])!r}"
    longer, who = (ours, "rank 0") if len(ours) > len(theirs) else (theirs, "it")
    return f"only {who} has {' '.join(map(str, longer[min(len(ours), len(theirs)):]))!r}"
