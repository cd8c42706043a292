"""The device run's plan: which steps run in which order, what each is expected to cost, whether it fits.

A lent GPU machine gives one run of a few minutes, and compiling a graph costs tens of
seconds there, so the order is chosen for what matters most and for compiling each graph
once:

* the target batch first (128, then 32, then 1 by default): each batch is a phase;
* in each phase the in-process ceiling first, at every wire dtype the servers will see
  (float32, uint8): it compiles the very graphs the servers run, so the servers find them
  in inductor's on-disk caches and start in seconds;
* then the served points (shm float32, tcp float32, tcp uint8). Servers start once, in the
  first phase, and compile each later batch on its first request (a cache hit again);
* a `reduce-overhead` (CUDA graphs) ceiling at batch 32 and 1, last in its phase.

Every step has an estimate (`Estimates`), made from defaults and replaced by what this run
measured as it goes; a step whose estimate does not fit in what is left of the budget is
skipped with that reason, never started. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

DEFAULT_MODE = "default"
GRAPH_MODES = ("reduce-overhead", "max-autotune")  # CUDA graphs: one prediction thread, captured per shape


@dataclass(frozen=True)
class Shape:
    """One compiled graph: what the model is called with, and how it is compiled."""

    wire: str  # the input dtype on the device (uint8 is normalised inside the graph)
    batch: int
    mode: str = DEFAULT_MODE


@dataclass(frozen=True)
class Step:
    """`ceiling`: the model alone at `shape`; `servers`: one server per wire dtype in `wires`, started
    together (imports and cached compiles overlap); `point`: infer-client against the `wire` server over
    `transport`; `key`: the first phase's summary row."""

    kind: str
    batch: int
    wire: str = "float32"
    transport: str | None = None
    mode: str = DEFAULT_MODE
    wires: tuple[str, ...] = ()

    @property
    def shape(self) -> Shape:
        return Shape(self.wire, self.batch, self.mode)

    def label(self) -> str:
        if self.kind == "ceiling":
            return f"ceiling {self.wire} batch {self.batch} ({self.mode})"
        if self.kind == "point":
            return f"{self.transport} {self.wire} batch {self.batch}"
        if self.kind == "servers":
            return f"servers {', '.join(self.wires)} (warm-up batch {self.batch})"
        return f"key row, batch {self.batch}"


def default_steps(batches: list[int], points: list[tuple[str, str]], graph_batches: list[int],
                  ceiling: bool = True, mode: str = DEFAULT_MODE, graph_mode: str = "reduce-overhead") -> list[Step]:
    """Phases in `batches` order; in each, ceilings at the points' wire dtypes, the points, then the
    CUDA-graph ceiling when the batch is in `graph_batches` (unless the servers' own `mode` is a CUDA-graph
    one). The first phase starts the servers (one per wire dtype) before its points, and the key row
    follows its points."""
    wires = list(dict.fromkeys(wire for _, wire in points))
    steps: list[Step] = []
    for i, batch in enumerate(batches):
        if ceiling:
            steps += [Step("ceiling", batch, wire, mode=mode) for wire in wires]
        if i == 0 and wires:
            steps.append(Step("servers", batch, wires=tuple(wires)))
        steps += [Step("point", batch, wire, transport) for transport, wire in points]
        if i == 0:
            steps.append(Step("key", batch))
        if ceiling and batch in graph_batches and mode not in GRAPH_MODES:
            steps.append(Step("ceiling", batch, wires[0] if wires else "float32", mode=graph_mode))
    return steps


# Defaults before anything is measured, for an H100/H200 box with 16 cores (torch 2.11,
# ResNet-18 at 3x250x250). No GPU had run this project when they were set: they are
# estimates, replaced by this run's own figures as soon as it has them.
GPU_DEFAULTS = {
    "install_s": 8.0,  # run.sh: pip from .whl/ (what already imports is skipped)
    "environment_s": 5.0,  # import torch, NVML queries
    "ceiling_process_s": 12.0,  # import torch, CUDA context, model, inductor's compile workers
    "server_process_s": 12.0,  # the same for a server, plus its worker pool and the handshake
    "compile_first_s": 45.0,  # the first graph: every kernel new, inductor's worker pool cold
    "compile_new_batch_s": 30.0,  # a batch not compiled before: its kernels have new sizes
    "compile_new_dtype_s": 15.0,  # another input dtype at a compiled batch: only the first kernels are new
    "compile_graphs_s": 15.0,  # CUDA graphs at a batch compiled in default mode: kernels cached, plus capture
    "compile_cached_s": 6.0,  # a graph another process compiled: a hit in inductor's FX graph cache
    "point_overhead_s": 5.0,  # client processes, handshake, idle-power baseline, warm-up requests, teardown
    "stop_s": 10.0,  # stopping the servers and the ceiling, writing the files
}
# On CPU (the dry run) nothing compiles; starts and points are what cost.
CPU_DEFAULTS = {**GPU_DEFAULTS, "environment_s": 3.0, "ceiling_process_s": 6.0, "server_process_s": 8.0,
                **{k: 1.0 for k in GPU_DEFAULTS if k.startswith("compile_")}, "point_overhead_s": 5.0}
COMPILE_KINDS = ("first", "new_batch", "new_dtype", "graphs", "cached")


@dataclass
class Estimates:
    """Seconds each kind of work is expected to take: the defaults, then this run's measurements.

    A compile kind not yet measured is scaled by how the last measured compile compared with
    its default (a slower machine is slower at every compile); a measured kind takes its
    measured value.
    """

    defaults: dict[str, float]
    ceiling_seconds: float = 3.0
    point_seconds: float = 5.0
    measured: dict[str, float] = field(default_factory=dict)
    speed: float = 1.0  # last measured compile / its default

    def get(self, name: str) -> float:
        if name in self.measured:
            return self.measured[name]
        scale = self.speed if name.startswith("compile_") else 1.0
        return self.defaults[name] * scale

    def observe(self, name: str, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if name.startswith("compile_") and self.defaults[name] > 0:
            self.speed = max(0.1, seconds / self.defaults[name])
        self.measured[name] = seconds

    def compile_s(self, kind: str) -> float:
        return self.get(f"compile_{kind}_s")

    def ceiling_measure_s(self) -> float:
        """The measured run and settling before it (at most ceiling_seconds; a second or less once compiled)."""
        return self.ceiling_seconds + 1.0

    def point_s(self) -> float:
        return self.point_seconds + self.get("point_overhead_s")


def compile_kind(shape: Shape, compiled: set[Shape], here: set[Shape]) -> str | None:
    """What compiling `shape` costs in a process that has already compiled `here`, when this run has
    compiled `compiled` (in any process): None when nothing is compiled at all."""
    if shape in here:
        return None
    if shape in compiled:
        return "cached"
    if not compiled:
        return "first"
    if shape.mode != DEFAULT_MODE and dataclasses.replace(shape, mode=DEFAULT_MODE) in compiled:
        return "graphs"
    if any(s.batch == shape.batch for s in compiled):
        return "new_dtype"
    return "new_batch"


@dataclass
class Ledger:
    """What this run has compiled, where, and what is running: the state the estimates depend on."""

    compiled: set[Shape] = field(default_factory=set)  # by any process of this run
    ceiling_shapes: set[Shape] = field(default_factory=set)  # by the running ceiling process
    ceiling_running: bool = False
    servers: dict[str, set[Shape]] = field(default_factory=dict)  # running servers by wire: shapes they ran


def step_estimate(step: Step, est: Estimates, ledger: Ledger, compiles: bool = True) -> tuple[float, str]:
    """(seconds, how they add up) for `step` given what the run has done so far."""
    parts: list[tuple[str, float]] = []
    if step.kind == "ceiling":
        if not ledger.ceiling_running:
            parts.append(("ceiling process", est.get("ceiling_process_s")))
        kind = compile_kind(step.shape, ledger.compiled, ledger.ceiling_shapes) if compiles else None
        if kind:
            parts.append((f"compile ({kind.replace('_', ' ')})", est.compile_s(kind)))
        parts.append(("measure", est.ceiling_measure_s()))
    elif step.kind == "servers":
        starting = [w for w in step.wires if w not in ledger.servers]
        if starting:  # together: the slowest start is what the step costs
            parts.append(("server start", est.get("server_process_s")))
            kinds = [compile_kind(Shape(w, step.batch), ledger.compiled, set()) for w in starting] if compiles else []
            slowest = max((est.compile_s(k) for k in kinds if k), default=0.0)
            if slowest:
                parts.append((f"compile ({', '.join(sorted({k.replace('_', ' ') for k in kinds if k}))})", slowest))
    elif step.kind == "point":
        shape = Shape(step.wire, step.batch)
        running = ledger.servers.get(step.wire)
        if running is None:
            parts.append(("server start", est.get("server_process_s")))
            running = set()
        kind = compile_kind(shape, ledger.compiled, running) if compiles else None
        if kind:
            parts.append((f"compile ({kind.replace('_', ' ')})", est.compile_s(kind)))
        parts.append(("point", est.point_s()))
    total = sum(s for _, s in parts)
    return total, " + ".join(f"{name} {s:.0f}" for name, s in parts) or "nothing"


def simulate(steps: list[Step], est: Estimates, compiles: bool = True) -> list[tuple[Step, float, str]]:
    """Each step's estimate if every step before it ran as estimated (the plan's dry arithmetic)."""
    ledger, out = Ledger(), []
    for step in steps:
        seconds, why = step_estimate(step, est, ledger, compiles)
        out.append((step, seconds, why))
        apply(step, ledger)
    return out


def apply(step: Step, ledger: Ledger) -> None:
    """Record in `ledger` what running `step` compiled and started."""
    if step.kind == "ceiling":
        ledger.ceiling_running = True
        if step.batch not in {s.batch for s in ledger.ceiling_shapes}:
            ledger.ceiling_shapes.clear()  # the ceiling resets Dynamo between batches
        ledger.ceiling_shapes.add(step.shape)
        ledger.compiled.add(step.shape)
    elif step.kind == "servers":
        for wire in step.wires:
            shape = Shape(wire, step.batch)
            ledger.servers.setdefault(wire, set()).add(shape)
            ledger.compiled.add(shape)
    elif step.kind == "point":
        shape = Shape(step.wire, step.batch)
        ledger.servers.setdefault(step.wire, set()).add(shape)
        ledger.compiled.add(shape)


def plan_table(steps: list[Step], est: Estimates, compiles: bool = True) -> tuple[list[str], float, float | None]:
    """The markdown table of `simulate` (run.sh's install and the environment first), its total in seconds
    (the stop margin included) and when the key row is printed (seconds from run.sh's start)."""
    lines = ["| # | step | estimate s | at s | made of |", "|---|---|---|---|---|"]
    t = 0.0
    key_at = None
    for i, (name, seconds) in enumerate([("install (run.sh)", est.get("install_s")),
                                         ("environment", est.get("environment_s"))]):
        t += seconds
        lines.append(f"| {i} | {name} | {seconds:.0f} | {t:.0f} | |")
    for i, (step, seconds, why) in enumerate(simulate(steps, est, compiles), start=2):
        t += seconds
        if step.kind == "key":
            key_at = t
            lines.append(f"| {i} | **{step.label()} printed** | 0 | {t:.0f} | |")
            continue
        lines.append(f"| {i} | {step.label()} | {seconds:.0f} | {t:.0f} | {why} |")
    t += est.get("stop_s")
    lines.append(f"| | stop servers and ceiling, write files | {est.get('stop_s'):.0f} | {t:.0f} | |")
    return lines, t, key_at
