"""click options generated from a configuration's option fields (see common/options.py).

`click_options(cls)` decorates a command with one option per field, in declaration
order; `from_params(cls, params)` builds the config from what click parsed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from common.options import (
    Opt,
    check_bounds,
    check_endpoint,
    default_of,
    flag_of,
    format_bytes,
    options_of,
    parse_bytes,
    parse_int_list,
)


def param_name(field_name: str, attr: str | None = None) -> str:
    return field_name if attr is None else f"{field_name}__{attr}"


def click_options(cls: type) -> Callable[[Callable], Callable]:
    """A decorator adding one click option per option field of `cls` (in declaration order)."""
    decorators = []
    for field, opt in options_of(cls):
        default = default_of(field)
        if opt.parts:
            for attr, part in opt.parts:
                part_default = getattr(default, attr) if default is not None else None
                decls, kwargs = _click_option(part, part.flag or "", param_name(field.name, attr), part_default)
                decorators.append(click.option(*decls, **kwargs))
        else:
            decls, kwargs = _click_option(opt, flag_of(field, opt), field.name, default)
            decorators.append(click.option(*decls, **kwargs))

    def decorate(command: Callable) -> Callable:
        for add in reversed(decorators):  # click lists options in the order decorators are applied, reversed
            command = add(command)
        return command

    return decorate


def _click_option(opt: Opt, flag: str, name: str, default: Any) -> tuple[list[str], dict[str, Any]]:
    kwargs: dict[str, Any] = {"help": opt.help, "default": default, "show_default": True}
    if opt.kind == "bool":
        return [f"{flag}/--no-{flag[2:]}", name], kwargs
    if opt.kind == "strs":
        kwargs.update(multiple=True, default=list(default))
        if opt.endpoint:
            kwargs["type"] = endpoint_type(bind=opt.endpoint == "bind")
    elif opt.kind == "ints":
        kwargs.update(type=_click_types()[0](opt), default=",".join(map(str, default)))
        if not default:
            kwargs["help"] = f"{opt.help}  [default: none]"
            kwargs["show_default"] = False
    elif opt.kind == "bytes":
        # The default as text ('2GiB'): click shows it as given and parses it like a typed value.
        kwargs.update(type=_click_types()[1](opt), default=format_bytes(default))
    elif opt.kind == "path":
        kwargs["type"] = click.Path(exists=opt.exists, dir_okay=opt.dir_okay, file_okay=opt.file_okay, path_type=Path)
    elif opt.choices:
        kwargs["type"] = click.Choice(opt.choices)
    elif opt.kind == "int":
        bounded = opt.min is not None or opt.max is not None
        kwargs["type"] = click.IntRange(_int_or_none(opt.min), _int_or_none(opt.max), min_open=opt.min_open) \
            if bounded else int
    elif opt.kind == "float":
        bounded = opt.min is not None or opt.max is not None
        kwargs["type"] = click.FloatRange(opt.min, opt.max, min_open=opt.min_open) if bounded else float
    shown = opt.show_default if opt.show_default is not None else "none" if default is None else None
    if shown is not None:
        # In the help text itself: click would print a string default in parentheses, and None not at all.
        kwargs["help"] = f"{opt.help}  [default: {shown}]"
        kwargs["show_default"] = False
    return [flag, name], kwargs


@functools.cache
def endpoint_type(bind: bool = False) -> click.ParamType:
    """A click type for ZeroMQ endpoints (common.options.check_endpoint): a bad one is a usage error naming it."""

    class Endpoint(click.ParamType):
        name = "ENDPOINT"

        def convert(self, value: Any, param: Any, ctx: Any) -> str:
            try:
                check_endpoint(value, bind=bind)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
            return value

    return Endpoint()


def _int_or_none(x: float | None) -> int | None:
    return None if x is None else int(x)


def from_params(cls: type, params: dict[str, Any], **extra: Any) -> Any:
    """Build `cls` from click's parsed values, removing the ones it used from `params`.

    ValueError (from the config's own validation) names the option at fault.
    """
    kwargs: dict[str, Any] = dict(extra)
    for field, opt in options_of(cls):
        if opt.parts:
            kwargs[field.name] = _compose(field, opt, params)
        else:
            value = params.pop(field.name)
            kwargs[field.name] = tuple(value) if opt.kind == "strs" else value  # click: multiple -> tuple
    return cls(**kwargs)


def _compose(field: dataclasses.Field, opt: Opt, params: dict[str, Any]) -> Any:
    """A dataclass-valued field from its parts' flags: all of them, or none when the field may be None."""
    given = {attr: params.pop(param_name(field.name, attr)) for attr, _ in opt.parts}
    default = default_of(field)
    if default is not None:
        return dataclasses.replace(default, **given)
    if all(v is not None for v in given.values()):
        return opt.cls(**given)  # type: ignore[misc]
    if any(v is not None for v in given.values()):
        raise ValueError(" and ".join(part.flag or attr for attr, part in opt.parts) + " go together")
    return None


@functools.cache
def _click_types() -> tuple[type, type]:
    """click types for integer lists and byte sizes (defined on first use: click is not imported before)."""
    class IntList(click.ParamType):
        name = "N[,N...]"

        def __init__(self, opt: Opt):
            self.opt = opt

        def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
            if isinstance(value, tuple):
                return value
            try:
                items = parse_int_list(value)
                for item in items:
                    check_bounds(self.opt, item)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
            return items

    class ByteSize(click.ParamType):
        name = "BYTES"

        def __init__(self, opt: Opt):
            self.opt = opt

        def convert(self, value: Any, param: Any, ctx: Any) -> int:
            try:
                n = parse_bytes(value)
                check_bounds(self.opt, n)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
            return n

    return IntList, ByteSize
