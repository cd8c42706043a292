"""benchmarks/cputime.py: per-thread clocks and sleeps read from /proc, on this process."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from benchmarks import cputime

SLEEPS = 20


def test_thread_sleeps_counts_each_time_a_thread_waits() -> None:
    """Every 1 ms nanosleep takes the thread off its core: a voluntary context switch the count must see."""
    pid = os.getpid()
    done, asleep = threading.Event(), threading.Event()

    def sleeper() -> None:
        # Its own OS name, so the count read is this thread's whatever other threads start or end.
        Path(f"/proc/{pid}/task/{threading.get_native_id()}/comm").write_text("cputime-sleeper")
        for _ in range(SLEEPS):
            time.sleep(0.001)  # the measured event itself, not a wait for another thread
        asleep.set()
        done.wait(60)

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        assert asleep.wait(60)
        after = cputime.thread_sleeps(pid)
    finally:
        done.set()
        thread.join(60)
    assert after.get("cputime-sleeper", 0) >= SLEEPS, after


def test_thread_sampler_charges_each_thread_by_its_python_name() -> None:
    """A thread that computes while the sampler runs is charged CPU under its own name."""
    done, worked = threading.Event(), threading.Event()

    def busy() -> None:
        sum(i * i for i in range(300_000))  # a fixed amount of work, whatever the machine's speed
        worked.set()
        done.wait(60)  # alive until the sampler's last read

    sampler = cputime.ThreadSampler()
    thread = threading.Thread(target=busy, name="busy-worker")
    thread.start()
    try:
        assert worked.wait(60)
        spent = sampler.stop()
    finally:
        done.set()
        thread.join(60)
    assert spent.get("busy-worker", 0) > 0, spent
    assert "cpu-sampler" not in spent, "the sampler leaves itself out"
