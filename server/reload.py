"""A CONTROL reload that cannot leave the endpoint dead: the settings checked first, the old ones kept.

A reload re-executes the server (server/app.py): same pid, a fresh interpreter,
the new settings. They were checked as the command line checks them before the
reload was accepted, but some failures only show when the model loads or warms
up (a checkpoint that does not unpickle, a warm-up the device has no memory
for). So the accepting process hands the re-executed one, in its environment,
the settings asked for and the argv of the configuration it ran; if that
process fails before it is ready, it re-executes once more with the previous
argv, on the same endpoints, and that process reports the failed reload (with
its reason) in INFO and STATS as `last_reload`. A process that is killed or
crashes while starting (the kernel's OOM killer, a segfault) cannot fall back:
nothing of it is left to do so.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from common.protocol import ErrorCode, ProtocolError, ReloadOutcome

log = logging.getLogger("infer.server")

PENDING_ENV = "INFER_SERVER_RELOAD"  # JSON: the reload this process is to apply, and what to fall back to
OUTCOME_ENV = "INFER_SERVER_RELOAD_OUTCOME"  # JSON ReloadOutcome: set for the process that fell back
MAX_REASON = 500  # characters of a failed reload's reason

_pending: dict[str, Any] | None = None  # this process's pending reload, until it is ready
_outcome: dict[str, Any] | None = None  # a fallback process's failed outcome


def request(config: Any, endpoints: list[str], settings: Mapping[str, Any], instance: str) -> Any:
    """The configuration a CONTROL reload asks for, checked before anything is accepted.

    An invalid setting is ProtocolError BAD_REQUEST naming it (the server goes on unchanged).
    Otherwise the environment the re-executed process inherits says what was asked and how
    to come back: the current configuration, bound to the endpoints actually bound (a
    wildcard port, tcp://host:*, would otherwise come back on another port).
    """
    current = config.replace(bind=tuple(endpoints))
    try:
        new = type(config).from_settings(current, settings)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"reload refused: {exc}") from None
    pending = {"settings": dict(settings), "accepted_by": instance, "previous_argv": current.to_argv()}
    os.environ[PENDING_ENV] = json.dumps(pending, default=str)
    return new


def take_from_environment() -> None:
    """At start-up: remember (and remove from the environment) what a reload passed this process."""
    global _pending, _outcome
    _pending = _load(os.environ.pop(PENDING_ENV, None))
    _outcome = _load(os.environ.pop(OUTCOME_ENV, None))


def _load(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("ignoring an unreadable reload record in the environment")
        return None
    return value if isinstance(value, dict) else None


def ready() -> dict[str, Any] | None:
    """This process is ready: its `last_reload` (nil if it was not started by a reload). From here
    on a failure is this process's own, not the reload's: nothing falls back any more."""
    global _pending
    pending, _pending = _pending, None
    if _outcome is not None:
        return _outcome
    if pending is None:
        return None
    return ReloadOutcome("applied", pending.get("settings") or {}, pending.get("accepted_by")).to_wire()


def fall_back(exc: BaseException, exec_server: Callable[[list[str]], None]) -> None:
    """This process was to apply a reload and failed before it was ready: re-execute with the previous
    argv (`exec_server` does not return), telling that process why. Returns if there is nothing to do."""
    global _pending
    pending, _pending = _pending, None
    if pending is None or not isinstance(pending.get("previous_argv"), list):
        return
    reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON]
    log.error("the reload failed (%s): coming back with the settings from before it", reason)
    outcome = ReloadOutcome("failed", pending.get("settings") or {}, pending.get("accepted_by"), reason)
    os.environ[OUTCOME_ENV] = json.dumps(outcome.to_wire(), default=str)
    exec_server([str(arg) for arg in pending["previous_argv"]])
