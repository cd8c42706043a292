"""CompileGate: which model calls may run at the same time.

torch.compile is not thread-safe (pytorch#136833): compiling a new input shape
mutates Dynamo's caches while other threads may be reading them. With
`exclusive_new_shapes`, calls for a shape that has already run go through
concurrently; the first call for a new shape waits until no other call is
running and then runs alone, so compilation happens on one thread at a time
with nothing else in the compiled code. Waiting new shapes go first: a warm
call that arrives while a new shape waits queues behind it, so a stream of warm
calls cannot starve a new shape.

CUDA-graph compile modes (reduce-overhead, max-autotune) assert under any
concurrent call (pytorch#123177) and keep their graphs per thread; the server
runs them on one prediction thread only, so they need nothing from the gate.

A first call that raises does not make its shape warm: the next call of that
shape is a first call again (it compiles, alone, again), and its time is not
recorded in `first_call_s`.

This module needs no torch: a key is any hashable `(dtype, shape)` pair.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


class CompileGate:
    def __init__(self, exclusive_new_shapes: bool):
        self._exclusive_new_shapes = exclusive_new_shapes
        self._cond = threading.Condition()
        self._active = 0  # calls inside the gate
        self._exclusive = False  # a new shape is running alone
        self._waiting = 0  # calls blocked at the gate
        self._waiting_new = 0  # of those, first calls of a new shape
        self._starting: set[tuple] = set()  # shapes whose first call is waiting or running
        self.warm: set[tuple] = set()  # shapes whose first call completed
        self.first_call_s: dict[str, float] = {}  # "float32[2,3,32,32]" -> seconds of its first call

    @property
    def waiting(self) -> int:
        """Calls blocked at the gate right now (STATS, and tests that need a caller to be parked)."""
        with self._cond:
            return self._waiting

    def needed(self, key: tuple) -> bool:
        """False when a call may skip the gate: nothing compiles and this shape's first
        call (whose time is recorded) is over."""
        return self._exclusive_new_shapes or key not in self.warm

    @contextlib.contextmanager
    def enter(self, key: tuple) -> Iterator[bool]:
        """Yields True for the first call of `key` (the one that compiles, when compile is on)."""
        with self._cond:
            first = self._admit(key)
            self._active += 1
            if first and self._exclusive_new_shapes:
                self._exclusive = True
        start = time.perf_counter()
        completed = False
        try:
            yield first
            completed = True
        finally:
            with self._cond:
                self._active -= 1
                if first:
                    self._starting.discard(key)
                    self._exclusive = False
                    if completed:
                        self.warm.add(key)
                        self.first_call_s[shape_label(key)] = time.perf_counter() - start
                self._cond.notify_all()

    def _admit(self, key: tuple) -> bool:
        """Wait (holding the condition) until this call may run; True when it is key's first call.

        A call that arrived while another call's first run of its key was in
        progress becomes the first call itself if that run raised.
        """
        first = False
        self._waiting += 1
        try:
            while True:
                if not first and key not in self.warm and key not in self._starting:
                    first = True
                    self._starting.add(key)
                    self._waiting_new += 1
                if self._may_run(key, first):
                    return first
                self._cond.wait()
        except BaseException:
            if first:  # interrupted before running: another caller may claim the shape
                self._starting.discard(key)
                self._cond.notify_all()
            raise
        finally:
            self._waiting -= 1
            if first:
                self._waiting_new -= 1

    def _may_run(self, key: tuple, first: bool) -> bool:
        if not self._exclusive_new_shapes:
            return True
        if first:
            return not self._active and not self._exclusive
        # Behind any waiting new shape; and behind this shape's own first call.
        return not self._exclusive and not self._waiting_new and key in self.warm


def shape_label(key: tuple) -> str:
    """(torch.float32, (2, 3, 32, 32)) -> 'float32[2,3,32,32]': how STATS and INFO name an input shape."""
    dtype, shape = key
    return f"{str(dtype).removeprefix('torch.')}[{','.join(map(str, shape))}]"
