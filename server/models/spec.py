"""What a model takes and the names the server knows, without torch: the CLI and the config check
`--model` with these before paying for the import.

`InputSpec` is the input one INFER must carry for the loaded model; `ModelError` is the one-line
error a model that cannot be built raises; `one_line` makes such a line from any exception.
Building a model is server/models/build.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    import torch

    from common.protocol import Limits

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
        """`[B, 3, H, W]` for an image model: its free sides need not be equal."""
        free = self.shape.count(None)
        names = iter(("H", "W") if free == 2 else ("S",) * free)
        return f"[B, {', '.join(next(names) if d is None else str(d) for d in self.shape)}]"

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



def one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first lines of its message, whitespace collapsed."""
    text = re.sub(r"\s+", " ", str(exc)).strip()
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
