"""CONTROL reload outcomes: refused, applied, or failed at load and rolled back, never a dead endpoint.

The reload re-executes the server (same pid). A client follows it as docs/PROTOCOL.md
says: HELLO until `instance` differs from the CONTROL_REPLY's, a fresh DEALER per probe
(bounded), then `last_reload` says what became of it.
"""

from __future__ import annotations

import time

import pytest
import torch
import zmq

from client.transport import Backend, ClientError
from common.protocol import MsgType
from server.models.spec import CHECKPOINT_NAME
from tests.support import check_counters, counters_add_up, record_figures

pytestmark = pytest.mark.integration

NOOP = ("--device", "cpu", "--model", "noop", "--no-compile", "--num-workers", "1")
RELOAD_TIMEOUT_S = 180.0  # two interpreter starts on busy cores
PROBE_TIMEOUT_S = 2.0


def probe(endpoint: str) -> dict | None:
    """One HELLO on a fresh connection: INFO, or None when nothing answered in time."""
    ctx = zmq.Context()
    backend = Backend(ctx, endpoint)
    try:
        return backend.hello(PROBE_TIMEOUT_S)
    except ClientError:
        return None
    finally:
        backend.close()
        ctx.term()


def control(endpoint: str, action: str, **kwargs) -> dict:
    ctx = zmq.Context()
    backend = Backend(ctx, endpoint)
    try:
        return backend.control(action, timeout_s=30, **kwargs)
    finally:
        backend.close()
        ctx.term()


def next_instance(endpoint: str, old: str) -> tuple[dict, float]:
    """INFO of the first process other than `old` to answer, and how long that took (bounded)."""
    start = time.monotonic()
    while time.monotonic() - start < RELOAD_TIMEOUT_S:
        info = probe(endpoint)
        if info is not None and info["instance"] != old and info["state"] == "ready":
            return info, time.monotonic() - start
    raise AssertionError(f"no server answered on {endpoint} within {RELOAD_TIMEOUT_S:g} s of the reload")


def stats_and_infer(endpoint: str) -> tuple[dict, MsgType]:
    ctx = zmq.Context()
    backend = Backend(ctx, endpoint)
    try:
        reply = backend.request(MsgType.INFER, {"ts": [0, 0]}, timeout_s=30, tensors=(torch.zeros(1, 3, 32, 32),))
        return backend.stats(timeout_s=10), reply.msg_type
    finally:
        backend.close()
        ctx.term()


def test_a_reload_that_fails_at_load_brings_back_the_previous_settings(server_factory, tmp_path):
    # Passes every check made before `accepted` (the checkpoint file is there) and fails only when
    # torch reads it, in the re-executed process.
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"this is not a checkpoint")
    server = server_factory(*NOOP, "--model-dir", str(tmp_path))
    before = probe(server.endpoint)
    reply = control(server.endpoint, "reload", settings={"model": "resnet18"})
    assert reply["accepted"] is True and reply["instance"] == before["instance"]
    info, back_after = next_instance(server.endpoint, before["instance"])
    outcome = info["last_reload"]
    assert outcome["outcome"] == "failed" and outcome["settings"] == {"model": "resnet18"}, outcome
    assert outcome["accepted_by"] == before["instance"] and CHECKPOINT_NAME in outcome["reason"], outcome
    # The settings from before, on the endpoint actually bound (a wildcard port is not left to chance).
    assert info["model"] == "noop" and info["endpoints"] == before["endpoints"]
    assert {**info["config"], "bind": before["config"]["bind"]} == before["config"]
    assert info["config"]["bind"] == before["endpoints"]
    assert info["pid"] == before["pid"] and server.proc.poll() is None  # the same process, re-executed twice
    stats, served = stats_and_infer(server.endpoint)
    assert served == MsgType.RESULT and stats["last_reload"] == outcome
    counters_add_up(stats)
    record_figures("reload_failed", back_after_s=round(back_after, 2), reason=outcome["reason"][:120])


def test_refused_and_applied_reloads(server_factory):
    from tests.server.test_config import BAD_RELOADS, WRONG_TYPE_RELOADS

    server = server_factory(*NOOP)
    before = probe(server.endpoint)
    refused = 0
    for setting, settings in BAD_RELOADS + WRONG_TYPE_RELOADS:
        with pytest.raises(ClientError, match="BAD_REQUEST") as error:
            control(server.endpoint, "reload", settings=settings)
        refused += setting in str(error.value)
    assert refused == len(BAD_RELOADS + WRONG_TYPE_RELOADS)
    assert probe(server.endpoint)["instance"] == before["instance"]  # nothing was re-executed
    check_counters(server.endpoint)
    reply = control(server.endpoint, "reload", settings={"max_batch_size": 4, "batch_timeout_us": 500})
    info, back_after = next_instance(server.endpoint, reply["instance"])
    assert info["last_reload"] == {"outcome": "applied", "settings": {"max_batch_size": 4, "batch_timeout_us": 500},
                                   "accepted_by": before["instance"], "reason": None}
    assert info["max_batch_size"] == 4 and info["pid"] == before["pid"]
    stats, served = stats_and_infer(server.endpoint)
    assert served == MsgType.RESULT
    counters_add_up(stats)
    record_figures("reload_outcomes", refused=refused, applied_back_after_s=round(back_after, 2))
