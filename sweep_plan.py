"""What a sweep runs: its axes, from a TOML file and flags, expanded into a grid of points.

Every server option (server.config.ServerConfig) and every client option
(client.config.ClientConfig) whose value is a number, a string, a switch or a
list of integers is a sweep axis; the axes are derived from the fields'
metadata, so an option added there is an axis here. An axis takes one value
(fixed), a list, or, for numbers, `start:end:step` (end included):

    [server]
    max_batch_size = [0, 8]          # a list: both values
    batch_timeout_us = "500:2000:500"  # 500, 1000, 1500, 2000
    precision = "fp32"               # fixed

On the command line the same as `--axis NAME=VALUES` (VALUES a comma list or
start:end:step; an integer-list option's items joined by '/', as
`warmup_batch_sizes=1/8,1`). A name is a field name, or `server.NAME` /
`client.NAME` where both sides have it. Flags override the file, which
overrides the machine's defaults; an empty list is an error, not the defaults.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.config import ClientConfig
from common.options import Opt, check_bounds, options_of, parse_bytes
from server.config import ServerConfig

AXIS_KINDS = ("int", "float", "str", "bool", "bytes", "ints")
NUMERIC_KINDS = ("int", "float", "bytes")
# Set by the sweep itself for every point: where the servers are and where files go.
SWEEP_OWNED = frozenset({"servers", "trace_file", "ready_file", "bind", "curve", "curve_dir", "model_dir", "limits"})
MAX_AXIS_VALUES = 1000
SECTIONS = {"sweep": ("repeats", "mode", "results_dir", "timeout_s", "resume"),
            "peak": ("slo_ms", "percentile", "tolerance", "probe_requests")}
MODES = ("fixed", "peak")
# Innermost axes, in this order of preference: the x of the throughput-latency curves.
CURVE_AXES = ("request_rate", "concurrency")


def axis_options(cls: type) -> dict[str, Opt]:
    """The fields of a configuration class that can be swept, by name."""
    return {f.name: opt for f, opt in options_of(cls) if opt.kind in AXIS_KINDS and f.name not in SWEEP_OWNED}


SERVER_AXES = axis_options(ServerConfig)
CLIENT_AXES = axis_options(ClientConfig)


def resolve(name: str) -> tuple[str, str]:
    """`name` as (side, field): side "server" or "client". ValueError for an unknown or ambiguous name."""
    side, dot, field = name.partition(".")
    if dot:
        if side not in ("server", "client") or field not in (SERVER_AXES if side == "server" else CLIENT_AXES):
            raise ValueError(f"unknown axis {name!r}")
        return side, field
    sides = [s for s, axes in (("server", SERVER_AXES), ("client", CLIENT_AXES)) if name in axes]
    if not sides:
        known = ", ".join(sorted({*SERVER_AXES, *CLIENT_AXES}))
        raise ValueError(f"unknown axis {name!r}; axes: {known}")
    if len(sides) > 1:
        raise ValueError(f"axis {name!r} is both a server and a client option: write server.{name} or client.{name}")
    return sides[0], name


def option_of(side: str, field: str) -> Opt:
    return (SERVER_AXES if side == "server" else CLIENT_AXES)[field]


# -- values ------------------------------------------------------------------------


def parse_range(opt: Opt, text: str) -> tuple[Any, ...]:
    """'start:end:step' -> start, start+step, ... up to end inclusive (ints stay ints)."""
    parts = [p.strip() for p in text.split(":")]
    if len(parts) != 3:
        raise ValueError(f"expected start:end:step, got {text!r}")
    numbers = [_scalar(opt, p) for p in parts]
    start, end, step = numbers
    if not step > 0 or end < start:
        raise ValueError(f"{text!r}: step must be positive and end at least start")
    count = math.floor((end - start) / step * (1 + 1e-12)) + 1
    if count > MAX_AXIS_VALUES:
        raise ValueError(f"{text!r} has {count} values, more than {MAX_AXIS_VALUES}")
    values = [start + i * step for i in range(count)]
    if opt.kind == "float":
        values = [round(v, 12) for v in values]  # 0.1 + 2 * 0.1 reads as 0.3
    return tuple(values)


def _scalar(opt: Opt, text: str) -> Any:
    """One value written as text, in the option's kind."""
    text = text.strip()
    if opt.kind == "int":
        return int(text)
    if opt.kind == "float":
        return float(text)
    if opt.kind == "bytes":
        return parse_bytes(text)
    if opt.kind == "bool":
        lowered = text.lower()
        if lowered in ("on", "true", "yes", "1"):
            return True
        if lowered in ("off", "false", "no", "0"):
            return False
        raise ValueError(f"expected on or off, got {text!r}")
    if opt.kind == "ints":
        return tuple(int(item) for item in text.split("/") if item.strip())
    return text


def parse_text(opt: Opt, text: str) -> tuple[Any, ...]:
    """An axis written on the command line: a comma list, start:end:step (numbers), or 'both' (switches)."""
    if opt.kind in NUMERIC_KINDS and text.count(":") == 2:
        return parse_range(opt, text)
    if opt.kind == "bool" and text.strip().lower() == "both":
        return (False, True)
    items = [item for item in text.split(",") if item.strip()]
    try:
        return tuple(_scalar(opt, item) for item in items)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def parse_toml_value(opt: Opt, value: Any) -> tuple[Any, ...]:
    """An axis as a TOML file writes it: a scalar, a list, or a 'start:end:step' string (numbers)."""
    if isinstance(value, str) and opt.kind != "str":  # a range, 'both', a comma list, '2GiB'
        return parse_text(opt, value)
    if isinstance(value, list):
        if opt.kind == "ints" and value and not isinstance(value[0], list):
            return (tuple(value),)  # one integer list, not a list of them
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if opt.kind == "ints" and isinstance(value, int):
        return ((value,),)
    return (value,)


def checked_values(name: str, opt: Opt, values: tuple[Any, ...]) -> tuple[Any, ...]:
    """The values of one axis, each of the option's kind and in its range: ValueError naming the axis."""
    name = f"{name} ({opt.flag or '--' + name.replace('_', '-')})"
    if not values:
        raise ValueError(f"axis {name}: an empty list of values (an empty axis is an error, not the defaults)")
    out = []
    for value in values:
        if value is None:  # an optional option left unset (e.g. num_iters when a duration is given)
            out.append(value)
            continue
        if opt.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        want = {"int": int, "bytes": int, "float": float, "str": str, "bool": bool, "ints": tuple}[opt.kind]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ValueError(f"axis {name}: expected {opt.kind} values, got {value!r}")
        try:
            for item in value if opt.kind == "ints" else (value,):
                check_bounds(opt, item)
        except ValueError as exc:
            raise ValueError(f"axis {name}: {exc}") from None
        out.append(value)
    return tuple(dict.fromkeys(out))  # a value given twice is one point, not two


# -- the plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One configuration of the grid: the server's settings and the client's (all repeats share them)."""

    server: tuple[tuple[str, Any], ...]
    client: tuple[tuple[str, Any], ...]
    varying: tuple[str, ...] = ()  # the axes with more than one value, for labels

    def settings(self) -> dict[str, Any]:
        return {**dict(self.server), **dict(self.client)}

    @property
    def key(self) -> str:
        """Identifies the configuration across sweeps (for --resume and infer-compare)."""
        return json.dumps({"server": _jsonable(dict(self.server)), "client": _jsonable(dict(self.client))},
                          sort_keys=True)

    @property
    def label(self) -> str:
        settings = self.settings()
        shown = [f"{name}={show_value(settings[name])}" for name in self.varying]
        return " ".join(shown) or "the configuration"

    def config_dict(self) -> dict[str, Any]:
        """Every setting of the point's server and client, defaults resolved, flat (a sweep record's "config")."""
        server = {k: v for k, v in self.server_config().to_json().items() if k not in SWEEP_OWNED}
        client = {k: v for k, v in self.client_config(("tcp://127.0.0.1:5555",), 600.0).to_dict().items()
                  if k not in SWEEP_OWNED}
        return {**server, **client}

    def server_config(self) -> ServerConfig:
        """The server this point runs against (ValueError if the grid asks for an invalid one)."""
        return ServerConfig(**{"log_level": "warning", **dict(self.server)})

    def client_config(self, servers: tuple[str, ...], timeout_s: float) -> ClientConfig:
        """The client run of one repeat (ValueError if the grid asks for an invalid one)."""
        timeouts = {"timeout_s": min(timeout_s, 120.0), "warmup_timeout_s": timeout_s}
        return ClientConfig(servers=servers, **{**timeouts, **dict(self.client)})


def show_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return "/".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class SweepPlan:
    server: dict[str, tuple[Any, ...]]  # field -> values, in declaration order
    client: dict[str, tuple[Any, ...]]
    repeats: int = 1
    mode: str = "fixed"
    peak: dict[str, Any] = dataclasses.field(default_factory=dict)  # slo_ms, percentile, tolerance, probe_requests
    results_dir: Path = Path("results")
    timeout_s: float = 600.0
    resume: bool = False

    def points(self) -> list[Point]:
        """Every combination: server axes outermost (so points sharing a server are adjacent), curve axes innermost."""
        client = sorted(self.client.items(), key=lambda kv: CURVE_AXES[::-1].index(kv[0]) + 1
                        if kv[0] in CURVE_AXES else 0)
        axes = [("server", k, v) for k, v in self.server.items()] + [("client", k, v) for k, v in client]
        varying = tuple(k for _, k, v in axes if len(v) > 1)
        points = []
        for combo in itertools.product(*(values for _, _, values in axes)):
            server = tuple((k, v) for (side, k, _), v in zip(axes, combo) if side == "server")
            client_items = tuple((k, v) for (side, k, _), v in zip(axes, combo) if side == "client")
            points.append(Point(server, client_items, varying))
        return points

    @property
    def curve_axis(self) -> str | None:
        """The axis the throughput-latency curves run along: request rate, else concurrency, when swept."""
        return next((a for a in CURVE_AXES if len(self.client.get(a, ())) > 1), None)


def merge_docs(*docs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Later documents override earlier ones, key by key within each section."""
    out: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for section, table in doc.items():
            if not isinstance(table, Mapping):
                raise ValueError(f"[{section}] must be a table of settings, got {table!r}")
            out.setdefault(section, {}).update(table)
    return out


def plan_from_doc(doc: Mapping[str, Any]) -> SweepPlan:
    """A plan from a sweep document ({"sweep": ..., "peak": ..., "server": ..., "client": ...}), validated."""
    unknown = set(doc) - {*SECTIONS, "server", "client"}
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(sorted(unknown))}; sections: sweep, peak, server, client")
    for section, allowed in SECTIONS.items():
        extra = set(doc.get(section, {})) - set(allowed)
        if extra:
            raise ValueError(f"[{section}]: unknown key(s) {', '.join(sorted(extra))}; known: {', '.join(allowed)}")
    sides: dict[str, dict[str, tuple[Any, ...]]] = {"server": {}, "client": {}}
    for side in ("server", "client"):
        for name, value in doc.get(side, {}).items():
            where, field = resolve(name if "." in name else f"{side}.{name}")
            opt = option_of(where, field)
            values = parse_toml_value(opt, value) if not isinstance(value, tuple) else value
            sides[where][field] = checked_values(field, opt, values)
    sweep = doc.get("sweep", {})
    mode = sweep.get("mode", "fixed")
    if mode not in MODES:
        raise ValueError(f"[sweep] mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "peak" and "request_rate" in sides["client"]:
        raise ValueError("request_rate: in peak mode the search chooses the rates; leave it out of the axes")
    if mode == "peak" and "slo_ms" not in doc.get("peak", {}):
        raise ValueError("[peak] slo_ms: peak mode needs a latency objective")
    repeats = sweep.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"[sweep] repeats: expected a positive integer, got {repeats!r}")
    order = {"server": list(SERVER_AXES), "client": list(CLIENT_AXES)}
    ordered = {side: dict(sorted(axes.items(), key=lambda kv: order[side].index(kv[0]))) for side, axes in sides.items()}
    return SweepPlan(
        server=ordered["server"], client=ordered["client"], repeats=repeats, mode=mode, peak=dict(doc.get("peak", {})),
        results_dir=Path(sweep.get("results_dir", "results")), timeout_s=float(sweep.get("timeout_s", 600.0)),
        resume=bool(sweep.get("resume", False)),
    )


def read_toml(path: Path) -> dict[str, Any]:
    """A sweep file (stdlib tomllib): ValueError with the file's name for a missing or malformed one."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ValueError("sweep files need Python 3.11 or later (tomllib)") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from None


def axis_flags(assignments: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
    """`--axis NAME=VALUES` flags as a sweep document's server and client sections (values parsed)."""
    doc: dict[str, dict[str, Any]] = {}
    for item in assignments:
        name, eq, text = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"--axis {item!r}: expected NAME=VALUES")
        side, field = resolve(name.strip())
        doc.setdefault(side, {})[field] = checked_values(field, option_of(side, field),
                                                         parse_text(option_of(side, field), text))
    return doc


def build_plan(defaults: Mapping[str, Any], file_doc: Mapping[str, Any] | None,
               flag_doc: Mapping[str, Any]) -> SweepPlan:
    """Defaults, then the file, then the flags; a default number of requests yields to a given duration."""
    given = merge_docs(file_doc or {}, flag_doc)
    client_given = given.get("client", {})
    base = {section: dict(table) for section, table in defaults.items()}
    if "duration_s" in client_given or "window_s" in client_given:
        base.get("client", {}).pop("num_iters", None)
    return plan_from_doc(merge_docs(base, given))


def flags_doc(
    *, batch_sizes: str | None = None, compile_: str | None = None, concurrency: str | None = None,
    num_workers: str | None = None, image_size: int | None = None, device: str | None = None,
    model: str | None = None, num_iters: int | None = None, duration_s: float | None = None,
    repeats: int | None = None, results_dir: Path | None = None, timeout_s: float | None = None,
    resume: bool = False, axes: tuple[str, ...] = (), find_peak: bool = False, slo_ms: float | None = None,
    percentile: float | None = None,
) -> dict[str, dict[str, Any]]:
    """sweep.py's flags as a sweep document: only those given, so they override the file and nothing else."""
    named = {"batch_size": batch_sizes, "concurrency": concurrency}
    server_named = {"num_workers": num_workers, "compile": compile_}  # compile: on, off or both
    doc: dict[str, dict[str, Any]] = {"server": {}, "client": {}, "sweep": {}, "peak": {}}
    for field, text in named.items():
        if text is not None:
            doc["client"][field] = checked_values(field, CLIENT_AXES[field], parse_text(CLIENT_AXES[field], text))
    for field, text in server_named.items():
        if text is not None:
            doc["server"][field] = checked_values(field, SERVER_AXES[field], parse_text(SERVER_AXES[field], text))
    for side, field, value in (("client", "image_size", image_size), ("server", "device", device),
                               ("server", "model", model), ("client", "num_iters", num_iters),
                               ("client", "duration_s", duration_s)):
        if value is not None:
            doc[side][field] = (value,)
    if duration_s is not None:
        doc["client"]["num_iters"] = (None,)
    if num_iters is not None:
        doc["client"]["duration_s"] = (None,)
    for key, value in (("repeats", repeats), ("results_dir", results_dir), ("timeout_s", timeout_s)):
        if value is not None:
            doc["sweep"][key] = value
    if resume:
        doc["sweep"]["resume"] = True
    if find_peak:
        doc["sweep"]["mode"] = "peak"
    for key, value in (("slo_ms", slo_ms), ("percentile", percentile)):
        if value is not None:
            doc["peak"][key] = value
    for side, table in axis_flags(axes).items():
        doc[side].update(table)
    return {section: table for section, table in doc.items() if table}
