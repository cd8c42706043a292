"""CPU time per message of the server and the client at batch 1: what `make perf`'s small rows depend on.

Wall-clock rates on a shared 2-core machine are noise; the CPU time a process
spends per message much less so. Each row runs a fixed number of messages and
reads CPU clocks (benchmarks/cputime.py) before and after:

- server rows: the bare DEALER client (`perf_baselines.bare_client`) drives
  each server (the bare echo, the floor server on its one thread and on a
  worker thread, infer-server with 0 and 1 workers); the server process's CPU
  clock (all its threads) and each of its threads' are read, with how often
  each thread slept per message (its voluntary context switches);
- client rows: the bare client, and infer-client (in a child process that
  imports this checkout's, or `--base`'s, code before it starts its clock),
  against one infer-server `--num-workers 0`.

    python benchmarks/msgcost.py [--messages 20000] [--side 32] [--dtype uint8] [--trials 3]
                                 [--inflight 1,8] [--only TEXT] [--base DIR] [--py-spy DIR]

With `--base DIR` (another checkout, e.g. `git worktree add /tmp/base ed6adb7`)
every infer-server and infer-client row runs for both checkouts, interleaved,
and a column gives the median of the per-trial ratios this / base. `--py-spy
DIR` records each infer-server's stacks (bare client, 8 in flight) and the
client's, for `benchmarks/top_frames.py`. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cputime import ThreadSampler, process_cpu_ns, thread_cpu_ns, thread_sleeps  # noqa: E402  (torch-free)
from benchmarks.perf_rows import OneLineErrors  # noqa: E402  (torch-free)
from common import __version__  # noqa: E402  (torch-free)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrors(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--dtype", default="uint8", choices=("uint8", "float32"))
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--inflight", default="1,8")
    parser.add_argument("--only", default="", help="measure only the rows whose label contains this")
    parser.add_argument("--base", type=Path, default=None, help="another checkout to compare with, interleaved")
    parser.add_argument("--py-spy", type=Path, default=None, help="record stacks into this folder")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help, --version and bad usage answer before torch is imported

import torch  # noqa: E402

from benchmarks.perf_baselines import bare_client, start  # noqa: E402
from server.launch import launch_server  # noqa: E402

# Run in a child with a checkout's code first on its path: prints its CPU use over one client run.
CLIENT_DRIVER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(1, sys.argv[2])
from cputime import ThreadSampler
from client.config import ClientConfig
from client.runner import run
endpoint, side, dtype, n, k = sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
config = ClientConfig(servers=(endpoint,), batch_size=1, image_size=side, wire_dtype=dtype, num_iters=n,
                      warmup=2, concurrency=k, gpu_source="off")
sampler = ThreadSampler()
before = time.process_time_ns()
result = run(config)
spent = time.process_time_ns() - before
print(json.dumps({"ok": result.ok, "rate": result.throughput, "ns": spent, "threads": sampler.stop()}))
"""


class Measured:
    """Per-trial CPU µs per message of one process (and of its threads), and the rates reached."""

    def __init__(self, label: str):
        self.label = label
        self.us: list[float] = []
        self.threads: list[dict[str, float]] = []
        self.rates: list[float] = []
        self.sleeps: list[dict[str, float]] = []  # per thread, per message (measured in another process only)

    def remote(self, pid: int, fn: Callable[[], float], messages: int) -> None:
        """fn makes process `pid` handle `messages` messages and returns messages/s."""
        before, threads_before, sleeps_before = process_cpu_ns(pid), thread_cpu_ns(pid), thread_sleeps(pid)
        rate = fn()
        after, threads_after, sleeps_after = process_cpu_ns(pid), thread_cpu_ns(pid), thread_sleeps(pid)
        self.add(rate, after - before, {k: v - threads_before.get(k, 0) for k, v in threads_after.items()}, messages)
        self.sleeps.append({k: (v - sleeps_before.get(k, 0)) / messages for k, v in sleeps_after.items()})

    def local(self, fn: Callable[[], float], messages: int) -> None:
        """fn handles `messages` messages in this process (threads it starts and ends included)."""
        sampler = ThreadSampler()
        before = time.process_time_ns()
        rate = fn()
        self.add(rate, time.process_time_ns() - before, sampler.stop(), messages)

    def add(self, rate: float, ns: int, threads: dict[str, int], messages: int) -> None:
        self.rates.append(rate)
        self.us.append(ns / messages / 1e3)
        self.threads.append({k: v / messages / 1e3 for k, v in threads.items()})

    @property
    def median_us(self) -> float:
        return statistics.median(self.us)

    def thread_text(self) -> str:
        names = {k for t in self.threads for k in t}
        medians = {k: statistics.median(t.get(k, 0.0) for t in self.threads) for k in names}
        sleeps = {k: statistics.median(t.get(k, 0.0) for t in self.sleeps) for k in names} if self.sleeps else {}
        return ", ".join(f"{k} {v:.1f}" + (f" ({sleeps[k]:.2f} sleeps)" if k in sleeps else "")
                         for k, v in sorted(medians.items(), key=lambda kv: -kv[1]) if v >= 0.5)

    def row(self, base: Measured | None) -> str:
        ratio = ""
        if base is not None and base.us:
            ratios = [a / b for a, b in zip(self.us, base.us)]
            ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        return (f"| {self.label} | {self.median_us:.1f} ({min(self.us):.1f}-{max(self.us):.1f}) | {ratio} | "
                f"{self.thread_text()} | {statistics.median(self.rates):,.0f} |")


def infer_client(tree: Path, endpoint: str, side: int, dtype: str, messages: int, inflight: int) -> dict:
    """One infer-client run of `tree`'s code in a child process: its CPU ns, threads' ns and rate."""
    done = subprocess.run(
        [sys.executable, "-c", CLIENT_DRIVER, str(ROOT / "benchmarks"), str(tree), endpoint, str(side), dtype,
         str(messages), str(inflight)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(tree)}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"infer-client of {tree} failed: {done.stderr.strip().splitlines()[-1:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if out["ok"] != messages:
        raise RuntimeError(f"infer-client of {tree}: {out['ok']}/{messages} answered")
    return out


def py_spy(pid: int, out: Path, seconds: float, gil: bool = False) -> subprocess.Popen:
    """py-spy sampling `pid` for `seconds` (raw collapsed stacks, per thread; `gil`: only the samples of
    the thread holding the GIL)."""
    exe = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(exe), "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "500",
                             "-f", "raw", "-t", *(["--gil"] if gil else []), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Session:
    """The servers of each checkout, the bare echo, the input; the rows measured."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="msgcost-"))
        self.trees = {"this": ROOT, **({"base": args.base.resolve()} if args.base else {})}
        flags = ["--device", "cpu", "--no-compile", "--model", "noop", "--threads", "1"]
        self.servers = {}
        for tree_name, tree in self.trees.items():
            for w in (0, 1):
                self.servers[tree_name, w] = launch_server(
                    [*flags, "--num-workers", str(w)], self.tmp / f"{tree_name}-{w}.err", 120.0, cwd=tree,
                    env={"PYTHONPATH": str(tree)})
        self.echo = start("echo", batch=1, stderr=self.tmp / "echo.err")
        # What a server that checks, times and counts nothing costs, on its one thread and on a worker thread.
        self.floors = {"floor server": start("floor", stderr=self.tmp / "floor.err"),
                       "floor server, one worker thread": start("floor-worker", stderr=self.tmp / "floor-worker.err")}
        side = args.side
        self.x = (torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8) if args.dtype == "uint8"
                  else torch.randn(1, 3, side, side))
        self.rows: dict[tuple[str, str, int], Measured] = {}

    def close(self) -> None:
        for s in self.servers.values():
            s.kill()
        self.echo.stop()
        for floor in self.floors.values():
            floor.stop()

    def measured(self, what: str, tree: str, k: int) -> Measured | None:
        label = f"{what}, {k} in flight" + (" (base)" if tree == "base" else "")
        if self.args.only not in label:
            return None
        return self.rows.setdefault((what, tree, k), Measured(label))

    def trial(self, k: int) -> None:
        n, x = self.args.messages, self.x
        if m := self.measured("server: bare echo, bare client", "this", k):
            m.remote(self.echo.pid, lambda: bare_client(self.echo.endpoint, x, n, k), n)
        for name, floor in self.floors.items():
            if m := self.measured(f"server: {name}, bare client", "this", k):
                m.remote(floor.pid, lambda floor=floor: bare_client(floor.endpoint, x, n, k), n)
        for tree in self.trees:
            for w in (0, 1):
                s = self.servers[tree, w]
                if m := self.measured(f"server: infer-server, {w} workers, bare client", tree, k):
                    m.remote(s.proc.pid, lambda s=s: bare_client(s.endpoint, x, n, k), n)
        target = self.servers["this", 0].endpoint
        if m := self.measured("client: bare client, against infer-server 0 workers", "this", k):
            m.local(lambda: bare_client(target, x, n, k), n)
        for tree_name, tree in self.trees.items():
            if m := self.measured("client: infer-client, against infer-server 0 workers", tree_name, k):
                out = infer_client(tree, target, self.args.side, self.args.dtype, n, k)
                m.add(out["rate"], out["ns"], out["threads"], n)

    def table(self) -> str:
        a = self.args
        lines = [f"CPU µs per message, {a.dtype} 1x3x{a.side}x{a.side}, `--model noop`, {a.messages} messages a "
                 f"trial, {a.trials} interleaved trials: median (range)", "",
                 "| measured | CPU µs per message | this / base | by thread (µs, medians) | messages/s |",
                 "|---|---|---|---|---|"]
        for (what, tree, k), m in self.rows.items():
            base = self.rows.get((what, "base", k)) if tree == "this" else None
            lines.append(m.row(base))
        return "\n".join(lines)

    def record_stacks(self, folder: Path) -> None:
        """py-spy on each checkout's infer-servers (driven by the bare client, 8 in flight) and on its
        infer-client (8 in flight, against this checkout's server with no workers; Python frames holding
        the GIL only, since its I/O thread mostly waits in a poll that py-spy counts as running)."""
        folder.mkdir(parents=True, exist_ok=True)
        n = self.args.messages
        for (tree, w), s in self.servers.items():
            spy = py_spy(s.proc.pid, folder / f"{tree}-server-{w}workers.txt", 4)
            deadline = time.monotonic() + 4.5
            while time.monotonic() < deadline:
                bare_client(s.endpoint, self.x, n // 4, 8)
            spy.wait()
        target = self.servers["this", 0].endpoint
        for tree_name, tree in self.trees.items():
            child = subprocess.Popen(
                [sys.executable, "-c", CLIENT_DRIVER, str(ROOT / "benchmarks"), str(tree), target, str(self.args.side),
                 self.args.dtype, str(10 * n), "8"], stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(tree)})
            time.sleep(3)  # its imports and set-up; then 4 s of its measured phase (10 x the messages last longer)
            py_spy(child.pid, folder / f"{tree_name}-client-8inflight.txt", 4, gil=True).wait()
            child.wait(600)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    session = Session(args)
    try:
        for _ in range(args.trials):
            for k in (int(k) for k in args.inflight.split(",")):
                session.trial(k)
        if args.py_spy:
            session.record_stacks(args.py_spy)
    finally:
        session.close()
    print(session.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
