"""Which models the server can serve, what input each takes, and building one on a device.

- `resnet18` (the seed's model; the seed is PyTorch's `benchmarks/inference`) and
  every other classification model in torchvision's registry (`infer-server
  --list-models`): built from the checkpoint file torchvision names for the
  model's default weights, found in `--model-dir`, or from a seeded random
  initialisation; never a download (server/zoo.py).
- `package.module:factory`: the user's own model, a callable returning an
  nn.Module, imported from the server's Python path; it runs the user's code in
  the server process (server/user_model.py). Its input is declared with
  `--input-shape` and `--input-dtype`.
- `noop`: logits of the right shape without running a network: measures
  transport and server overhead.
- `sleep`: a known service time per call (fixed, or exponential with a seed;
  optionally per batch row), for queueing tests and demonstrations; it sleeps
  with the GIL released, as a torch model computes (server/synthetic.py).

Importing this module does not import torch, so the CLI can check `--model`
before paying for it (`check_model_syntax`); `check_model` (torchvision names and
checkpoints), build_model and resolve_device import it when called. `ModelRunner`,
which runs a built model, is in server/runner.py.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from common.protocol import Limits

log = logging.getLogger("infer.server.model")

MODEL_NAMES: tuple[str, ...] = ("resnet18", "noop", "sleep")  # built in; torchvision's others and user models too
STAND_INS: tuple[str, ...] = ("noop", "sleep")  # no network, no weights
SERVICE_DISTS: tuple[str, ...] = ("fixed", "exp")  # --service-dist of the sleep model
CHECKPOINT_NAME = "resnet18-f37072fd.pth"  # torchvision's file name, as in the seed
INIT_SEED = 0
MIN_IMAGE_SIDE = 32  # ResNet's stem and pools need a few pixels to produce a feature map at all
IMAGE_INPUT_DTYPES: tuple[str, ...] = ("float32", "uint8", "float16", "bfloat16")
# torchvision's ImageNet normalisation, applied on the device to uint8 pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

USER_MODEL_PATTERN = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
# What a torchvision model name looks like; whether torchvision has it is checked when the model loads.
TORCHVISION_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


class DeviceError(Exception):
    """The requested device does not exist on this machine."""


class ModelError(ValueError):
    """The model cannot be built as asked (unknown name, missing or unreadable checkpoint, a failing factory).

    The message is one line for the user. A ValueError, so that start-up reports it as bad usage.
    """


def is_user_model(name: str) -> bool:
    """`package.module:factory`: the user's own model."""
    return ":" in name


def check_model_syntax(name: str) -> None:
    """Cheap (no torch): ValueError unless `name` is built in, looks like a torchvision name, or is pkg.mod:factory."""
    if name in MODEL_NAMES or USER_MODEL_PATTERN.fullmatch(name) or TORCHVISION_NAME_PATTERN.fullmatch(name):
        return
    raise ValueError(
        f"{name!r} is not a model: use {', '.join(MODEL_NAMES)}, another torchvision classification model "
        "(infer-server --list-models) or package.module:factory for your own"
    )


def check_model(name: str, model_dir: Path | None = None, allow_random_init: bool = False) -> None:
    """ModelError unless `name` can be built: a torchvision name torchvision knows, and its checkpoint
    present under an explicit `model_dir` (unless random weights are allowed).

    Imports torchvision only for a name that is neither a stand-in nor a user model. The user's
    module is not imported here: that runs their code, which happens once, when the model loads.
    """
    check_model_syntax(name)
    if name in STAND_INS or is_user_model(name):
        return
    from server import zoo

    zoo.check_name(name)
    if model_dir is not None and not allow_random_init:
        zoo.checkpoint_path(name, model_dir, allow_random_init)


def _bad_input(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message)


@dataclass(frozen=True)
class InputSpec:
    """What one INFER input must look like for the loaded model: `[B, *shape]` of one of `dtypes`.

    A None in `shape` is a free image side, at least `min_side` pixels (and at most the
    server's limit); an int is a size the model needs exactly (ViT's 224). `raw` inputs
    reach the model as they came (a user model); otherwise uint8 means pixels that the
    server converts and normalises.
    """

    shape: tuple[int | None, ...] = (3, None, None)
    min_side: int = MIN_IMAGE_SIDE
    dtypes: tuple[str, ...] = IMAGE_INPUT_DTYPES
    raw: bool = False

    def sample_shape(self, side: int) -> tuple[int, ...]:
        """One sample's shape with each free side set to `side` (e.g. for warm-up inputs)."""
        return tuple(side if dim is None else dim for dim in self.shape)

    def sample_bytes(self, side: int, dtype_size: int) -> int:
        return math.prod(self.sample_shape(side)) * dtype_size

    def warmup_dtype(self, requested: str) -> str:
        """`requested` if the model takes it, else the first dtype it takes."""
        return requested if requested in self.dtypes else self.dtypes[0]

    def to_info(self) -> dict[str, Any]:
        """The INFO keys that describe the input: `input_shape` ([C, H, W], null = free), its minimum and dtypes."""
        return {"input_shape": list(self.shape), "input_min_side": self.min_side, "input_dtypes": list(self.dtypes)}

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> InputSpec:
        """From INFO keys (`to_info`); an image model's defaults where they are absent."""
        default = cls()
        shape = info.get("input_shape")
        return cls(
            shape=tuple(shape) if shape is not None else default.shape,
            min_side=info.get("input_min_side") or default.min_side,
            dtypes=tuple(info.get("input_dtypes") or default.dtypes),
        )

    def describe(self) -> str:
        dims = ", ".join("S" if d is None else str(d) for d in self.shape)
        return f"[B, {dims}]"

    def check(self, t: torch.Tensor, limits: Limits) -> None:
        """ProtocolError (BAD_REQUEST) unless tensor `t` is an input this model takes. Runs per request."""
        name = str(t.dtype).removeprefix("torch.")  # the wire's dtype names are torch's
        if name not in self.dtypes:
            raise _bad_input(f"input dtype {name} not accepted; use one of {sorted(self.dtypes)}")
        if t.dim() != len(self.shape) + 1:
            raise _bad_input(f"input must be {self.describe()}, got rank {t.dim()}")
        if not 1 <= t.shape[0] <= limits.max_batch:
            raise _bad_input(f"batch size {t.shape[0]} outside [1, {limits.max_batch}]")
        got = tuple(t.shape[1:])
        if len(got) == 3 and self.shape[0] == 3 and got[0] != 3:
            raise _bad_input(f"input must have 3 channels, got {got[0]}")
        if any(need is not None and dim != need for dim, need in zip(got, self.shape)):
            raise _bad_input(f"input must be {self.describe()}, got [B, {', '.join(map(str, got))}]")
        sides = [dim for dim, need in zip(got, self.shape) if need is None]
        if not all(self.min_side <= side <= limits.max_image_side for side in sides):
            raise _bad_input(f"image size {'x'.join(map(str, sides))} outside [{self.min_side}, {limits.max_image_side}]")


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
    (see server.synthetic.SleepModel); seed also seeds a random initialisation.
    A torchvision model whose checkpoint is missing from an explicit `model_dir` is an
    error unless `allow_random_init`; without `model_dir` it is randomly initialised.
    input_shape and input_dtype declare a user model's input.
    """
    start = time.perf_counter()
    check_model_syntax(name)
    if name in STAND_INS:
        from server.synthetic import NoopModel, SleepModel

        if name == "noop":
            model, source = NoopModel(), "noop"
        else:
            model = SleepModel(service_ms, service_dist, service_per_row, seed)
            source = model.describe()
        return model.to(device).eval(), LoadInfo(source, time.perf_counter() - start)
    if is_user_model(name):
        from server.user_model import build_user_model

        model, source, spec = build_user_model(name, device, seed, input_shape, input_dtype)
    else:
        from server import zoo

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
