"""What a sweep runs: its axes (sweeps/axes.py), from a TOML file and flags, expanded into a grid of points.

    [server]
    max_batch_size = [0, 8]          # a list: both values
    batch_timeout_us = "500:2000:500"  # 500, 1000, 1500, 2000
    precision = "fp32"               # fixed

On the command line the same as `--axis NAME=VALUES` (VALUES a comma list or
start:end:step). Flags override the file, which overrides the machine's
defaults; an empty list is an error, not the defaults.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.config import ClientConfig, CurveKeys
from server.config import RELOADABLE, ServerConfig
from sweeps.axes import (
    CLIENT_AXES,
    SERVER_AXES,
    checked_values,
    option_of,
    parse_text,
    parse_toml_value,
    resolve,
    show_value,
)

SWEEP_KEYS = ("repeats", "mode", "results_dir", "timeout_s", "resume")
MODES = ("fixed", "peak")
# Innermost axes, in this order of preference: the x of the throughput-latency curves.
CURVE_AXES = ("request_rate", "concurrency")


# -- the plan ------------------------------------------------------------------------


# The settings a record's "config" names first, in this order, and every label shows (b8 compile=off c1 w1):
# the seed's grid. The server's among them are, with --server, the running server's own unless the sweep sets them.
NAMED = ("batch_size", "compile", "concurrency", "num_workers", "image_size", "device", "model", "num_iters",
         "duration_s")
NAMED_SERVER = ("compile", "num_workers", "device", "model")
SUMMARY_SETTINGS = ("batch_size", "compile", "concurrency", "num_workers")


def _named(name: str) -> property:
    return property(lambda self: self.settings().get(name), doc=f"The point's {name}; None where the grid has none.")


@dataclass(frozen=True)
class Point:
    """One configuration of the grid: the server's settings and the client's (all repeats share them)."""

    server: tuple[tuple[str, Any], ...]
    client: tuple[tuple[str, Any], ...]
    varying: tuple[str, ...] = ()  # the axes with more than one value: the label names them

    def settings(self) -> dict[str, Any]:
        return {**dict(self.server), **dict(self.client)}

    batch_size = _named("batch_size")
    compile = _named("compile")
    concurrency = _named("concurrency")
    num_workers = _named("num_workers")
    device = _named("device")

    @property
    def server_extra(self) -> tuple[tuple[str, Any], ...]:
        """The server settings besides the named ones: axes and fixed settings of the grid."""
        return tuple((k, v) for k, v in self.server if k not in NAMED_SERVER)

    @property
    def client_extra(self) -> tuple[tuple[str, Any], ...]:
        return tuple((k, v) for k, v in self.client if k not in NAMED)

    @property
    def key(self) -> str:
        """Identifies the configuration across sweeps (for --resume): the named settings and the extras."""
        settings = self.settings()
        d: dict[str, Any] = {k: settings.get(k) for k in NAMED}
        for name, extra in (("server_extra", self.server_extra), ("client_extra", self.client_extra)):
            if extra:
                d[name] = dict(extra)
        return json.dumps(d, sort_keys=True, default=list)

    def _shown_values(self) -> dict[str, str]:
        settings = self.settings()
        return {k: show_value(settings[k]) for k in self.varying if k not in SUMMARY_SETTINGS}

    def _named_label(self, sep: str, equals: str) -> str:
        compile_ = "on" if self.compile else "off"
        return f"b{self.batch_size}{sep}compile{equals}{compile_}{sep}c{self.concurrency}{sep}w{self.num_workers}"

    @property
    def label(self) -> str:
        return self._named_label(" ", "=") + "".join(f" {k}={v}" for k, v in self._shown_values().items())

    @property
    def slug(self) -> str:
        """The label as a file name."""
        shown = "".join(f"-{k}_{v.replace('/', '_')}" for k, v in self._shown_values().items())
        return self._named_label("-", "_") + shown

    def record_config(self) -> dict[str, Any]:
        """A record's "config": the named settings, then the extras, flat."""
        settings = self.settings()
        return {**{k: settings.get(k) for k in NAMED},
                **{k: list(v) if isinstance(v, tuple) else v for k, v in (*self.server_extra, *self.client_extra)}}

    def server_config(self) -> ServerConfig:
        """The server this point runs against (ValueError if the grid asks for an invalid one)."""
        # Info: the server's start-up, reloads and shutdown in the sweep's logs/ (a few lines per server).
        return ServerConfig(**{"log_level": "info", **dict(self.server)})

    def server_argv(self) -> list[str]:
        return self.server_config().to_argv()

    def client_config(self, servers: tuple[str, ...], timeout_s: float, profile_dir: Path | None = None,
                      curve: CurveKeys | None = None) -> ClientConfig:
        """The client run of one repeat (ValueError if the grid asks for an invalid one)."""
        timeouts = {"timeout_s": min(timeout_s, 120.0), "warmup_timeout_s": timeout_s}
        return ClientConfig(servers=servers, profile_dir=profile_dir, curve=curve,
                            **{**timeouts, **dict(self.client)})

    def reload_settings(self) -> dict[str, Any]:
        """The point's server settings a CONTROL reload can apply to a --server endpoint (sweeps/remote.py)."""
        wanted = self.server_config().to_json()
        return {name: wanted[name] for name, _ in self.server if name in RELOADABLE}


@dataclass(frozen=True)
class SweepPlan:
    server: dict[str, tuple[Any, ...]]  # field -> values, in declaration order
    client: dict[str, tuple[Any, ...]]
    repeats: int = 1
    mode: str = "fixed"
    peak: dict[str, Any] = dataclasses.field(default_factory=dict)  # PeakSearch's fields (client.peak.PEAK_KEYS)
    results_dir: Path = Path("results")  # the parent of the sweep's own folder
    timeout_s: float = 600.0
    resume: Path | None = None  # an earlier sweep's folder (or its sweep-*.json) to go on with

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
    from client.peak import PEAK_KEYS  # with numpy: when a plan is built, not for --help

    sections = {"sweep": SWEEP_KEYS, "peak": PEAK_KEYS}
    unknown = set(doc) - {*sections, "server", "client"}
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(sorted(unknown))}; sections: sweep, peak, server, client")
    for section, allowed in sections.items():
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
    resume = sweep.get("resume")
    if resume is not None and not isinstance(resume, (str, Path)):
        raise ValueError(f"[sweep] resume: give the folder of the sweep to go on with, got {resume!r}")
    repeats = sweep.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"[sweep] repeats: expected a positive integer, got {repeats!r}")
    order = {"server": list(SERVER_AXES), "client": list(CLIENT_AXES)}
    ordered = {side: dict(sorted(axes.items(), key=lambda kv: order[side].index(kv[0]))) for side, axes in sides.items()}
    return SweepPlan(
        server=ordered["server"], client=ordered["client"], repeats=repeats, mode=mode, peak=dict(doc.get("peak", {})),
        results_dir=Path(sweep.get("results_dir", "results")), timeout_s=float(sweep.get("timeout_s", 600.0)),
        resume=Path(resume) if resume is not None else None,
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
    resume: Path | None = None, axes: tuple[str, ...] = (), find_peak: bool = False, slo_ms: float | None = None,
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
    for key, value in (("repeats", repeats), ("results_dir", results_dir), ("timeout_s", timeout_s),
                       ("resume", resume)):
        if value is not None:
            doc["sweep"][key] = value
    if find_peak:
        doc["sweep"]["mode"] = "peak"
    for key, value in (("slo_ms", slo_ms), ("percentile", percentile)):
        if value is not None:
            doc["peak"][key] = value
    for side, table in axis_flags(axes).items():
        doc[side].update(table)
    return {section: table for section, table in doc.items() if table}
