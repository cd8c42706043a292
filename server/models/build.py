"""Which models the server can serve, what input each takes, and building one on a device.

- `resnet18` (the seed's model, README.md) and every other classification model in torchvision's registry (`infer-server
  --list-models`): built from the checkpoint file torchvision names for the
  model's default weights, found in `--model-dir`, or from a seeded random
  initialisation; never a download (server/models/zoo.py).
- `package.module:factory`: the user's own model, a callable returning an
  nn.Module, imported from the server's Python path; it runs the user's code in
  the server process (server/models/user.py). Its input is declared with
  `--input-shape` and `--input-dtype`.
- `noop`: logits of the right shape without running a network: measures
  transport and server overhead.
- `sleep`: a known service time per call (fixed, or exponential with a seed;
  optionally per batch row), for queueing tests and demonstrations; it sleeps
  with the GIL released, as a torch model computes (server/models/synthetic.py).

Importing this module does not import torch, so the CLI can check `--model`
before paying for it (server/models/spec.py's `check_model_syntax`, then
`check_model` here: torchvision names and checkpoints); build_model and
resolve_device import it when called. `ModelRunner`,
which runs a built model, is in server/runner.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from server.models.spec import STAND_INS, InputSpec, check_model_syntax, is_user_model

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger("infer.server.model")


class DeviceError(Exception):
    """The requested device does not exist on this machine."""


def check_model(name: str, model_dir: Path | None = None, allow_random_init: bool = False) -> None:
    """ModelError unless `name` can be built: a torchvision name torchvision knows, and its checkpoint
    present under an explicit `model_dir` (unless random weights are allowed).

    Imports torchvision only for a name that is neither a stand-in nor a user model. The user's
    module is not imported here: that runs their code, which happens once, when the model loads.
    """
    check_model_syntax(name)
    if name in STAND_INS or is_user_model(name):
        return
    from server.models import zoo

    zoo.check_name(name)
    if model_dir is not None and not allow_random_init:
        zoo.checkpoint_path(name, model_dir, allow_random_init)


@dataclass
class LoadInfo:
    source: str  # checkpoint path, "random-init(seed=0)", "noop", "sleep(fixed 10 ms)" or "user:pkg.mod:factory"
    load_s: float  # time to build the module and load its weights onto the device
    input: InputSpec = field(default_factory=InputSpec)


def build_model(
    name: str,
    device: torch.device,
    model_dir: Path | None,
    *,
    service_ms: float = 10.0,
    service_dist: str = "fixed",
    service_per_row: bool = False,
    seed: int = 0,
    allow_random_init: bool = False,
    input_shape: tuple[int, ...] = (),
    input_dtype: str = "float32",
) -> tuple[nn.Module, LoadInfo]:
    """Build model `name` in eval mode on `device`; ModelError (one line) if it cannot be.

    service_ms, service_dist, service_per_row and seed configure the sleep model
    (see server.models.synthetic.SleepModel); seed also seeds a random initialisation.
    A torchvision model whose checkpoint is missing from an explicit `model_dir` is an
    error unless `allow_random_init`; without `model_dir` it is randomly initialised.
    input_shape and input_dtype declare a user model's input.
    """
    start = time.perf_counter()
    check_model_syntax(name)
    if name in STAND_INS:
        from server.models.synthetic import NoopModel, SleepModel

        if name == "noop":
            model, source = NoopModel(), "noop"
        else:
            model = SleepModel(service_ms, service_dist, service_per_row, seed)
            source = model.describe()
        return model.to(device).eval(), LoadInfo(source, time.perf_counter() - start)
    if is_user_model(name):
        from server.models.user import build_user_model

        model, source, spec = build_user_model(name, device, seed, input_shape, input_dtype)
    else:
        from server.models import zoo

        model, source, spec = zoo.build(name, device, model_dir, seed=seed, allow_random_init=allow_random_init)
    return model, LoadInfo(source, time.perf_counter() - start, spec)


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda:0 when CUDA is present, else cpu; a CUDA device that is not there is an error."""
    import torch

    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise DeviceError(f"invalid device {spec!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec} requested but CUDA is not available on this machine")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise DeviceError(f"device type {device.type!r} not supported (use cpu, cuda:N or auto)")
    return device
