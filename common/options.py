"""Options declared once, as dataclass fields, with everything else derived from them.

A configuration class (server.config.ServerConfig, client.config.ClientConfig)
declares each option as a field made by `option()`: its flag, help text, kind,
choices and range, and whether a CONTROL reload may change it. From those
fields come the argv that recreates a config (`to_argv`), the validation every
construction goes through (`check_fields`, called from `__post_init__`), a
JSON-able view (`to_json`, read back by `from_json`) and reload settings applied with the same rules
(`apply_settings`); common/click_options.py makes the click options from them.

Nothing here imports click, so building a config costs nothing heavy.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("int", "float", "str", "bool", "path", "ints", "strs", "bytes", "composite")
BYTE_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
              "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
IPC_PATH_MAX = 107  # sun_path holds 108 bytes, the last one NUL


@dataclass(frozen=True)
class Opt:
    """How one configuration field appears on the command line and what values it takes."""

    help: str
    kind: str
    flag: str | None = None  # default: --field-name (booleans: --field-name/--no-field-name)
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    reloadable: bool = False
    dir_okay: bool = True  # paths
    file_okay: bool = True
    exists: bool = False  # checked by the CLI only: a config may describe another machine's files
    parts: tuple[tuple[str, Opt], ...] = ()  # a dataclass-valued field: one flag per attribute
    cls: type | None = None  # the class `parts` build when the field's default is None
    show_default: str | None = None
    endpoint: str | None = None  # strs of ZeroMQ endpoints: "connect" or "bind" (check_endpoint)


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A dataclass field carrying an `Opt` in its metadata."""
    opt = Opt(**spec)
    if opt.kind not in KINDS:
        raise TypeError(f"unknown option kind {opt.kind!r}")
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"option": opt})


def composite(
    default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
    parts: tuple[tuple[str, Opt], ...], cls: type | None = None, help: str = "",
) -> Any:
    """A dataclass-valued field set by one flag per attribute in `parts` (each an `Opt` with its flag).

    With a default of None the field is None unless every part is given (`cls` builds it then).
    """
    opt = Opt(help=help, kind="composite", parts=parts, cls=cls)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"option": opt})


def options_of(cls_or_config: Any) -> list[tuple[dataclasses.Field, Opt]]:
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls_or_config) if "option" in f.metadata]


def flag_of(field: dataclasses.Field, opt: Opt) -> str:
    return opt.flag or "--" + field.name.replace("_", "-")


def default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def reloadable(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f, opt in options_of(cls) if opt.reloadable)


# -- parsing text ----------------------------------------------------------------


def parse_int_list(text: str) -> tuple[int, ...]:
    """'1, 32,64' -> (1, 32, 64); empty items are skipped. ValueError if an item is not an integer."""
    items = [item.strip() for item in text.split(",")]
    try:
        return tuple(int(item) for item in items if item)
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def parse_bytes(text: str | int) -> int:
    """'2GiB' -> 2147483648, '512MiB', '1000000', '1.5GB'. ValueError on anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(text))
    if not match or (match.group(2) or "") not in BYTE_UNITS:
        raise ValueError(f"expected a byte size such as 1048576, 512MiB or 2GiB, got {text!r}")
    value = float(match.group(1)) * BYTE_UNITS[match.group(2) or ""]
    if value != int(value):
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


def format_bytes(n: int) -> str:
    """The exact size in the largest binary unit that divides it: 2147483648 -> '2GiB', 1000 -> '1000'."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n and n % BYTE_UNITS[unit] == 0:
            return f"{n // BYTE_UNITS[unit]}{unit}"
    return str(n)


def check_endpoint(endpoint: str, *, bind: bool) -> None:
    """A ZeroMQ endpoint this project can use: tcp://HOST:PORT, ipc://PATH or inproc://NAME.

    Binding also accepts a wildcard port (`*`, `!` or a `[low-high]` range, as libzmq does).
    """
    if not isinstance(endpoint, str):
        raise ValueError(f"an endpoint is a string, got {endpoint!r}")
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest:
        raise ValueError(f"{endpoint!r} is not tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    if scheme == "ipc" and len(rest.encode()) > IPC_PATH_MAX:
        raise ValueError(f"ipc path of {endpoint!r} is longer than {IPC_PATH_MAX} bytes")
    if scheme != "tcp":
        return
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise ValueError(f"{endpoint!r} has no HOST:PORT")
    if bind and (port in ("*", "!") or re.fullmatch(r"!?\[\d*-\d*\]", port)):
        return
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} of {endpoint!r} is not a number from 1 to 65535")


def check_writable_file(path: Path) -> None:
    """`path` can be created or replaced: not a directory, its directory exists (made if missing) and takes files.

    For output options, checked before any work so that a typo cannot cost a finished run.
    """
    import os

    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write {path}: {exc.strerror or exc}") from None


# -- validation ------------------------------------------------------------------


def check_fields(config: Any) -> None:
    """Check (and normalise: lists to tuples, str to Path, int to float) every option field of a frozen config."""
    for field, opt in options_of(config):
        value = getattr(config, field.name)
        if opt.parts:
            _check_parts(config, field, opt, value)
            continue
        try:
            normalised = _checked(opt, value, default_of(field))
        except ValueError as exc:
            raise ValueError(f"{field.name} ({flag_of(field, opt)}): {exc}") from None
        if normalised is not value:
            object.__setattr__(config, field.name, normalised)


def _check_parts(config: Any, field: dataclasses.Field, opt: Opt, value: Any) -> None:
    if value is None and default_of(field) is None:
        return
    for attr, part in opt.parts:
        if not hasattr(value, attr):
            raise ValueError(f"{field.name}: expected an object with {attr!r}, got {value!r}")
        try:
            _checked(part, getattr(value, attr), None)
        except ValueError as exc:
            raise ValueError(f"{field.name}.{attr} ({part.flag}): {exc}") from None


def _checked(opt: Opt, value: Any, default: Any) -> Any:
    """`value` as this option holds it, or ValueError saying what is wrong with it."""
    if value is None:
        if default is None:
            return None
        raise ValueError("must be given")
    kind = opt.kind
    if kind in ("int", "bytes"):
        _need(isinstance(value, int) and not isinstance(value, bool), "an integer", value)
    elif kind == "float":
        _need(isinstance(value, (int, float)) and not isinstance(value, bool), "a number", value)
        value = float(value) if not isinstance(value, float) else value
    elif kind == "bool":
        _need(isinstance(value, bool), "true or false", value)
    elif kind == "str":
        _need(isinstance(value, str), "a string", value)
    elif kind == "path":
        _need(isinstance(value, (str, Path)), "a path", value)
        value = Path(value) if isinstance(value, str) else value
    else:  # ints, strs
        want = str if kind == "strs" else int
        _need(
            isinstance(value, (list, tuple))
            and all(isinstance(v, want) and not isinstance(v, bool) for v in value),
            f"a list of {'strings' if kind == 'strs' else 'integers'}", value,
        )
        value = tuple(value) if isinstance(value, list) else value
    for item in value if kind in ("ints", "strs") else (value,):
        check_bounds(opt, item)
        if opt.endpoint:
            check_endpoint(item, bind=opt.endpoint == "bind")
    return value


def _need(ok: bool, what: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"expected {what}, got {value!r}")


def check_bounds(opt: Opt, value: Any) -> None:
    if opt.choices and value not in opt.choices:
        raise ValueError(f"expected one of {', '.join(opt.choices)}, got {value!r}")
    low_ok = opt.min is None or (value > opt.min if opt.min_open else value >= opt.min)
    high_ok = opt.max is None or value <= opt.max
    if not (low_ok and high_ok):
        low = "" if opt.min is None else f"{'>' if opt.min_open else '>='} {_number(opt.min)}"
        high = "" if opt.max is None else f"<= {_number(opt.max)}"
        raise ValueError(f"must be {' and '.join(b for b in (low, high) if b)}, got {value!r}")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def apply_settings(config: Any, settings: Mapping[str, Any]) -> Any:
    """`config` with reloadable `settings` (name -> value, as decoded from the wire) applied and validated.

    ValueError names the setting: unknown, not reloadable, wrong type or out of range.
    """
    fields = {f.name: opt for f, opt in options_of(config)}
    allowed = ", ".join(name for name, opt in fields.items() if opt.reloadable)
    for name in settings:
        if name not in fields:
            raise ValueError(f"unknown setting {name!r}: it cannot be reloaded; reloadable: {allowed}")
        if not fields[name].reloadable:
            raise ValueError(f"setting {name!r} cannot be reloaded; reloadable: {allowed}")
    return dataclasses.replace(config, **settings)


# -- argv and JSON -----------------------------------------------------------------


def to_argv(config: Any) -> list[str]:
    """The command-line arguments that recreate `config` (options left at their default are omitted)."""
    argv: list[str] = []
    for field, opt in options_of(config):
        value, default = getattr(config, field.name), default_of(field)
        if opt.parts:
            for attr, part in opt.parts:
                part_default = getattr(default, attr) if default is not None else None
                if value is not None and getattr(value, attr) != part_default:
                    argv += _argv_item(part, part.flag or "", getattr(value, attr))
        elif value != default:
            argv += _argv_item(opt, flag_of(field, opt), value)
    return argv


def _argv_item(opt: Opt, flag: str, value: Any) -> list[str]:
    if opt.kind == "bool":
        return [flag if value else "--no-" + flag[2:]]
    if opt.kind == "strs":
        return [arg for item in value for arg in (flag, item)]
    if opt.kind == "ints":
        return [flag, ",".join(map(str, value))]
    if opt.kind == "bytes":
        return [flag, format_bytes(value)]
    if opt.kind == "float":
        return [flag, repr(value)]
    return [flag, str(value)]


def to_json(config: Any) -> dict[str, Any]:
    """Every option field by name, as JSON-able values (paths as strings, tuples as lists)."""
    return {f.name: _jsonable(getattr(config, f.name)) for f, _ in options_of(config)}


def from_json(cls: type, data: Mapping[str, Any]) -> Any:
    """The configuration that `to_json` (or a dataclasses.asdict of it) recorded, checked as any construction is.

    Names `cls` does not declare are ignored, and so is a composite recorded as anything but a dict (a
    client's CURVE keys are recorded as a flag). ValueError when the values do not make a valid configuration.
    """
    kwargs: dict[str, Any] = {}
    for field, opt in options_of(cls):
        if field.name not in data:
            continue
        value = data[field.name]
        if opt.kind == "composite":
            if not isinstance(value, Mapping):
                continue
            try:
                value = (opt.cls or type(default_of(field)))(**value)
            except TypeError as exc:
                raise ValueError(f"{field.name}: {exc}") from None
        elif opt.kind == "path" and value is not None:
            value = Path(value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
