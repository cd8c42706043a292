"""One rank's side of the fleet: join, clock offset, the common start, and the result sent to rank 0.

`Member` is the start gate the runner calls (client/runner.py): `ready()` once
warm-up is done, `wait()` right before the first send, `started()` with that
send's time. A thread of its own owns the DEALER socket to rank 0's coordinator
(client/coordinator.py), so a stop from rank 0, or rank 0 going away, is seen
while this rank measures.

Clock offset, as NTP estimates it: the rank sends its clock's time t0, rank 0
answers with its own t1, the answer arrives at t3. Rank 0's clock read t1 at
some instant between t0 and t3, so offset = t1 - (t0 + t3) / 2 is off by at
most the round trip's half, (t3 - t0) / 2: that is its stated uncertainty. Of
CLOCK_SAMPLES round trips the shortest is kept. The offset converts the start
instant, given on rank 0's clock, to this host's clock.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from client.fleet_wire import (
    LIVENESS_S,
    MAX_CONTROL_BYTES,
    PROTOCOL,
    FleetError,
    Watch,
    WireError,
    curve_client,
    open_socket,
    pack,
    unpack,
)
from client.interrupt import Interrupt
from common.host import hostname

CLOCK_SAMPLES = 16
POLL_MS = 50
SPIN_NS = 2_000_000  # the last stretch before the start instant is waited for by reading the clock
WELCOME_GRACE_S = 15.0  # connected, a rank waits this much longer than rank 0 to hear who is missing
RECONNECT_GRACE_S = 3.0  # with the connection to rank 0 closed, how long a result waits for it to come back


@dataclass(frozen=True)
class Clock:
    offset_ns: int  # rank 0's clock minus this one's
    uncertainty_ns: int  # the true offset is within offset_ns +- this
    rtt_ns: int

    def to_wire(self) -> dict[str, int]:
        return {"offset_ns": self.offset_ns, "uncertainty_ns": self.uncertainty_ns, "rtt_ns": self.rtt_ns}


def best_clock(samples: list[tuple[int, int, int]]) -> Clock:
    """The estimate from the (t0, t1, t3) round trip that took least time."""
    t0, t1, t3 = min(samples, key=lambda s: s[2] - s[0])
    rtt = t3 - t0
    return Clock(offset_ns=t1 - (t0 + t3) // 2, uncertainty_ns=(rtt + 1) // 2, rtt_ns=rtt)


@dataclass(frozen=True)
class Delivery:
    """What became of this rank's result: taken by rank 0, or rank 0 gone (then the rank keeps it)."""

    delivered: bool
    reason: str = ""  # why not


class Member(threading.Thread):
    """This rank's link to rank 0: the runner's start gate, and the carrier of its result."""

    def __init__(self, endpoint: str, rank: int, world_size: int, interrupt: Interrupt, *,
                 argv: list[str] | None = None, curve_dir: Path | None = None, timeout_s: float = 60.0):
        super().__init__(name=f"fleet-rank-{rank}", daemon=True)
        self.endpoint, self.rank, self.world_size = endpoint, rank, world_size
        self.interrupt = interrupt  # rank 0's stop sets its stop flag
        self.timeout_s = timeout_s
        self.clock: Clock | None = None
        self.start_ns: int | None = None  # on rank 0's clock (Unix ns)
        self.target_ns: int | None = None  # the start instant on this host's monotonic clock
        self.late_ns: int | None = None  # first send after target_ns
        self.lost_at_ns: int | None = None  # this clock (Unix ns): when the connection to rank 0 closed
        self.lost_reason = ""
        self._join_message = pack("join", protocol=PROTOCOL, rank=rank, world=world_size, host=hostname(),
                                  pid=os.getpid(), argv=argv)
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.ctx = zmq.Context()
        self.sock = open_socket(self.ctx, zmq.DEALER, MAX_CONTROL_BYTES)
        curve_client(self.sock, curve_dir)
        self.watch = Watch(self.sock)
        self._connected = False

    # -- the main thread ------------------------------------------------------------------

    def joined(self) -> Clock:
        """Join, then estimate the clock offset; FleetError if the fleet is off (a rank missing, refused...)."""
        self.start()
        self.clock = self._expect("synced")
        return self.clock

    def ready(self) -> None:
        """Warm-up done: wait for every rank's, then for the start instant's announcement."""
        self._commands.put(("ready", None))
        self.start_ns = self._expect("start")
        assert self.clock is not None
        wall_target = self.start_ns - self.clock.offset_ns
        self.target_ns = time.monotonic_ns() + (wall_target - time.time_ns())

    def wait(self) -> None:
        """Until the start instant (on this host's clock); a stop from rank 0 ends the wait."""
        assert self.target_ns is not None
        remaining = self.target_ns - time.monotonic_ns()
        if remaining > SPIN_NS and self.interrupt.stop.wait((remaining - SPIN_NS) / 1e9):
            return
        while time.monotonic_ns() < self.target_ns:
            pass

    def started(self, first_send_ns: int) -> None:
        """The measured phase's first send (monotonic ns): how late it was, on this host's clock."""
        if self.target_ns is not None:
            self.late_ns = first_send_ns - self.target_ns

    def deliver(self, result_json: str) -> Delivery:
        """Send this rank's result to rank 0; waits for rank 0 to acknowledge it, or to be gone."""
        self._commands.put(("result", pack("result", json=result_json.encode(), late_ns=self.late_ns or 0)))
        try:
            self._expect("ack")
        except FleetError as exc:
            return Delivery(False, str(exc))
        return Delivery(True)

    def fail(self, message: str) -> None:
        """This rank cannot go on: rank 0 is told (before the start that stops the whole fleet)."""
        self._commands.put(("error", pack("error", message=message)))

    def close(self) -> None:
        if self.is_alive():
            self._commands.put(("close", None))
            self.join()
        self.watch.close()
        self.sock.close()
        self.ctx.term()

    def _expect(self, kind: str) -> Any:
        """The thread's next event, which must be `kind`; FleetError with the reason otherwise."""
        while True:
            try:
                got, value = self._events.get(timeout=0.2)  # a timeout keeps Ctrl-C responsive
            except queue.Empty:
                continue
            if got == kind:
                return value
            raise FleetError(value)

    # -- the thread -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.sock.connect(self.endpoint)
            self.sock.send(self._join_message)
            self._events.put(("synced", self._sync()))
            self._wait_command("ready")
            assert self.clock is not None
            self.sock.send(pack("ready", **self.clock.to_wire()))
            start = self._receive("start", None)
            if start.get("stop"):
                self.interrupt.stop_measuring()
            self._events.put(("start", int(start["at_ns"])))
            self._serve()
        except FleetError as exc:
            self._events.put(("failed", str(exc)))
        except Exception as exc:  # the main thread waits on these events: never end silently
            self._events.put(("failed", f"rank {self.rank}'s link to rank 0 failed: {exc!r}"))

    def _sync(self) -> Clock:
        connect_by = time.monotonic() + self.timeout_s
        self._receive("welcome", connect_by, patient=True)
        samples = []
        for _ in range(CLOCK_SAMPLES):
            t0 = time.time_ns()
            self.sock.send(pack("ping", t0=t0))
            pong = self._receive("pong", time.monotonic() + self.timeout_s)
            t3 = time.time_ns()
            if pong.get("t0") == t0:
                samples.append((t0, int(pong["t1"]), t3))
        if not samples:
            raise FleetError(f"rank {self.rank}: rank 0 answered no clock request")
        self.clock = best_clock(samples)
        return self.clock

    def _receive(self, kind: str, deadline: float | None, patient: bool = False) -> dict[str, Any]:
        """The next message, which must be `kind`; "abort" (rank 0's reason) and silence raise FleetError.

        `patient`: once connected, wait WELCOME_GRACE_S past `deadline`, for rank 0 to say who is missing.
        """
        while True:
            self._check_link()
            if self._lost_for_good():
                raise FleetError(f"rank {self.rank}: rank 0 at {self.endpoint} went away before the start "
                                 f"({self.lost_reason}): nothing measured")
            now = time.monotonic()
            limit = deadline + (WELCOME_GRACE_S if patient and self._connected else 0) if deadline else None
            if limit is not None and now > limit:
                raise FleetError(self._silence())
            if self._commands_say_close():
                raise FleetError("closed")
            if not self.sock.poll(POLL_MS):
                continue
            message = self._read()
            if message is None:
                continue
            if message["t"] == "abort":
                raise FleetError(str(message.get("reason")))
            if message["t"] == kind:
                return message

    def _serve(self) -> None:
        """Measuring: take rank 0's stop, watch the link, and carry the result when it comes."""
        while True:
            self._check_link()
            try:
                command, payload = self._commands.get(timeout=POLL_MS / 1000)
            except queue.Empty:
                command, payload = "", None
            if command == "close":
                return
            if command == "error":
                self.sock.send(payload)
                return
            if command == "result":
                self.sock.send(payload)
                self._events.put(self._await_ack())
                return
            while self.sock.poll(0):
                self._take_while_measuring(self._read())

    def _take_while_measuring(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        if message["t"] == "stop":
            self.interrupt.stop_measuring()
        elif message["t"] == "abort":  # rank 0 will merge nothing: this rank keeps its own result
            self.lost_at_ns = self.lost_at_ns or time.time_ns()
            self.lost_reason = f"rank 0: {message.get('reason')}"
            self.interrupt.stop_measuring()

    def _await_ack(self) -> tuple[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            self._check_link()
            if self._lost_for_good():
                return "gone", self.lost_reason
            if self.sock.poll(POLL_MS):
                message = self._read()
                if message is not None and message["t"] == "ack":
                    return "ack", None
                if message is not None and message["t"] == "abort":
                    return "gone", f"rank 0: {message.get('reason')}"
        return "gone", f"rank 0 did not take the result within {self.timeout_s:g} s"

    def _check_link(self) -> None:
        for event, _ in self.watch.events():
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected = True
                if self.lost_reason == "its connection closed":  # back: the same rank 0 is still there
                    self.lost_at_ns, self.lost_reason = None, ""
            elif event == zmq.EVENT_DISCONNECTED and self._connected and self.lost_at_ns is None:
                self.lost_at_ns = time.time_ns()
                self.lost_reason = "its connection closed"
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                raise FleetError(f"rank {self.rank}: rank 0's coordinator at {self.endpoint} refused the handshake"
                                 " (CURVE keys: --fleet-curve-dir)")

    def _lost_for_good(self) -> bool:
        """The connection to rank 0 closed (or rank 0 called the fleet off) and did not come back in time."""
        return self.lost_at_ns is not None and time.time_ns() - self.lost_at_ns > RECONNECT_GRACE_S * 1e9

    def _read(self) -> dict[str, Any] | None:
        try:
            return unpack(self.sock.recv(zmq.NOBLOCK))
        except (zmq.Again, WireError):
            return None

    def _wait_command(self, kind: str) -> None:
        while True:
            self._check_link()
            if self._lost_for_good():
                raise FleetError(f"rank {self.rank}: rank 0 at {self.endpoint} went away before the start "
                                 f"({self.lost_reason}): nothing measured")
            while self.sock.poll(0):  # an abort meanwhile (another rank failed its warm-up)
                message = self._read()
                if message is not None and message["t"] == "abort":
                    raise FleetError(str(message.get("reason")))
            try:
                command, payload = self._commands.get(timeout=POLL_MS / 1000)
            except queue.Empty:
                continue
            if command == kind:
                return
            if command == "error":
                self.sock.send(payload)
            raise FleetError("closed")

    def _commands_say_close(self) -> bool:
        try:
            command, payload = self._commands.get_nowait()
        except queue.Empty:
            return False
        if command == "error":
            self.sock.send(payload)
        return True

    def _silence(self) -> str:
        if not self._connected:
            return (f"rank {self.rank}: no coordinator answered at {self.endpoint} within {self.timeout_s:g} s "
                    "(is rank 0 running, and that its host and port?): nothing measured")
        return f"rank {self.rank}: rank 0 at {self.endpoint} said nothing for {self.timeout_s:g} s: nothing measured"


__all__ = ["LIVENESS_S", "Clock", "Delivery", "Member", "best_clock"]
