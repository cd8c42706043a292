"""The user's own model: `--model package.module:factory`.

The server imports `package.module` from its Python path (PYTHONPATH, the
installed packages, and the directory it was started in) and calls `factory()`
with no arguments; it must return an nn.Module that takes `[B, *input_shape]`
tensors of `--input-dtype` and returns a tensor whose first dimension is B.
This runs the user's code in the server process, with the server's rights;
nothing of it comes from the wire: the name is given on the server's command
line only (a CONTROL reload cannot choose another). Inputs reach the model as
they arrived (no uint8 normalisation); compile, precision, channels-last,
batching and workers apply as to any model.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from server.models.spec import InputSpec, ModelError, one_line

log = logging.getLogger("infer.server.model")


def build_user_model(
    name: str, device: torch.device, seed: int, input_shape: tuple[int, ...], input_dtype: str
) -> tuple[nn.Module, str, InputSpec]:
    """The user's model in eval mode on `device`, its source, and the input it declared."""
    if not input_shape:
        raise ModelError(f"--model {name} needs --input-shape (e.g. 3,224,224): the server cannot guess it")
    factory = load_factory(name)
    try:
        # Seeded, so a factory that initialises randomly builds the same weights every time.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory()
    except Exception as exc:  # the user's code: show them where it failed, then one line
        log.error("the factory of --model %s raised", name, exc_info=True)
        raise ModelError(f"--model {name}: the factory raised {one_line(exc)} (traceback above)") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {name}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    model = model.to(device).eval()
    spec = InputSpec(shape=tuple(input_shape), min_side=1, dtypes=(input_dtype,), raw=True)
    return model, f"user:{name}", spec


def load_factory(name: str) -> Callable[[], Any]:
    """The callable `package.module:factory` names; ModelError (one line) if it cannot be imported."""
    module_name, _, attr = name.partition(":")
    # The directory the server was started in, as `python -m` would have it (the infer-server
    # script does not), after everything else so that it shadows nothing installed.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelError(f"--model {name}: cannot import {module_name}: {exc} (is it on PYTHONPATH?)") from None
    except Exception as exc:
        log.error("importing %s for --model %s raised", module_name, name, exc_info=True)
        raise ModelError(f"--model {name}: importing {module_name} raised {one_line(exc)} (traceback above)") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        what = "has no" if factory is None else "has a non-callable"
        raise ModelError(f"--model {name}: module {module_name} {what} attribute {attr!r}")
    return factory
