"""CompileGate with real threads: who runs alone, who runs together, who goes first.

Threads are parked inside the gate on events and released by the test, so
every ordering below is forced, never hoped for; "B is blocked" is established
by the gate's own `waiting` count, never by a sleep. Every wait has a deadline.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest

from server.gate import CompileGate

DEADLINE_S = 10.0
A, B, C = ("float32", (1, 3, 8, 8)), ("float32", (2, 3, 8, 8)), ("uint8", (2, 3, 8, 8))


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Spin (yielding the CPU) until predicate() holds; fail after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        os.sched_yield()


class Caller:
    """One thread making one gated call that stays inside until released."""

    def __init__(self, gate: CompileGate, key: tuple, log: list, name: str, fail: bool = False):
        self.inside, self.release, self.done = threading.Event(), threading.Event(), threading.Event()
        self.first: bool | None = None
        self.error: BaseException | None = None
        self._gate, self._key, self._log, self._name, self._fail = gate, key, log, name, fail
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self._gate.enter(self._key) as first:
                self.first = first
                self._log.append(f"{self._name} in")
                self.inside.set()
                assert self.release.wait(DEADLINE_S), f"{self._name} never released"
                self._log.append(f"{self._name} out")
                if self._fail:
                    raise RuntimeError(f"{self._name} failed")
        except BaseException as exc:  # noqa: B036 (reported to the test, not swallowed)
            self.error = exc
        finally:
            self.done.set()

    def finish(self) -> None:
        self.release.set()
        assert self.done.wait(DEADLINE_S)
        self.thread.join(DEADLINE_S)


def warm(gate: CompileGate, *keys: tuple) -> None:
    for key in keys:
        with gate.enter(key):
            pass


def test_first_call_of_a_shape_is_reported_and_timed() -> None:
    gate = CompileGate(exclusive_new_shapes=True)
    with gate.enter(B) as first:
        assert first is True
    with gate.enter(B) as first:
        assert first is False
    assert gate.warm == {B}
    assert set(gate.first_call_s) == {"float32[2,3,8,8]"} and gate.first_call_s["float32[2,3,8,8]"] >= 0


def test_gate_is_skipped_only_when_nothing_compiles_and_the_shape_is_warm() -> None:
    plain = CompileGate(exclusive_new_shapes=False)
    assert plain.needed(A)  # its first call is timed
    warm(plain, A)
    assert not plain.needed(A)
    compiling = CompileGate(exclusive_new_shapes=True)
    warm(compiling, A)
    assert compiling.needed(A)


def test_new_shape_waits_for_running_calls_and_runs_alone() -> None:
    gate, log = CompileGate(exclusive_new_shapes=True), []
    warm(gate, A)
    running = Caller(gate, A, log, "A")
    assert running.inside.wait(DEADLINE_S)
    new = Caller(gate, B, log, "B")
    wait_until(lambda: gate.waiting == 1, "B to block behind A")
    assert not new.inside.is_set()
    running.finish()
    assert new.inside.wait(DEADLINE_S) and new.first is True
    # While B compiles, a warm call waits too: B runs alone.
    later = Caller(gate, A, log, "A2")
    wait_until(lambda: gate.waiting == 1, "A2 to block behind B")
    new.finish()
    later.finish()
    assert log == ["A in", "A out", "B in", "B out", "A2 in", "A2 out"]
    assert gate.warm == {A, B}


def inside_together(gate: CompileGate, *keys: tuple) -> None:
    """One call per key inside the gate at the same time, or BrokenBarrierError."""
    together = threading.Barrier(len(keys) + 1, timeout=DEADLINE_S)  # the calls, and the test

    def call(key: tuple) -> None:
        with gate.enter(key):
            together.wait()

    threads = [threading.Thread(target=call, args=(k,), daemon=True) for k in keys]
    for t in threads:
        t.start()
    together.wait()  # raises BrokenBarrierError if the gate let only one in
    for t in threads:
        t.join(DEADLINE_S)


def test_warm_shapes_run_concurrently() -> None:
    gate = CompileGate(exclusive_new_shapes=True)
    warm(gate, A, B)
    inside_together(gate, A, B)


def test_without_compile_new_shapes_do_not_wait() -> None:
    gate = CompileGate(exclusive_new_shapes=False)
    inside_together(gate, A, B)
    assert set(gate.first_call_s) == {"float32[1,3,8,8]", "float32[2,3,8,8]"}


def test_new_shape_is_not_starved_by_a_stream_of_warm_calls() -> None:
    gate, log = CompileGate(exclusive_new_shapes=True), []
    warm(gate, A)
    first_warm = Caller(gate, A, log, "A1")
    assert first_warm.inside.wait(DEADLINE_S)
    new = Caller(gate, B, log, "B")
    wait_until(lambda: gate.waiting == 1, "B to wait")
    # Warm calls arriving after B queue behind it, though A1 (warm) is still running.
    behind = [Caller(gate, A, log, f"A{i}") for i in (2, 3)]
    wait_until(lambda: gate.waiting == 3, "A2 and A3 to wait behind B")
    first_warm.finish()
    assert new.inside.wait(DEADLINE_S)
    new.finish()
    for c in behind:
        assert c.inside.wait(DEADLINE_S)
    for c in behind:
        c.finish()
    assert log[:4] == ["A1 in", "A1 out", "B in", "B out"]
    assert sorted(log[4:]) == ["A2 in", "A2 out", "A3 in", "A3 out"]


def test_a_second_call_of_a_compiling_shape_waits_for_its_first() -> None:
    gate, log = CompileGate(exclusive_new_shapes=True), []
    first = Caller(gate, B, log, "B1")
    assert first.inside.wait(DEADLINE_S)
    second = Caller(gate, B, log, "B2")
    wait_until(lambda: gate.waiting == 1, "B2 to wait for B1")
    first.finish()
    second.finish()
    assert (first.first, second.first) == (True, False)
    assert log == ["B1 in", "B1 out", "B2 in", "B2 out"]


def test_an_exception_releases_the_gate_and_the_shape_stays_new() -> None:
    gate, log = CompileGate(exclusive_new_shapes=True), []
    failing = Caller(gate, C, log, "C1", fail=True)
    assert failing.inside.wait(DEADLINE_S)
    retry = Caller(gate, C, log, "C2")  # same shape, waiting for the first call's result
    other = Caller(gate, A, log, "A")  # a new shape too: waits for C1
    wait_until(lambda: gate.waiting == 2, "C2 and A to wait for C1")
    failing.finish()
    assert isinstance(failing.error, RuntimeError)
    # The failed compile did not make C warm: C2 compiles it again, as a first call, alone.
    retry.release.set()
    other.release.set()
    retry.finish()
    other.finish()
    assert retry.error is None and other.error is None
    assert retry.first is True and other.first is True
    assert gate.warm == {A, C} and "uint8[2,3,8,8]" in gate.first_call_s
    assert log.index("C2 out") == log.index("C2 in") + 1 and log.index("A out") == log.index("A in") + 1
    assert gate.waiting == 0
    with gate.enter(C) as first:  # and nothing is left holding the gate
        assert first is False


def test_exception_in_a_warm_call_releases_the_gate() -> None:
    gate = CompileGate(exclusive_new_shapes=True)
    warm(gate, A)
    with pytest.raises(ValueError):
        with gate.enter(A):
            raise ValueError("model failed")
    done = threading.Event()

    def call() -> None:
        with gate.enter(B):
            done.set()

    t = threading.Thread(target=call, daemon=True)
    t.start()
    assert done.wait(DEADLINE_S)
    t.join(DEADLINE_S)
