"""`infer-stats ENDPOINT [--watch S]`: what a running infer-server is and what it is doing.

One HELLO (its INFO: model, device, settings, start-up) and one STATS (counters,
requests in flight, CPU, memory, GPU); with --watch, a line of STATS every S
seconds until Ctrl-C, rates computed between samples. It speaks the protocol
with pyzmq and msgpack alone (no torch), so it answers in a fraction of a second.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import click

from common import __version__
from common.click_options import endpoint_type

HEADER_LIMIT = 1 << 20  # bytes: INFO and STATS are small maps


class Unreachable(click.ClickException):
    """No (valid) reply: exit 1 with one line."""


class ServerLink:
    """One DEALER socket to the server, for HELLO and STATS requests answered in order."""

    def __init__(self, endpoint: str, timeout_s: float, curve: tuple[Path, Path] | None = None):
        import zmq

        self.endpoint, self.timeout_s = endpoint, timeout_s
        self._ctx = zmq.Context()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            from common.security import configure_client

            configure_client(self.sock, *curve)
        self.sock.connect(endpoint)
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.sock.close(linger=0)
        self._ctx.term()

    def ask(self, msg_type_name: str) -> dict[str, Any]:
        """Send HELLO or STATS; the reply's header (Unreachable on silence, an ERROR or a DEAD frame)."""
        import msgpack

        from common.protocol import IdHeader, MsgType, ProtocolError, control_frame, parse_control, readable_id

        request_id = f"stats-{next(self._ids)}"
        self.sock.send_multipart([control_frame(MsgType[msg_type_name]), msgpack.packb(IdHeader(request_id).to_wire())])
        deadline = time.monotonic() + self.timeout_s
        while (remaining := deadline - time.monotonic()) > 0 and self.sock.poll(int(remaining * 1000) + 1):
            frames = self.sock.recv_multipart()
            try:
                _, msg_type = parse_control(frames[0])
                if msg_type == MsgType.DEAD:
                    raise Unreachable(f"{self.endpoint} is shutting down (it sent DEAD)")
                header = _unpack(frames[1]) if len(frames) > 1 else {}
            except (ProtocolError, ValueError) as exc:
                raise Unreachable(f"malformed reply from {self.endpoint}: {exc}") from None
            if not isinstance(header, dict) or readable_id(header) != request_id:
                continue  # a late reply to an earlier request
            if msg_type == MsgType.ERROR:
                raise Unreachable(f"{self.endpoint} answered {header.get('name')}: {header.get('message')}")
            return header
        raise Unreachable(f"no reply from {self.endpoint} within {self.timeout_s:g} s: is infer-server running there?")


def _unpack(buf: bytes) -> Any:
    """A reply header: bounded, then msgpack (which raises several unrelated types on garbage)."""
    import msgpack

    if len(buf) > HEADER_LIMIT:
        raise ValueError(f"header of {len(buf)} bytes, limit {HEADER_LIMIT}")
    try:
        return msgpack.unpackb(buf, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ValueError(f"header is not valid msgpack: {exc}") from None


def info_lines(info: dict[str, Any]) -> list[str]:
    from common.protocol import InfoHeader

    i = InfoHeader.from_wire(info)
    batching = f"up to {i.max_batch_size} rows, {i.batch_timeout_us} us" if i.max_batch_size else "off"
    return [
        f"server {i.endpoints and ' '.join(i.endpoints)} on {i.hostname} (pid {i.pid}, instance {i.instance},"
        f" version {i.server_version}, protocol {i.protocol_version}): {i.state}",
        f"model {i.model} ({i.model_source}) on {i.device} ({i.device_name}); precision {i.precision},"
        f" channels-last {_onoff(i.channels_last)}, compile {_onoff(i.compile)} ({i.compile_mode}),"
        f" workers {i.num_workers}, threads {i.torch_threads}, batching {batching}, max in flight {i.max_inflight}",
        f"start-up: ready after {_s(i.startup_s)}, model load {_s(i.torch_load_time)},"
        f" compile/warm-up {_s(i.m_compile_time)}; torch {i.torch_version}, CUDA {i.cuda_version or 'none'}",
    ]


def stats_line(stats: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """Counters, in flight, CPU, memory and GPU; with `before`, rates and CPU % since that sample."""
    from common.protocol import StatsReplyHeader

    now = StatsReplyHeader.from_wire(stats)
    c = now.counters
    parts = [f"up {now.uptime_s:.0f} s", f"received {c.received}", f"answered {c.answered}",
             f"errors {c.errors_sent}", f"dropped {c.replies_dropped} ({c.replies_dropped_gone} peer gone,"
             f" {c.replies_dropped_hwm} high-water mark, {c.replies_dropped_bytes} byte budget)",
             f"in flight {now.inflight} (peak {now.inflight_peak})"]
    cpu_s = now.cpu_user_s + now.cpu_system_s
    if before is not None:
        then = StatsReplyHeader.from_wire(before)
        span_s = max(1e-9, (now.mono_ns - then.mono_ns) / 1e9)
        parts[2] += f" ({(c.answered - then.counters.answered) / span_s:.1f}/s)"
        parts.append(f"CPU {max(0.0, 100 * (cpu_s - then.cpu_user_s - then.cpu_system_s) / span_s):.0f}% of a core")
    else:
        parts.append(f"CPU {cpu_s:.1f} s")
    parts.append(f"RSS {now.rss_bytes / 2**20:.0f} MiB")
    parts.append(_gpu(now.gpu, now.gpu_source, now.gpu_reason))
    return ", ".join(parts)


def _gpu(gpu: dict[str, Any] | None, source: str, reason: str | None) -> str:
    if not gpu:
        return f"GPU n/a ({reason or source})"
    util, mem = gpu.get("util_pct"), gpu.get("mem_used_bytes")
    text = f"GPU {util:.0f}% busy" if isinstance(util, (int, float)) else "GPU"
    return text + (f", {mem / 2**20:.0f} MiB" if isinstance(mem, (int, float)) else "") + f" ({source})"


def _onoff(v: bool | None) -> str:
    return "n/a" if v is None else "on" if v else "off"


def _s(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f} s"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="infer-stats")
@click.argument("endpoint", type=endpoint_type())
@click.option("--watch", "watch_s", type=click.FloatRange(min=0.1), default=None,
              help="Print STATS every this many seconds until Ctrl-C.  [default: once]")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=5.0,
              help="Seconds to wait for each reply.")
@click.option("--json", "print_json", is_flag=True, help="Print INFO and STATS as JSON objects, one per line.")
@click.option("--curve-client-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CURVE: this client's .key_secret file (needs --curve-server-key).  [default: none]")
@click.option("--curve-server-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CURVE: the server's public .key file.  [default: none]")
def main(endpoint: str, watch_s: float | None, timeout_s: float, print_json: bool, curve_client_key: Path | None,
         curve_server_key: Path | None) -> None:
    """Show a running infer-server's INFO and live STATS (counters, in flight, CPU, RSS, GPU).

    ENDPOINT is tcp://HOST:PORT or ipc://PATH. Exit status: 0, 1 when the server does not answer, 2 bad usage.
    """
    if (curve_client_key is None) != (curve_server_key is None):
        raise click.UsageError("--curve-client-key and --curve-server-key go together")
    curve = (curve_client_key, curve_server_key) if curve_client_key and curve_server_key else None
    if curve is not None:
        from common.security import KeyFileError, check_client_keys

        try:
            check_client_keys(*curve)
        except KeyFileError as exc:
            raise click.UsageError(str(exc)) from None
    link = ServerLink(endpoint, timeout_s, curve)
    try:
        info = link.ask("HELLO")
        click.echo(json.dumps(info) if print_json else "\n".join(info_lines(info)))
        before = None
        while True:
            stats = link.ask("STATS")
            click.echo(json.dumps(stats) if print_json else stats_line(stats, before))
            if watch_s is None:
                return
            before = stats
            time.sleep(watch_s)  # the pace of a display, not a synchronisation
    except KeyboardInterrupt:
        return
    finally:
        link.close()


if __name__ == "__main__":
    main()
