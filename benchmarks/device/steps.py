"""Running the device plan: the ceiling process, the servers, the client points, one row per step.

`Run.run` walks the plan in order. Before each step it asks the plan what the step should
cost given what has run (benchmarks/device/plan.py); a step that does not fit in what is
left of the budget gets a row saying so and is not started. After each step the estimates
take what it really cost, so a slow machine skips later steps sooner rather than overrunning.
A step that fails gets its row with the reason; the run goes on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.device.plan import DEFAULT_MODE, Estimates, Ledger, Shape, Step, apply, compile_kind, step_estimate
from benchmarks.device.table import Output, failed_row, key_lines
from common.protocol import BREAKDOWN
from server.launch import ServerProcess, launch_server, stop_process, wait_for_line

ROOT = Path(__file__).resolve().parents[2]
CLIENT_TIMEOUT_S = 20.0  # a reply this late means the server is stuck: fail the point, keep the budget
MIN_TIMEOUT_S = 20.0  # the least a step is given before it counts as stuck
STAGES = (*BREAKDOWN, "transport")


class Budget:
    """Seconds left of the run's budget, from the moment it was made."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class CeilingProcess:
    """benchmarks/device/ceiling.py --serve: one process, asked one shape at a time over stdin."""

    def __init__(self, cmd: list[str], err_path: Path):
        self.cmd = cmd
        self.err_path = err_path
        self.proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def measure(self, wire: str, batch: int, mode: str, timeout: float) -> dict[str, Any]:
        """The ceiling's row for one shape; RuntimeError saying why when there is none."""
        if not self.running:
            with open(self.err_path, "ab") as err:
                self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=err)
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"wire": wire, "batch": batch, "mode": mode}) + "\n").encode())
            self.proc.stdin.flush()
            line = wait_for_line(self.proc, "ceiling ", timeout)
        except (OSError, TimeoutError, RuntimeError) as exc:
            self.close()  # stuck or gone: the next ceiling step starts a fresh process
            raise RuntimeError(f"ceiling: {exc} ({last_line(self.err_path)})") from None
        row = json.loads(line.removeprefix("ceiling "))
        if "error" in row:
            raise RuntimeError(f"ceiling: {row['error']}")
        return row

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                try:
                    self.proc.stdin.close()  # end of requests: it exits by itself
                except OSError:
                    pass
            stop_process(self.proc, 10.0)
            self.proc = None


def last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1][:300] if lines else "(no output)"


def server_args(args: argparse.Namespace, wire: str, batch: int) -> list[str]:
    cuda = args.device.startswith("cuda")
    cmd = ["--device", args.device, "--model", "resnet18", "--num-workers", str(args.workers),
           "--precision", args.precision, "--channels-last", "--warmup-batch-sizes", str(batch),
           "--warmup-image-size", str(args.image_size), "--warmup-dtype", wire, "--max-inflight", "4096"]
    cmd += ["--no-compile"] if args.compile_mode == "none" or not cuda else [
        "--compile", "--compile-mode", args.compile_mode]
    return cmd + (["--cudnn-benchmark"] if args.cudnn_benchmark else [])


def in_flight(args: argparse.Namespace, batch: int) -> int:
    """Requests kept outstanding: `samples_in_flight` samples, capped so small batches do not queue deep."""
    return max(2, min(args.samples_in_flight // batch, args.max_in_flight))


def step_fields(step: Step, args: argparse.Namespace) -> dict[str, Any]:
    compiles = args.device.startswith("cuda") and args.compile_mode != "none"
    mode = step.mode if compiles else "none"
    if step.kind == "ceiling":
        return {"kind": "ceiling", "transport": "in-process", "wire": step.wire, "batch": step.batch,
                "mode": mode, "planned_mode": step.mode}
    if step.kind == "servers":
        return {"kind": "servers", "transport": "servers", "wire": ",".join(step.wires), "batch": step.batch}
    return {"kind": "point", "transport": step.transport, "wire": step.wire, "batch": step.batch,
            "in_flight": in_flight(args, step.batch)}


class Run:
    """One pass over the plan; holds the processes it started and stops them in `close`."""

    def __init__(self, args: argparse.Namespace, out: Output, budget: Budget, est: Estimates):
        self.args, self.out, self.budget, self.est = args, out, budget, est
        self.compiles = args.device.startswith("cuda") and args.compile_mode != "none"
        self.ledger = Ledger()
        self.ceiling = CeilingProcess(ceiling_command(args), out.path("ceiling.err"))
        self.servers: dict[str, ServerProcess] = {}
        self.server_failed: dict[str, str] = {}
        self.fresh: dict[str, str | None] = {}  # started servers not yet observed -> the compile kind they paid

    def run(self, steps: list[Step]) -> None:
        for step in steps:
            if step.kind == "key":
                self.out.add_lines(key_lines(self.out.rows, step.batch, self.out.elapsed(), server_mode(self.args)))
                continue
            est_s, why = step_estimate(step, self.est, self.ledger, self.compiles)
            fields = {**step_fields(step, self.args), "est_s": round(est_s, 1), "est_detail": why}
            left = self.budget.left() - self.est.get("stop_s")
            if est_s > left:
                self.out.add_row(failed_row(fields, f"skipped: needs ~{est_s:.0f} s ({why}), {max(0, left):.0f} s "
                                                    "left", est_s))
                continue
            self.out.log(f"{step.label()}: expected ~{est_s:.0f} s ({why})")
            t0 = time.monotonic()
            try:
                row = {**fields, **self._execute(step, est_s, left)}
            except Exception as exc:  # noqa: BLE001 - one step's failure is its row's note, never the run's end
                row = {**failed_row(fields, f"{type(exc).__name__}: {exc}", est_s)}
            row["took_s"] = round(time.monotonic() - t0, 1)
            self.out.add_row(row)

    def _execute(self, step: Step, est_s: float, left: float) -> dict[str, Any]:
        # Generous: a step that runs long costs the steps after it (they are skipped), and stopping
        # it early would lose its own figure as well.
        timeout = max(MIN_TIMEOUT_S, min(left, 3 * est_s + 60.0))
        if step.kind == "ceiling":
            return self._ceiling(step, timeout)
        if step.kind == "servers":
            return self._servers(step, timeout)
        return self._point(step, timeout)

    def _ceiling(self, step: Step, timeout: float) -> dict[str, Any]:
        kind = compile_kind(step.shape, self.ledger.compiled, self.ledger.ceiling_shapes)
        fresh = not self.ceiling.running
        t0 = time.monotonic()
        row = self.ceiling.measure(step.wire, step.batch, step.mode if self.compiles else "none", timeout)
        took = time.monotonic() - t0
        apply(step, self.ledger)
        if self.compiles and kind:
            self.est.observe(f"compile_{kind}_s", row["compile_s"])
        if fresh:
            self.est.observe("ceiling_process_s", took - row["compile_s"] - row["settle_s"] - row["seconds"])
        self.out.ceiling[f"{step.wire}:{step.batch}:{step.mode}"] = row
        self.out.write_environment()
        mode = row["mode"] + (f" (planned {step.mode}: nothing compiles here)" if row["mode"] != step.mode else "")
        note = (f"ceiling, compile {mode}; first call {row['compile_s']:.1f} s, "
                f"{row['ms_per_call']:.2f} ms per call")
        return {"samples_s": row["samples_s"], "compile_s": row["compile_s"], "note": note}

    def _servers(self, step: Step, timeout: float) -> dict[str, Any]:
        starting = [w for w in step.wires if w not in self.servers and w not in self.server_failed]
        kinds = {w: compile_kind(Shape(w, step.batch), self.ledger.compiled, set()) for w in starting}
        started = self._start(starting, step.batch, timeout)
        for wire in started:
            self.fresh[wire] = kinds[wire]
            self.ledger.servers.setdefault(wire, set()).add(Shape(wire, step.batch))
            self.ledger.compiled.add(Shape(wire, step.batch))
        notes = [f"{w} ready" for w in started] + [f"{w}: {self.server_failed[w]}" for w in starting
                                                    if w in self.server_failed]
        if not started:
            raise RuntimeError("; ".join(notes) or "no server to start")
        return {"note": "; ".join(notes)}

    def _start(self, wires: list[str], batch: int, timeout: float) -> list[str]:
        """Start one server per wire dtype at once; the ones that started, failures in `server_failed`."""
        if not wires:
            return []
        with ThreadPoolExecutor(len(wires)) as pool:
            futures = {w: pool.submit(launch_server, server_args(self.args, w, batch),
                                      self.out.path(f"server-{w}.err"), timeout, cwd=ROOT) for w in wires}
        started = []
        for wire, future in futures.items():
            try:
                self.servers[wire] = future.result()
                started.append(wire)
            except Exception as exc:  # noqa: BLE001 - that wire's points say why
                self.server_failed[wire] = " ".join(str(exc).split())
        return started

    def _server_for(self, step: Step, timeout: float) -> ServerProcess:
        server = self.servers.get(step.wire)
        if server is not None and server.proc.poll() is not None:
            self.out.log(f"server {step.wire} exited with {server.proc.returncode}: {last_line(server.stderr_path)}")
            del self.servers[step.wire]
            self.ledger.servers.pop(step.wire, None)
            server = None
        if server is None:
            if step.wire in self.server_failed:
                raise RuntimeError(f"server did not start: {self.server_failed[step.wire]}")
            kind = compile_kind(Shape(step.wire, step.batch), self.ledger.compiled, set())
            if not self._start([step.wire], step.batch, timeout):
                raise RuntimeError(self.server_failed[step.wire])
            self.fresh[step.wire] = kind
            self.ledger.servers[step.wire] = {Shape(step.wire, step.batch)}
            self.ledger.compiled.add(Shape(step.wire, step.batch))
            server = self.servers[step.wire]
        return server

    def _point(self, step: Step, timeout: float) -> dict[str, Any]:
        server = self._server_for(step, timeout)
        shape = Shape(step.wire, step.batch)
        lazy = compile_kind(shape, self.ledger.compiled, self.ledger.servers.get(step.wire, set()))
        from client.runner import run as run_client  # torch comes with it: not needed for --help

        config = client_config(self.args, step, server.endpoint, min(timeout, self.budget.left()))
        t0 = time.monotonic()
        result = run_client(config)
        took = time.monotonic() - t0
        apply(step, self.ledger)
        row = measured_row(step, config, result, self._ceilings())
        self._observe_point(step, result, lazy, took)
        return row

    def _observe_point(self, step: Step, result: Any, lazy: str | None, took: float) -> None:
        """What the server's start, a lazily compiled shape and the point itself really cost."""
        info = (result.servers or [{}])[0]
        if step.wire in self.fresh and self.compiles:
            kind = self.fresh.pop(step.wire)
            if kind and info.get("m_compile_time") is not None:
                self.est.observe(f"compile_{kind}_s", info["m_compile_time"])
        self.fresh.pop(step.wire, None)
        if info.get("startup_s") is not None:
            self.est.observe("server_process_s", info["startup_s"] - (info.get("m_compile_time") or 0.0))
        first = 0.0
        if lazy and result.cold_start:
            label = f"{step.wire}[{step.batch},3,{self.args.image_size},{self.args.image_size}]"
            first = (result.cold_start[0].first_call_s or {}).get(label) or 0.0
            if self.compiles and first:
                self.est.observe(f"compile_{lazy}_s", first)
        self.est.observe("point_overhead_s", took - self.args.seconds - first)

    def _ceilings(self) -> dict[tuple[str, int], float]:
        """The ceilings the served points compare with: the servers' own compile mode, by (wire, batch)."""
        return {(r["wire"], r["batch"]): r["samples_s"] for r in self.out.rows
                if r.get("kind") == "ceiling" and r.get("planned_mode") == server_mode(self.args)
                and r.get("samples_s")}

    def close(self) -> None:
        self.ceiling.close()
        for server in self.servers.values():
            server.terminate(10.0)
        self.servers.clear()


def server_mode(args: argparse.Namespace) -> str:
    """The compile mode the servers run, as the plan names it ("default" when nothing compiles)."""
    return args.compile_mode if args.compile_mode != "none" else DEFAULT_MODE


def ceiling_command(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "device" / "ceiling.py"), "--serve", "--device", args.device,
           "--image-size", str(args.image_size), "--precision", args.precision,
           "--seconds", str(args.ceiling_seconds), *(["--cudnn-benchmark"] if args.cudnn_benchmark else [])]
    if not args.device.startswith("cuda"):
        # A dry run on shared cores: a team of OpenMP threads waits on whichever core is taken.
        cmd += ["--threads", "1"]
    return cmd


def client_config(args: argparse.Namespace, step: Step, endpoint: str, left: float) -> Any:
    from client.config import ClientConfig

    concurrency = in_flight(args, step.batch)
    return ClientConfig(
        servers=(endpoint,), batch_size=step.batch, image_size=args.image_size, wire_dtype=step.wire,
        num_iters=None, duration_s=args.seconds, warmup=max(3, 2 * args.workers), concurrency=concurrency,
        processes=args.processes if concurrency >= args.processes else 1,
        gpu_source="auto" if args.device.startswith("cuda") else "off",
        transport="zmq" if step.transport == "tcp" else step.transport,
        timeout_s=CLIENT_TIMEOUT_S, warmup_timeout_s=max(10.0, left),
    )


def measured_row(step: Step, config: Any, result: Any, ceilings: dict[tuple[str, int], float]) -> dict[str, Any]:
    ceiling = ceilings.get((step.wire, step.batch))
    summary = result.summary()
    gpu = result.gpu or {}
    return {
        "in_flight": config.concurrency,
        "samples_s": result.throughput,
        "ceiling_samples_s": ceiling,
        "of_ceiling": result.throughput / ceiling if ceiling else None,
        "p50_ms": _ms(summary.get("p50_latency")),
        "p99_ms": _ms(summary.get("p99_latency")),
        "gpu_busy_pct": gpu.get("util_mean"),
        "gpu_power_w": gpu.get("energy_power_w") if gpu.get("energy_power_w") is not None else gpu.get("power_mean_w"),
        "samples_per_joule": summary.get("samples_per_joule"),
        "gpu": gpu,
        "failed": result.failed_total,
        "lost": result.lost,
        "complete": result.complete,
        "server_mean_ms": {s: _ms(result.breakdown[s].mean_s) for s in STAGES if s in result.breakdown},
        "server": (result.servers or [{}])[0],
        "note": "; ".join(filter(None, ["" if result.complete and not result.failed_total else _failures(result),
                                        _throttled(gpu)])),
    }


def _throttled(gpu: dict[str, Any]) -> str:
    """The GPU-side flag a row must not hide: its clocks were held down during the window."""
    if not gpu.get("throttled"):
        return ""
    return f"GPU THROTTLED ({', '.join(gpu.get('throttle_reasons') or [])}) in {len(gpu['throttled_windows'])} window(s)"


def _failures(result: Any) -> str:
    parts = [f"{n} {kind}" for kind, n in sorted(result.failed.items()) if n]
    return "failed: " + ", ".join(parts) if parts else "incomplete: a server was lost"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3
