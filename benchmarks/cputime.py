"""CPU clocks of processes and threads (Linux), with no project imports: any checkout's code can be measured.

- `process_cpu_ns(pid)`: every thread the process ever ran, those that ended too (the kernel's process CPU
  clock, ns resolution, unlike the 10 ms ticks of /proc/PID/stat);
- `thread_cpu_ns(pid)`: each live thread's, by name; `thread_sleeps(pid)`: how often each has slept;
- `ThreadSampler`: each thread of *this* process, started and ended threads included, over a stretch of code.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path


def process_cpu_ns(pid: int) -> int:
    """CPU time (user + system) of every thread process `pid` ever ran, in ns."""
    return time.clock_gettime_ns(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)


def _thread_ns(task: Path) -> int:
    return int((task / "schedstat").read_text().split()[0])


def _thread_sleeps(task: Path) -> int:
    for line in (task / "status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise OSError(f"no voluntary_ctxt_switches in {task}/status")


def _per_thread(pid: int, read: Callable[[Path], int]) -> dict[str, int]:
    """`read(/proc/PID/task/TID)` of each live thread, by its OS name (`#2`, `#3` appended to repeated names)."""
    out: dict[str, int] = {}
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        task = Path(f"/proc/{pid}/task/{tid}")
        try:
            name, value = (task / "comm").read_text().strip(), read(task)
        except OSError:  # the thread ended meanwhile
            continue
        key, n = name, 1
        while key in out:
            n += 1
            key = f"{name}#{n}"
        out[key] = value
    return out


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """Each live thread's CPU time in ns, by its OS name (`#2`, `#3` appended to repeated names)."""
    return _per_thread(pid, _thread_ns)


def thread_sleeps(pid: int) -> dict[str, int]:
    """How many times each live thread has gone to sleep waiting (the kernel's voluntary context
    switches: a lock, a futex, a poll, a receive), by the names `thread_cpu_ns` gives."""
    return _per_thread(pid, _thread_sleeps)


class ThreadSampler(threading.Thread):
    """CPU time of each thread of this process between start and `stop()`, by Python thread name.

    Threads are read every 10 ms, so one that ends between two reads loses up to 10 ms; the
    sampler leaves itself out.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True, name="cpu-sampler")
        self._halt = threading.Event()
        self._first = self._read()
        self._last: dict[str, tuple[str, int]] = {}
        self.start()

    def _read(self) -> dict[str, tuple[str, int]]:
        names = {str(t.native_id): t.name for t in threading.enumerate()}
        out = {}
        for tid in os.listdir("/proc/self/task"):
            if int(tid) == self.native_id:
                continue
            task = Path(f"/proc/{os.getpid()}/task/{tid}")
            try:
                ns = _thread_ns(task)
                name = names[tid] if tid in names else (task / "comm").read_text().strip()
            except OSError:  # the thread ended meanwhile
                continue
            out[tid] = (name, ns)
        return out

    def run(self) -> None:
        while not self._halt.wait(0.01):
            self._last.update(self._read())

    def stop(self) -> dict[str, int]:
        """ns each thread (by name, summed over same-named threads) spent since the sampler started."""
        self._halt.set()
        self.join()
        self._last.update(self._read())
        spent: dict[str, int] = {}
        for tid, (name, ns) in self._last.items():
            spent[name] = spent.get(name, 0) + ns - self._first.get(tid, (name, 0))[1]
        return spent
