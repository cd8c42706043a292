"""The top frames of a py-spy recording (`py-spy record -f raw -t`, idle samples dropped), per thread.

    python benchmarks/top_frames.py FILE [--top 15] [--us-per-message T]

For each thread with samples: its share of the samples, then the functions
with the most samples *inside* them (inclusive: each function counted once per
stack) and the most samples *in* them (self: the leaf frame). With
`--us-per-message` (the process's CPU µs per message, from
benchmarks/msgcost.py), each share is also shown as µs per message.
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.perf_rows import OneLineErrors  # noqa: E402
from common import __version__  # noqa: E402

LINE = re.compile(r"^thread \((\d+)\): (\S[^;]*);(.*) (\d+)$")
FRAME = re.compile(r"^(.*) \((.*?):\d+\)$")


def function(frame: str) -> str:
    """`name (file:line)` -> `name (file)`: one entry per function, not per line."""
    m = FRAME.match(frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


def read(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    stacks: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        m = LINE.match(line)
        if m:
            stacks[f"{m.group(2)} ({m.group(1)})"].append(([function(f) for f in m.group(3).split(";")],
                                                           int(m.group(4))))
    return stacks


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrors(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("file", type=Path, nargs="?")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--us-per-message", type=float, default=None)
    args = parser.parse_args(argv)
    if args.file is None:
        parser.error("give a py-spy recording (py-spy record -f raw -t)")
    stacks = read(args.file)
    total = sum(n for per_thread in stacks.values() for _, n in per_thread)
    scale = (args.us_per_message / total) if args.us_per_message else None
    for thread, per_thread in sorted(stacks.items(), key=lambda kv: -sum(n for _, n in kv[1])):
        samples = sum(n for _, n in per_thread)
        if samples < 0.02 * total:
            continue
        inclusive: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        for frames, n in per_thread:
            for f in set(frames):
                inclusive[f] += n
            own[frames[-1]] += n
        print(f"\n{thread}: {samples} samples, {samples / total:.0%} of the process's")
        for title, counter in (("inclusive", inclusive), ("self", own)):
            print(f"  {title}:")
            for f, n in counter.most_common(args.top):
                us = f" {n * scale:6.1f} µs" if scale else ""
                print(f"    {n / samples:6.1%}{us}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
