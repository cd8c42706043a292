"""The client's I/O loop over inproc://, against a scripted ROUTER standing in for a server.

Unit tests of the loop's own logic (spreading, losses, recovery, hand-over to
the metrics thread); real servers over TCP are the integration tests' job.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import pytest
import torch
import zmq

from client.config import ClientConfig
from client.loadgen import InputPool
from client.loop import MeasureLoop
from client.metrics import Completion, Recorder, SendingStarted, SendingStopped
from client.monitor import ResourceMonitor
from client.results import RunResult
from client.transport import Backend
from common import codec
from common.protocol import (
    DEAD_FRAME,
    InferHeader,
    InfoHeader,
    MsgType,
    ResultHeader,
    ServerTimes,
    StatsReplyHeader,
    readable_id,
)

BATCH = 2


class ScriptedServer(threading.Thread):
    """A ROUTER on inproc:// that answers as `policy` says: "answer", "ignore" or "dead"."""

    def __init__(self, ctx: zmq.Context, name: str, policy: Callable[[MsgType, dict], str] | None = None):
        super().__init__(name=name, daemon=True)
        self.ctx, self.endpoint = ctx, f"inproc://{name}"
        self.policy = policy or (lambda msg_type, header: "answer")
        self.seen: list[tuple[MsgType, object]] = []
        self._bound, self._stopping = threading.Event(), threading.Event()

    def __enter__(self) -> ScriptedServer:
        self.start()
        assert self._bound.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self.join(10)

    def run(self) -> None:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.endpoint)
        self._bound.set()
        try:
            while not self._stopping.is_set():
                if sock.poll(20):
                    identity, *frames = sock.recv_multipart()
                    msg = codec.decode(frames)
                    self.seen.append((msg.msg_type, readable_id(msg.header)))
                    self._answer(sock, identity, msg)
        finally:
            sock.close(linger=0)

    def _answer(self, sock: zmq.Socket, identity: bytes, msg: codec.Message) -> None:
        action = self.policy(msg.msg_type, msg.header)
        if action == "dead":
            sock.send_multipart([identity, DEAD_FRAME])
        elif action == "answer" and msg.msg_type == MsgType.HELLO:
            info = InfoHeader(readable_id(msg.header)).to_wire()
            sock.send_multipart([identity, *codec.encode(MsgType.INFO, info)])
        elif action == "answer" and msg.msg_type == MsgType.STATS:
            stats = StatsReplyHeader(readable_id(msg.header)).to_wire()
            sock.send_multipart([identity, *codec.encode(MsgType.STATS_REPLY, stats)])
        elif action == "answer":
            request = InferHeader.from_wire(msg.header)
            reply = ResultHeader(request.id, request.ts, [], ServerTimes(compute_ns=1000)).to_wire()
            sock.send_multipart([identity, *codec.encode(MsgType.RESULT, reply, (torch.zeros(BATCH, 10),))])


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.term()


def _run(ctx: zmq.Context, servers: list[ScriptedServer], hand_to: queue.SimpleQueue | None = None,
         **settings: object) -> tuple[MeasureLoop, list, list[tuple[int, bool]]]:
    config = ClientConfig(servers=tuple(s.endpoint for s in servers), batch_size=BATCH, image_size=32,
                          wire_dtype="uint8", **settings)
    backends = [Backend(ctx, s.endpoint, i) for i, s in enumerate(servers)]
    link_events: list[tuple[int, bool]] = []
    inbox = hand_to if hand_to is not None else queue.SimpleQueue()
    loop = MeasureLoop(config, backends, InputPool(BATCH, (3, 32, 32), "uint8", 0), inbox, threading.Event(),
                       on_link=lambda i, alive: link_events.append((i, alive)))
    try:
        loop.run()
    finally:
        for b in backends:
            b.close()
    handed = []
    while hand_to is None and not inbox.empty():
        handed.append(inbox.get())
    return loop, handed, link_events


def test_every_reply_is_handed_over_once_between_the_start_and_stop_events(ctx) -> None:
    with ScriptedServer(ctx, "one") as server:
        loop, handed, link_events = _run(ctx, [server], num_iters=20, concurrency=3)
    assert isinstance(handed[0], SendingStarted) and handed[0].ns == loop.start_ns
    stops = [i for i, item in enumerate(handed) if isinstance(item, SendingStopped)]
    assert len(stops) == 1 and handed[stops[0]].ns >= loop.last_send_ns
    replies = [c for item in handed if isinstance(item, list) for c in item]
    assert all(isinstance(c, Completion) and c.msg_type == MsgType.RESULT for c in replies)
    assert sorted(ResultHeader.from_wire(c.header).id for c in replies) == list(range(20))
    assert loop.sent == loop.links[0].sent == 20 and loop.complete and not loop.pending
    assert link_events == []


def test_from_run_combines_the_loops_sends_with_the_recorders_replies(ctx) -> None:
    servers = [ScriptedServer(ctx, "a"), ScriptedServer(ctx, "b")]
    recorder = Recorder(BATCH, [s.endpoint for s in servers])
    recorder.start()
    with servers[0], servers[1]:
        loop, _, _ = _run(ctx, servers, hand_to=recorder.inbox, num_iters=30, concurrency=4)
    recorder.stop()
    result = RunResult.from_run(loop.config, [{}, {}], 0.0, loop, recorder, {}, [])
    assert result.sent == result.ok == 30 and result.complete and result.lost == 0
    assert [b.endpoint for b in result.backends] == [s.endpoint for s in servers]
    assert all(b.sent > 0 and b.ok == b.sent for b in result.backends)  # both got a share
    assert result.breakdown["compute"].max_ns == 1000 and result.latency.count == 30
    assert RunResult.from_dict(result.to_dict()).summary() == result.summary()


def test_a_dead_server_is_lost_with_its_requests_and_the_rest_go_elsewhere(ctx) -> None:
    dying = ScriptedServer(ctx, "dying", lambda t, h: "dead" if t == MsgType.INFER else "answer")
    with ScriptedServer(ctx, "steady") as steady, dying:
        loop, _, link_events = _run(ctx, [steady, dying], num_iters=40, concurrency=4)
    kept, lost = loop.links
    assert not lost.alive and "DEAD" in lost.lost_reason and lost.lost_at_s >= 0
    # Everything sent to it before the DEAD arrived was in flight, so lost.
    assert lost.lost == lost.sent >= 1 and kept.lost == 0
    assert kept.sent + lost.sent == loop.sent == 40 and loop.lost == lost.lost
    assert link_events == [(1, False)] and not loop.complete


def test_a_silent_server_is_lost_after_the_timeout_and_the_run_ends(ctx) -> None:
    with ScriptedServer(ctx, "silent", lambda t, h: "ignore") as silent:
        loop, handed, link_events = _run(ctx, [silent], num_iters=10, concurrency=3, timeout_s=0.2)
    (link,) = loop.links
    assert link.lost_reason == "no reply for 0.2 s" and link.lost == loop.sent == 3
    assert link_events == [(0, False)]
    assert isinstance(handed[-1], SendingStopped)


def test_a_lost_server_that_answers_a_probe_is_used_again(ctx) -> None:
    probed = threading.Event()

    def policy(msg_type: MsgType, header: dict) -> str:
        if msg_type == MsgType.HELLO:
            probed.set()
        return "answer" if probed.is_set() else "ignore"  # silent until the first probe

    with ScriptedServer(ctx, "flaky", policy) as flaky:
        # 2 s: long enough that no answered request times out on a busy machine; only the ignored one.
        loop, _, link_events = _run(ctx, [flaky], num_iters=5, concurrency=1, timeout_s=2.0,
                                    reconnect_timeout_s=30.0)
    (link,) = loop.links
    assert link.alive and link.recoveries == 1 and link.recovery_s > 0
    assert link.lost == 1 and link.sent == 5 and loop.lost == 1
    assert link_events == [(0, False), (0, True)]
    assert (MsgType.HELLO, "probe") in flaky.seen


def test_monitor_does_not_ask_a_server_reported_lost(ctx) -> None:
    with ScriptedServer(ctx, "stats") as server:
        monitor = ResourceMonitor(ctx, [server.endpoint], [InfoHeader()], source="off", interval_s=60.0)
        monitor.start_window()
        monitor.link_changed(0, False)  # as the I/O thread reports a loss
        result = monitor.stop_window()
    assert [t for t, _ in server.seen] == [MsgType.STATS], result  # the window's first; none at its end
    assert result["server_stats"] == [None]


def test_monitor_does_not_ask_a_server_that_sent_dead_until_it_is_back(ctx) -> None:
    with ScriptedServer(ctx, "leaving", lambda t, h: "dead") as server:
        backend = Backend(ctx, server.endpoint)
        monitor = ResourceMonitor(ctx, [server.endpoint], [InfoHeader()], source="off")
        try:
            assert monitor._stats(backend) is None and monitor._stats(backend) is None
            assert len(server.seen) == 1
            server.policy = lambda t, h: "answer"
            monitor.link_changed(0, True)  # the I/O thread saw it answer a probe
            assert monitor._stats(backend).mono_ns == 0 and len(server.seen) == 2
        finally:
            backend.close()


def test_one_server_is_waited_for_in_a_receive_with_a_timeout_that_is_undone_after(ctx) -> None:
    """With one socket to watch the loop waits in libzmq's receive (RCVTIMEO) rather than a poll; the
    rest of the client (HELLO, STATS, CONTROL) expects libzmq's default, no timeout, once it is over."""
    seen: list[int] = []

    class Watched(MeasureLoop):
        def _restore_receive_timeouts(self) -> None:
            seen.append(self.links[0].backend.sock.getsockopt(zmq.RCVTIMEO))
            super()._restore_receive_timeouts()

    with ScriptedServer(ctx, "waited") as server:
        config = ClientConfig(servers=(server.endpoint,), batch_size=BATCH, image_size=32, wire_dtype="uint8",
                              num_iters=20, concurrency=2)
        backend = Backend(ctx, server.endpoint)
        try:
            loop = Watched(config, [backend], InputPool(BATCH, (3, 32, 32), "uint8", 0), queue.SimpleQueue(),
                           threading.Event())
            loop.run()
            assert loop.complete and loop.sent == 20
            assert seen and seen[0] > 0  # the loop waited in the receive, with a timeout
            assert backend.sock.getsockopt(zmq.RCVTIMEO) == -1
            assert backend.hello(timeout_s=10) is not None  # the socket serves the synchronous calls as before
        finally:
            backend.close()
