"""`infer-server --metrics-port`: the Prometheus endpoint, served by prometheus_client on its own threads.

Each scrape asks the I/O loop for a STATS over an inproc endpoint of the server's own
ROUTER, so the counters and gauges are the consistent snapshot the I/O thread builds
for any STATS, read by no other thread. A scrape costs the I/O thread one STATS reply;
a request costs nothing more than without the endpoint except its three histogram
increments (server/histograms.py), the only figures read across threads. Which
metrics, from which STATS keys: server/prometheus_metrics.py.

Who may read them: whom STATS answers. ServerConfig._check_metrics allows plain HTTP
only where STATS needs no credentials and the metrics reach no one STATS does not;
elsewhere --metrics-tls-dir is required, and the endpoint is HTTPS that refuses a
client without a certificate signed by its client_ca.crt. The exposition (registry,
text format, content negotiation) is prometheus_client's WSGI app; only the socket
server around it is this module's, to bound each connection in time.
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, make_server

import zmq
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from common import codec
from common.protocol import IdHeader, MsgType, ProtocolError, StatsReplyHeader
from server import prometheus_metrics as pm
from server.config import METRICS_TLS_FILES, ServerConfig
from server.histograms import StageHistograms, merge

if TYPE_CHECKING:
    from server.loop import Server

log = logging.getLogger("infer.server.metrics")

STATS_TIMEOUT_S = 5.0  # an inline server answers STATS once the request it is running is done
CONNECTION_TIMEOUT_S = 10.0  # longest one connection may take over its handshake, request or reply


class LoopStats:
    """STATS requests to the I/O loop over inproc, one scrape at a time.

    Each request has its own DEALER, closed before it returns: between scrapes no
    socket of the endpoint is open on the server's context, so the loop's ctx.term()
    at shutdown never waits for one (a scrape in progress gets ETERM and gives up).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, timeout_s: float = STATS_TIMEOUT_S) -> None:
        self._ctx, self._endpoint, self._timeout_s = ctx, endpoint, timeout_s
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def fetch(self) -> StatsReplyHeader | None:
        """The loop's STATS reply, or None when it did not answer in time (stopping, or stuck)."""
        if not self._lock.acquire(timeout=self._timeout_s):
            return None
        try:
            return self._ask(f"metrics-{next(self._ids)}")
        finally:
            self._lock.release()

    def _ask(self, request_id: str) -> StatsReplyHeader | None:
        try:
            sock = self._ctx.socket(zmq.DEALER)
        except zmq.ZMQError:  # the context is terminating: the server is stopping
            return None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self._endpoint)
            sock.send_multipart(codec.encode(MsgType.STATS, IdHeader(request_id).to_wire()))
            deadline = time.monotonic() + self._timeout_s
            while (left := deadline - time.monotonic()) > 0 and sock.poll(int(left * 1000) + 1):
                reply = codec.decode(sock.recv_multipart())
                if reply.msg_type == MsgType.STATS_REPLY and reply.header.get("id") == request_id:
                    return StatsReplyHeader.from_wire(reply.header)
            log.warning("the I/O loop did not answer a scrape's STATS within %g s", self._timeout_s)
            return None
        except (zmq.ZMQError, ProtocolError):
            return None
        finally:
            sock.close(linger=0)


class ServerCollector(Collector):
    """What one scrape serves: a fresh STATS, the histograms as they are now, and INFO's labels."""

    def __init__(self, stats: LoopStats, labels: dict[str, str], workers: int,
                 timings: list[StageHistograms]) -> None:
        self._stats, self._labels, self._workers, self._timings = stats, labels, workers, timings

    def collect(self) -> Iterator[Metric]:
        stats = self._stats.fetch()
        if stats is None:
            yield pm.unavailable_family()
        else:
            yield from pm.stats_families(stats)
        yield pm.workers_family(self._workers)
        yield from pm.histogram_families(merge(self._timings))
        yield pm.info_family(self._labels)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Nothing: a line per scrape would drown the server's log."""


class _MetricsServer(ThreadingWSGIServer):
    """prometheus_client's threaded WSGI server, each connection bounded in time, TLS on its own thread.

    prometheus_client's own TLS wraps the listening socket, so a peer that connects and
    never completes the handshake holds the accept loop; here the handshake runs on the
    connection's thread with CONNECTION_TIMEOUT_S, as does everything else it reads.
    """

    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, object]:
        conn, address = self.socket.accept()
        conn.settimeout(CONNECTION_TIMEOUT_S)
        return conn, address

    def handle_error(self, request: object, client_address: object) -> None:
        """A connection that failed (timed out, reset) costs a debug line, not a traceback on stderr."""
        log.debug("metrics connection from %s failed", client_address, exc_info=True)

    def finish_request(self, request: socket.socket, client_address: object) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            request = self.tls.wrap_socket(request, server_side=True)  # takes over the connection
        except OSError:  # no client certificate, not TLS, or too slow: refused
            return
        try:
            super().finish_request(request, client_address)
        finally:
            request.close()


class MetricsEndpoint:
    """The HTTP(S) server of one infer-server process; `url` is where it serves."""

    def __init__(self, config: ServerConfig, server: Server) -> None:
        stats_endpoint = f"inproc://metrics-{server.instance}"
        server.router.bind(stats_endpoint)  # by the thread that runs the loop, before it runs
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ServerCollector(
            LoopStats(server.ctx, stats_endpoint), pm.info_labels(server.describe()),
            server.config.num_workers or 0, server.pool.keep_timings()))
        family, address = _address(config.metrics_host, config.metrics_port)
        server_class = type("MetricsServer", (_MetricsServer,), {"address_family": family})
        self._httpd = make_server(address[0], address[1], make_wsgi_app(registry), server_class, _QuietHandler)
        if config.metrics_tls_dir is not None:
            self._httpd.tls = tls_context(config.metrics_tls_dir)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        host = f"[{config.metrics_host}]" if ":" in config.metrics_host else config.metrics_host
        tls = self._httpd.tls is not None
        self.url = f"{'https' if tls else 'http'}://{host}:{self._httpd.server_port}/metrics"
        log.info("Prometheus metrics at %s%s", self.url, " (client certificates required)" if tls else "")

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)


def _address(host: str, port: int) -> tuple[int, tuple]:
    family, _kind, _proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return family, address


def tls_context(directory: Path) -> ssl.SSLContext:
    """HTTPS that requires a client certificate signed by client_ca.crt; ValueError if the files do not load."""
    crt, key, client_ca = (directory / name for name in METRICS_TLS_FILES)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(client_ca)
        context.load_cert_chain(crt, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--metrics-tls-dir: cannot load {crt.name}, {key.name} and {client_ca.name} from "
                         f"{directory}: {exc}") from None
    return context


def preflight(config: ServerConfig) -> None:
    """ValueError now, not after the model loaded, for a metrics port that is taken or TLS files that do not load."""
    if config.metrics_tls_dir is not None:
        tls_context(config.metrics_tls_dir)
    if not config.metrics_port:
        return  # off, or any free port
    try:
        family, address = _address(config.metrics_host, config.metrics_port)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server will
            probe.bind(address)
    except OSError as exc:
        raise ValueError(f"--metrics-port: cannot bind {config.metrics_host}:{config.metrics_port}: "
                         f"{exc.strerror or exc}") from None
