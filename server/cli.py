"""`infer-server`: the command line, turned into a ServerConfig; server/app.py does the rest.

Nothing heavy is imported before the configuration is known to be valid, so
`--help` and usage errors answer at once.
"""

from __future__ import annotations

import click

from common import __version__, click_options
from common.security import check_server_keys
from server.config import ServerConfig


def _list_models(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from server.models.zoo import list_models_text

    click.echo(list_models_text())
    ctx.exit()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="infer-server")
@click.option("--list-models", is_flag=True, is_eager=True, expose_value=False, callback=_list_models,
              help="List the models --model takes (every torchvision classification model) and exit.")
@click_options.click_options(ServerConfig)
def main(**params: object) -> None:
    """Serve ResNet-18 inference over ZeroMQ (ROUTER socket, msgpack header + raw tensor frames)."""
    from server.alloc import keep_large_buffers_in_heap

    keep_large_buffers_in_heap()  # first: checking the device or model imports torch, whose threads come early
    try:
        config = click_options.from_params(ServerConfig, params)
        if config.curve_dir is not None:
            check_server_keys(config.curve_dir)  # a wrong key file: one line before the model loads
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    from server.models.build import check_model

    try:
        check_model(config.model, config.model_dir, config.allow_random_init)  # torchvision's names, checkpoints
    except ValueError as exc:
        raise click.UsageError(f"model (--model): {exc}") from None
    from server.app import StartupError, run

    try:
        run(config)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # a file or socket the checks could not foresee: one line, not a traceback
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from None
