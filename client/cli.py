"""`infer-client`: drive one or more infer-servers and report what they did."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from client.config import DEFAULT_SERVER, ClientConfig
from client.loadgen import ARRIVALS

EXIT_INCOMPLETE = 1  # requests failed or were lost: results are still written


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--server", "servers", multiple=True, default=[DEFAULT_SERVER],
              help="infer-server endpoint (repeatable: requests go to the least-loaded live server).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32)
@click.option("--image-size", type=click.IntRange(32, 4096), default=250, help="Inputs are [B, 3, S, S].")
@click.option("--wire-dtype", type=click.Choice(["float32", "uint8"]), default="float32",
              help="uint8 sends raw pixels (4x fewer bytes); the server normalises them on its device.")
@click.option("--num-iters", type=click.IntRange(1), default=None,
              help="Measured requests, warm-up excluded [default: 100 unless --duration or --window-s].")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Send for this many seconds instead of --num-iters.")
@click.option("--warmup", type=click.IntRange(0), default=1, help="Unmeasured requests sent first, one at a time.")
@click.option("--concurrency", type=click.IntRange(0), default=1,
              help="Requests in flight (closed loop); 0 = unbounded, all at once (the seed's flood). "
                   "With --request-rate: a cap on requests in flight (0 = none, the default there).")
@click.option("--request-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Open loop: requests/s on a seeded schedule; latency counts from each scheduled time.")
@click.option("--arrival", type=click.Choice(ARRIVALS), default="poisson", help="Open-loop inter-arrival times.")
@click.option("--burstiness", type=click.FloatRange(min=0, min_open=True), default=1.0,
              help="Gamma shape for --arrival gamma (1 = Poisson; < 1 burstier).")
@click.option("--seed", type=int, default=0, help="Seeds the inputs and the arrival schedule.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=30.0,
              help="Seconds without a reply before a server counts as lost (and for the HELLO handshake).")
@click.option("--reconnect-timeout", "reconnect_timeout_s", type=click.FloatRange(min=0), default=0.0,
              help="Keep probing a lost server this many seconds; if it comes back (e.g. restarted on the "
                   "same endpoint) use it again and report the recovery time. 0 = lost for good.")
@click.option("--warmup-timeout", "warmup_timeout_s", type=click.FloatRange(min=0, min_open=True), default=900.0,
              help="Seconds to wait for a warm-up reply (the first request may compile the model).")
@click.option("--slo-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Latency objective: report goodput, the rate of requests at or under it.")
@click.option("--window-s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Measurement window length; reports stability. Alone, run until stable or --max-windows.")
@click.option("--max-windows", type=click.IntRange(3), default=10)
@click.option("--trace-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one JSON line per request (scheduled/sent/received ns, server durations).")
@click.option("--gpu-source", type=click.Choice(["auto", "local", "server", "off"]), default="auto",
              help="Where GPU figures come from: this host's NVML, or the server's STATS.")
@click.option("--processes", type=click.IntRange(1, 256), default=1,
              help="Client processes sharing the load; their histograms are merged exactly.")
@click.option("--curve-client-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CURVE: this client's .key_secret file (needs --curve-server-key).")
@click.option("--curve-server-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CURVE: the server's public .key file.")
@click.option("--output-file", default="results/output.csv",
              help="CSV to append one row to (header written once); empty string: none.")
@click.option("--json-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full result (histograms included, mergeable with infer-merge).")
@click.option("--json", "print_json", is_flag=True, help="Print the metrics as one JSON object on stdout's last line.")
@click.option("-q", "--quiet", is_flag=True, help="No human-readable report.")
def main(
    curve_client_key: Path | None,
    curve_server_key: Path | None,
    output_file: str,
    json_file: Path | None,
    print_json: bool,
    quiet: bool,
    **kwargs: object,
) -> None:
    """Benchmark infer-server(s): latency distribution, throughput, GPU and CPU use."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from client.runner import run
    from client.transport import ClientError, CurveKeys

    if (curve_client_key is None) != (curve_server_key is None):
        raise click.UsageError("--curve-client-key and --curve-server-key go together")
    curve = CurveKeys(curve_client_key, curve_server_key) if curve_client_key and curve_server_key else None
    if kwargs["request_rate"] and click.get_current_context().get_parameter_source("concurrency") == (
        click.core.ParameterSource.DEFAULT
    ):
        # Open loop: a default cap of 1 in flight would quietly turn it back into a closed loop.
        kwargs["concurrency"] = 0
    if kwargs["num_iters"] is None and kwargs["duration_s"] is None and not kwargs["window_s"]:
        kwargs["num_iters"] = 100
    if kwargs["num_iters"] is not None and kwargs["duration_s"] is not None:
        raise click.UsageError("give --num-iters or --duration, not both")
    config = ClientConfig(curve=curve, **kwargs)  # type: ignore[arg-type]
    try:
        result = run(config)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted") from None
    if output_file:
        result.append_csv(Path(output_file))
    if json_file is not None:
        result.write_json(json_file)
    if not quiet:
        click.echo(result.format_text())
    if print_json:
        click.echo(json.dumps(result.summary()))
    if not result.complete or result.failed_total:
        click.echo(
            f"incomplete run: {result.failed_total} requests failed, {result.lost} lost"
            " (results written)",
            err=True,
        )
        sys.exit(EXIT_INCOMPLETE)
