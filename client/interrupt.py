"""Ctrl-C as "stop measuring now, and keep what was measured".

Before the measured phase there is nothing to keep: Ctrl-C interrupts at once
(KeyboardInterrupt). During it (and after it, while a fleet's rank 0 still
collects the other ranks' results) the first Ctrl-C sets `stop`: the loop sends
no more requests, collects the replies in flight, and the run ends with a partial
result marked `interrupted`; hooks pass it on (to client processes, to a fleet's
ranks). A second Ctrl-C interrupts at once.

Launchers stop their processes with SIGTERM (mpirun when it gets Ctrl-C, Slurm's
scancel, Kubernetes), so a fleet rank takes SIGTERM the same way (`handling`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.synchronize import Event as EventType

Say = Callable[[str, bool], None]  # (line, from a signal handler)


class Interrupt:
    """The measurement's stop flag, and what Ctrl-C does to it in each phase."""

    def __init__(self, say: Say | None = None):
        self.stop = threading.Event()  # the measurement loop's stop flag
        self.interrupted = False
        self.measuring = False  # False before the measured phase: Ctrl-C then has nothing to keep
        self._say = say
        self._hooks: list[Callable[[], None]] = []

    def on_interrupt(self, hook: Callable[[], None]) -> None:
        """Also call `hook` (from the signal handler) on the first Ctrl-C that stops the measurement."""
        self._hooks.append(hook)

    def on_signal(self, signum: int = signal.SIGINT, frame: object = None) -> None:
        """The handler: stop the measurement the first time; before it, or a second time, interrupt at once."""
        if not self.measuring or self.interrupted:
            raise KeyboardInterrupt
        self.stop_measuring()
        for hook in self._hooks:
            hook()
        if self._say is not None:
            self._say("interrupted: no more requests sent; collecting the replies in flight (Ctrl-C again to abort)",
                      True)

    def stop_measuring(self, signum: int = signal.SIGINT, frame: object = None) -> None:
        """End the measured phase early, keeping what it measured (also a handler that never raises)."""
        self.interrupted = True
        self.stop.set()

    @contextlib.contextmanager
    def handling(self, signals: Sequence[int] = (signal.SIGINT,)) -> Iterator[Interrupt]:
        """`on_signal` handles `signals` meanwhile; the previous handlers come back after."""
        previous = {s: signal.signal(s, self.on_signal) for s in signals}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def pass_to(self, procs: Sequence[BaseProcess], stop_all: EventType) -> None:
        """On the first Ctrl-C, stop the measurement of the client processes `procs` too."""

        def pass_on() -> None:
            stop_all.set()
            for p in procs:
                if p.pid and p.is_alive():
                    os.kill(p.pid, signal.SIGINT)

        self.on_interrupt(pass_on)

    @classmethod
    def in_client_process(cls, stop_all: EventType | None) -> Interrupt:
        """In one process of a --processes run: silent, and any Ctrl-C ends its measurement.

        `stop_all` is set by the parent when it was interrupted, in case that happened
        before this process could handle SIGINT.
        """
        interrupt = cls()
        signal.signal(signal.SIGINT, interrupt.stop_measuring)
        # Started with SIGINT blocked (sigint_deferred): one sent meanwhile is delivered now, to the handler.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if stop_all is not None and stop_all.is_set():
            interrupt.stop_measuring()
        return interrupt


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """SIGINT blocked here meanwhile, so processes started inside start with it blocked (they inherit the mask).

    A Ctrl-C then is not lost: it waits, here until the block ends, in such a
    process until it has its handler (Interrupt.in_client_process) and unblocks it.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
