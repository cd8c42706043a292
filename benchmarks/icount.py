"""Instructions per message, counted by valgrind's callgrind: a per-message cost that other work on the
machine does not change (CPU time does, by a factor of two on a busy 2-core VM). Needs valgrind.

    python benchmarks/icount.py server [--workers 0] [--inflight 8] [--messages 2000] [--tree DIR] [--echo]
    python benchmarks/icount.py client [--inflight 8] [--messages 2000] [--tree DIR] [--bare]

`server`: an infer-server of checkout DIR (this one by default; `--echo`: the bare echo instead) runs under
callgrind, instrumentation off until the bare client (in this process, not counted) has warmed it up;
then every instruction of every thread of the server process over `--messages` requests is counted.

`client`: infer-client of checkout DIR (`--bare`: the bare client) runs under callgrind against a noop
infer-server `--num-workers 0` of this checkout (not counted), twice, for N and 3N messages; the
difference over 2N messages leaves out the run's set-up. The client hands replies to its metrics thread
every 2 ms, and under callgrind that is a reply or two, where at full speed it is ten or more: the
metrics thread's share is counted with the hand-over every 32 replies (what it is at 8 in flight).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.perf_rows import OneLineErrors  # noqa: E402  (torch-free)
from common import __version__  # noqa: E402  (torch-free)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrors(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("side", nargs="?", choices=("server", "client"))
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--inflight", type=int, default=8)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose server or client is counted")
    parser.add_argument("--echo", action="store_true", help="server: count the bare echo")
    parser.add_argument("--bare", action="store_true", help="client: count the bare client")
    args = parser.parse_args(argv)
    if args.side is None:
        parser.error("say what to count: server or client")
    args.tree = args.tree.resolve()
    return args


if __name__ == "__main__":
    parse_args()  # --help, --version and bad usage answer before torch is imported

import torch  # noqa: E402

from benchmarks.perf_baselines import bare_client  # noqa: E402
from server.launch import launch_server, stop_process, wait_for_line  # noqa: E402

# The client under count: this waits for a line on stdin (instrumentation switched on meanwhile), then runs.
CLIENT_DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
tree, endpoint, n, k, bare = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
if bare:
    sys.path.insert(0, sys.argv[6])
    from benchmarks.perf_baselines import bare_client
    bare_client(endpoint, x, 20, k)
else:
    import client.loop
    from client.config import ClientConfig
    from client.runner import run
    client.loop.HAND_OVER_NS = 10**12
    def config(n):
        return ClientConfig(servers=(endpoint,), batch_size=1, image_size=32, wire_dtype="uint8", num_iters=n,
                            warmup=2, concurrency=k, gpu_source="off")
    run(config(20))
print("ready", flush=True)
sys.stdin.readline()
if bare:
    bare_client(endpoint, x, n, k)
else:
    assert run(config(n)).ok == n
"""


def valgrind(out: Path, *cmd: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p", *cmd]


def callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=300)


def total(out: Path, pid: int) -> int:
    """Instructions in the last dump of process `pid` (the one at exit, or the last one asked for)."""
    dumps = sorted(out.parent.glob(f"{out.name}.{pid}*"), key=lambda p: p.stat().st_mtime)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary in {dumps[-1]}")


def count_server(args: argparse.Namespace, out: Path) -> int:
    python = sys.executable
    if args.echo:
        cmd = [python, "-m", "benchmarks.perf_baselines", "echo", "tcp://127.0.0.1:*", "1"]
    else:
        cmd = [python, "-m", "server", "--bind", "tcp://127.0.0.1:*", "--device", "cpu", "--no-compile", "--model",
               "noop", "--threads", "1", "--num-workers", str(args.workers)]
    proc = subprocess.Popen(valgrind(out, *cmd), cwd=args.tree, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(args.tree), "PYTHONHASHSEED": "0"})
    try:
        endpoint = wait_for_line(proc, "ready ", 900).split()[1]
        x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
        bare_client(endpoint, x, 50, args.inflight)
        callgrind(proc.pid, "-i", "on")
        callgrind(proc.pid, "-z")
        bare_client(endpoint, x, args.messages, args.inflight)
        callgrind(proc.pid, "-d")
        return total(out, proc.pid) // args.messages
    finally:
        stop_process(proc, 30)


def count_client(args: argparse.Namespace, out: Path) -> int:
    server = launch_server(["--device", "cpu", "--no-compile", "--model", "noop", "--threads", "1",
                            "--num-workers", "0"], out.with_suffix(".err"), 120.0, cwd=ROOT)
    try:
        counts = []
        for n in (args.messages // 2, 3 * args.messages // 2):
            proc = subprocess.Popen(
                valgrind(out, sys.executable, "-c", CLIENT_DRIVER, str(args.tree), server.endpoint, str(n),
                         str(args.inflight), "1" if args.bare else "0", str(ROOT)),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                env={**os.environ, "PYTHONPATH": str(args.tree), "PYTHONHASHSEED": "0"})
            wait_for_line(proc, "ready", 900)
            callgrind(proc.pid, "-i", "on")
            proc.stdin.write("go\n")
            proc.stdin.flush()
            if proc.wait(1800) != 0:
                raise RuntimeError("the counted client failed")
            counts.append(total(out, proc.pid))
        return (counts[1] - counts[0]) // args.messages
    finally:
        server.kill()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="icount-") as tmp:
        out = Path(tmp) / "callgrind.out"
        per = count_server(args, out) if args.side == "server" else count_client(args, out)
    what = ("the bare echo" if args.echo else f"infer-server, {args.workers} workers") if args.side == "server" \
        else ("the bare client" if args.bare else "infer-client")
    print(f"{what} ({args.tree}), {args.inflight} in flight: {per:,} instructions per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
