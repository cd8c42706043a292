"""Bounded soak: many thousands of noop requests, server RSS flat (first vs last quarter)."""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
import zmq

from client.transport import Backend
from common.protocol import MsgType
from tests.support import counters_add_up, record_figures

pytestmark = pytest.mark.integration  # every test here starts a process

SOAK_S = float(os.environ.get("SOAK_SECONDS", "180"))
RSS_DRIFT_LIMIT = 20 * 2**20


@pytest.mark.soak
@pytest.mark.timeout(SOAK_S + 120)
def test_soak_rss_flat(noop_server):
    ctx = zmq.Context()
    backend = Backend(ctx, noop_server.endpoint)
    x = torch.rand(2, 3, 32, 32)
    samples: list[int] = []
    requests = 0
    try:
        end = time.monotonic() + SOAK_S
        while time.monotonic() < end:
            for _ in range(200):
                reply = backend.request(MsgType.INFER, {"ts": [0, 0]}, timeout_s=10, tensors=(x,))
                assert reply.msg_type == MsgType.RESULT
            requests += 200
            samples.append(backend.stats()["rss_bytes"])
        counters = counters_add_up(backend.stats())
    finally:
        backend.close()
        ctx.term()
    quarter = max(1, len(samples) // 4)
    first, last = statistics.median(samples[:quarter]), statistics.median(samples[-quarter:])
    record_figures("soak", seconds=SOAK_S, requests=requests, answered=counters.get("answered", 0),
                   errors_sent=counters.get("errors_sent", 0), rss_first_quarter_mb=round(first / 2**20, 1),
                   rss_last_quarter_mb=round(last / 2**20, 1))
    assert requests >= 1000
    assert last - first < RSS_DRIFT_LIMIT, f"RSS grew {(last - first) / 2**20:.1f} MB"
