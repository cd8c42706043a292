"""Sweep axes: which server and client options can be swept, and their values as a file or a flag writes them.

Every server option (server.config.ServerConfig) and every client option
(client.config.ClientConfig) whose value is a number, a string, a switch or a
list of integers is an axis; the axes are derived from the fields' metadata, so
an option added there is an axis here. An axis takes one value (fixed), a list,
or, for numbers, `start:end:step` (end included). On the command line an
integer-list option's items are joined by '/', as `warmup_batch_sizes=1/8,1`.
A name is a field name, or `server.NAME` / `client.NAME` where both sides have it.
"""

from __future__ import annotations

import math
from typing import Any

from client.config import ClientConfig
from common.options import Opt, check_bounds, options_of, parse_bytes
from server.config import ServerConfig

AXIS_KINDS = ("int", "float", "str", "bool", "bytes", "ints")
NUMERIC_KINDS = ("int", "float", "bytes")
# Set by the sweep itself for every point: where the servers are and where files go.
SWEEP_OWNED = frozenset({"servers", "trace_file", "ready_file", "bind", "curve", "curve_dir", "model_dir", "limits"})
MAX_AXIS_VALUES = 1000
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


def show_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return "/".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)
