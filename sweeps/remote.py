"""A sweep against servers that are already running (`sweep.py --server ENDPOINT`).

Server settings the sweep is not told are the running server's own (its INFO),
so a sweep of client-side axes only leaves the server as it is. A setting the
sweep does set is applied with a CONTROL reload, and only when the server does
not already run with it: a server that refuses CONTROL (a non-loopback bind
without CURVE) still serves a sweep that asks for nothing it lacks. With CURVE
keys (`--curve-client-key`, `--curve-server-key`) every request here goes over
CURVE: a server beyond loopback accepts CONTROL only from an authenticated peer.
"""

from __future__ import annotations

import json
import time
from typing import Any

from client.config import CurveKeys
from common.protocol import ControlReplyHeader, InfoHeader
from sweeps.plan import NAMED_SERVER, Point

HELLO_TIMEOUT_S = 30.0


def _hello(ctx: Any, endpoint: str, timeout_s: float, curve: CurveKeys | None = None) -> dict[str, Any]:
    from client.transport import Backend

    backend = Backend(ctx, endpoint, curve=curve)
    try:
        return backend.hello(timeout_s)
    finally:
        backend.close()


def server_info(endpoint: str, timeout_s: float = HELLO_TIMEOUT_S, curve: CurveKeys | None = None) -> dict[str, Any]:
    """The running server's INFO; RuntimeError naming the endpoint when it does not answer in time."""
    import zmq

    from client.transport import ClientError

    ctx = zmq.Context()
    try:
        return _hello(ctx, endpoint, timeout_s, curve)
    except ClientError as exc:
        raise RuntimeError(f"{endpoint}: {exc}") from None
    finally:
        ctx.term()


def running_value(info: dict[str, Any], name: str) -> Any:
    """A setting as the server runs it: INFO's own field where it has one (resolved: num_workers 1, not
    'auto'), else its `config`."""
    value = info.get(name)
    return value if value is not None else (info.get("config") or {}).get(name)


def server_defaults(info: dict[str, Any]) -> dict[str, Any]:
    """The server settings every point names (device, model, compile, workers), as this server runs them."""
    return {name: running_value(info, name) for name in NAMED_SERVER}


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=list) == json.dumps(b, sort_keys=True, default=list)


def settings_to_change(info: dict[str, Any], cfg: Point) -> dict[str, Any]:
    """The point's reloadable server settings that the server does not run with now."""
    return {k: v for k, v in cfg.reload_settings().items() if not _same(running_value(info, k), v)}


def ensure_settings(endpoint: str, cfg: Point, timeout_s: float, curve: CurveKeys | None = None) -> float | None:
    """Make the server at `endpoint` run with cfg's server settings: a CONTROL reload only when one differs.
    Returns the seconds until the reloaded server's HELLO, or None when nothing had to change."""
    if not settings_to_change(server_info(endpoint, min(timeout_s, HELLO_TIMEOUT_S), curve), cfg):
        return None
    return reload_remote(endpoint, cfg, timeout_s, curve)


def reload_remote(endpoint: str, cfg: Point, timeout_s: float, curve: CurveKeys | None = None) -> float:
    """Ask a running server to re-exec with cfg's server settings; returns seconds until its new HELLO.

    The reply carries the old instance id; a poll loop on HELLO (each bounded)
    waits for a different one, so the cold start of the new settings is measured.
    """
    import zmq

    from client.transport import Backend, ClientError

    ctx = zmq.Context()
    t0 = time.monotonic()
    try:
        backend = Backend(ctx, endpoint, curve=curve)
        try:
            settings = cfg.reload_settings()
            old_instance = ControlReplyHeader.from_wire(backend.control("reload", settings=settings)).instance
        finally:
            backend.close()
        deadline = t0 + timeout_s
        while time.monotonic() < deadline:
            # A fresh socket per probe: the old one may hold requests the dying server never answered.
            try:
                info = _hello(ctx, endpoint, min(5.0, max(0.1, deadline - time.monotonic())), curve)
            except ClientError:
                continue
            header = InfoHeader.from_wire(info)
            if header.instance != old_instance and header.state == "ready":
                wrong = {k: running_value(info, k) for k in settings_to_change(info, cfg)}
                if wrong:  # e.g. another server answered on that endpoint
                    raise RuntimeError(f"{endpoint} came back with {wrong}, not {settings}")
                return time.monotonic() - t0
        raise RuntimeError(f"{endpoint} did not come back from reload within {timeout_s:g} s")
    finally:
        ctx.term()
