"""torchvision's classification models, built without a download.

Every name in `torchvision.models.list_models(module=torchvision.models)` can be
served. Its weights come from the checkpoint file torchvision names for the
model's default weights (the file a download would fetch, e.g.
resnet50-11ad3fa6.pth) in `--model-dir`, or from a seeded random
initialisation, which is enough to measure speed. A checkpoint is loaded as
the seed (README.md) loads ResNet-18: the module is built
on the meta device, the file mmapped onto the target device and its tensors
assigned, not copied.

The module is built by torchvision's own builder with the weights' settings
(e.g. ViT-H/14's 518-pixel input, GoogLeNet's input transform), so a checkpoint
fits exactly as it would after a download; the builder's own strict
load_state_dict checks the file's keys and shapes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision import models

from server.models.spec import MIN_IMAGE_SIDE, InputSpec, ModelError, one_line

log = logging.getLogger("infer.server.model")

# Smallest image side at which these models still produce a feature map (the rest take MIN_IMAGE_SIDE).
MIN_SIDE: dict[str, int] = {"alexnet": 63, "inception_v3": 75}
# Models whose input size is part of the architecture: the side they need, from the built module.
FIXED_SIDE_TYPES = ("VisionTransformer", "MaxVit")
MAXVIT_SIDE = 224  # MaxVit's builder default; its partitions are sized for it


@functools.cache
def names() -> tuple[str, ...]:
    """Every classification model in torchvision's registry."""
    return tuple(models.list_models(module=models))


def check_name(name: str) -> None:
    if name not in names():
        raise ModelError(
            f"unknown model {name!r}: not built in and not a classification model of torchvision "
            f"{torchvision.__version__} (infer-server --list-models lists them)"
        )


def checkpoint_file(name: str) -> str:
    """The file name torchvision gives the model's default weights, e.g. resnet18-f37072fd.pth."""
    return default_weights(name).url.rsplit("/", 1)[-1]


def default_weights(name: str) -> Any:
    return models.get_model_weights(name).DEFAULT


def checkpoint_path(name: str, model_dir: Path | None, allow_random_init: bool) -> Path | None:
    """The checkpoint to load, or None for a random initialisation.

    ModelError when an explicit `model_dir` lacks it and random weights are not allowed:
    a run would otherwise time random weights and report a load time that measured nothing.
    """
    if model_dir is None:
        return None
    path = model_dir / checkpoint_file(name)
    if path.is_file():
        return path
    if not allow_random_init:
        raise ModelError(
            f"no checkpoint for {name} at {path} (torchvision's file for its default weights); "
            "put it there, or pass --allow-random-init to serve seeded random weights"
        )
    log.warning("no checkpoint at %s: using a seeded random initialisation", path)
    return None


def build(
    name: str, device: torch.device, model_dir: Path | None, *, seed: int = 0, allow_random_init: bool = False
) -> tuple[nn.Module, str, InputSpec]:
    """Model `name` in eval mode on `device`, where its weights came from, and the input it takes."""
    check_name(name)
    path = checkpoint_path(name, model_dir, allow_random_init)
    if path is not None:
        model, source = from_checkpoint(name, path, device), str(path)
    else:
        model, source = random_init(name, seed).to(device), f"random-init(seed={seed})"
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return model, source, input_spec(name, model)


def random_init(name: str, seed: int) -> nn.Module:
    """torchvision's architecture with its own initialisation, seeded: the same weights on every machine."""
    with torch.random.fork_rng(devices=[]), _quiet_builders():
        torch.manual_seed(seed)
        return models.get_model(name, weights=None)


def from_checkpoint(name: str, path: Path, device: torch.device) -> nn.Module:
    """The model with the weights in `path` on `device`; ModelError (one line) if the file does not fit."""
    try:
        # Older torchvision files are in the legacy (non-zip) format, which cannot be mmapped.
        state = torch.load(path, mmap=zipfile.is_zipfile(path), map_location=device, weights_only=True)
    except Exception as exc:  # whatever the file holds, the user needs one line, not torch's traceback
        raise ModelError(f"cannot read checkpoint {path}: {one_line(exc)}") from None
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    try:
        with _weights_from(state), _quiet_builders():
            model = _build_with_weights(name)
        # The builder's load copied into meta tensors (no data); assign puts the mmapped ones in place.
        # Not strict: builders drop modules they loaded (GoogLeNet's auxiliary heads), whose keys remain.
        result = model.load_state_dict(state, strict=False, assign=True)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"checkpoint {path} does not fit {name}: {one_line(exc)}") from None
    left = result.missing_keys or [n for n, t in _tensors(model) if t.is_meta]
    if left:
        raise ModelError(f"checkpoint {path} does not fit {name}: no value for {', '.join(left[:3])}")
    return model.to(device)  # a no-op for assigned tensors; moves any the builder made itself


def _build_with_weights(name: str) -> nn.Module:
    weights = default_weights(name)
    try:
        with torch.device("meta"):
            return models.get_model(name, weights=weights)
    except NotImplementedError:
        # RegNet computes its widths with tensor ops, which have no data on the meta device.
        log.info("%s cannot be built on the meta device: building it on the CPU first", name)
        return models.get_model(name, weights=weights)


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


@contextlib.contextmanager
def _weights_from(state: dict) -> Iterator[None]:
    """Builders fetch their weights through WeightsEnum.get_state_dict (a download): hand them `state` instead."""
    enum_cls = models.WeightsEnum
    original = enum_cls.get_state_dict
    enum_cls.get_state_dict = lambda self, *args, **kwargs: state  # type: ignore[method-assign]
    try:
        yield
    finally:
        enum_cls.get_state_dict = original  # type: ignore[method-assign]


@contextlib.contextmanager
def _quiet_builders() -> Iterator[None]:
    # GoogLeNet and Inception warn that their default initialisation will change, and the builder's own
    # load into meta tensors warns once per tensor that it copies nothing (assign comes after): noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter", category=UserWarning)
        yield


def input_spec(name: str, model: nn.Module) -> InputSpec:
    """The input `model` takes: [3, S, S] images, with S fixed where the architecture needs it."""
    kind = type(model).__name__
    if kind == "VisionTransformer":
        side = int(model.image_size)
        return InputSpec(shape=(3, side, side), min_side=side)
    if kind == "MaxVit":
        return InputSpec(shape=(3, MAXVIT_SIDE, MAXVIT_SIDE), min_side=MAXVIT_SIDE)
    return InputSpec(min_side=MIN_SIDE.get(name, MIN_IMAGE_SIDE))


def input_note(name: str) -> str:
    """What `--list-models` says about a model's input, without building it."""
    if name.startswith("vit_"):
        side = default_weights(name).meta.get("min_size", (224,))[0]
        return "fixed 224x224" + (f" ({side}x{side} with its checkpoint)" if side != 224 else "")
    if name.startswith("maxvit"):
        return f"fixed {MAXVIT_SIDE}x{MAXVIT_SIDE}"
    side = MIN_SIDE.get(name, MIN_IMAGE_SIDE)
    return f"any size >= {side}"


def list_models_text() -> str:
    """The `infer-server --list-models` listing: built-in models, torchvision's, and how to serve your own."""
    lines = ["Built in:", "  noop       logits without running a network (transport and server overhead)",
             "  sleep      a known service time per call (--service-ms, --service-dist)",
             f"torchvision {torchvision.__version__} classification models (inputs [B, 3, S, S]; weights: "
             "the checkpoint file in --model-dir, or a seeded random init):"]
    width = max(map(len, names()))
    lines += [f"  {n:<{width}}  {input_note(n):<28} {checkpoint_file(n)}" for n in names()]
    lines += ["Your own: --model package.module:factory --input-shape C,H,W [--input-dtype float32] "
              "(runs your code in the server)"]
    return "\n".join(lines)
