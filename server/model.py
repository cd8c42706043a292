"""Which models the server can serve, and building one on a device.

- `resnet18`: as in the seed (PyTorch's `benchmarks/inference`), from torchvision's
  checkpoint in `--model-dir` or a seeded random initialisation, never a download.
- `noop`: logits of the right shape without running a network: measures
  transport and server overhead.
- `sleep`: a known service time per call (fixed, or exponential with a seed;
  optionally per batch row), for queueing tests and demonstrations; it sleeps
  with the GIL released, as a torch model computes (server/synthetic.py).

Importing this module does not import torch, so the CLI can validate `--model`
against MODEL_NAMES before paying for it; build_model and resolve_device import
it when called. `ModelRunner`, which runs a built model, is in server/runner.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger("infer.server.model")

MODEL_NAMES: tuple[str, ...] = ("resnet18", "noop", "sleep")
SERVICE_DISTS: tuple[str, ...] = ("fixed", "exp")  # --service-dist of the sleep model
CHECKPOINT_NAME = "resnet18-f37072fd.pth"  # torchvision's file name, as in the seed
INIT_SEED = 0
# torchvision's ImageNet normalisation, applied on the device to uint8 pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DeviceError(Exception):
    """The requested device does not exist on this machine."""


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


@dataclass
class LoadInfo:
    source: str  # checkpoint path, "random-init(seed=0)", "noop" or "sleep(fixed 10 ms)"
    load_s: float  # time to build the module and load its weights onto the device


def build_model(
    name: str,
    device: torch.device,
    model_dir: Path | None,
    *,
    service_ms: float = 10.0,
    service_dist: str = "fixed",
    service_per_row: bool = False,
    seed: int = 0,
) -> tuple[nn.Module, LoadInfo]:
    """Build model `name` (one of MODEL_NAMES) in eval mode on `device`.

    service_ms, service_dist, service_per_row and seed configure the sleep model
    (see server.synthetic.SleepModel) and are ignored by the others.
    """
    start = time.perf_counter()
    if name in ("noop", "sleep"):
        from server.synthetic import NoopModel, SleepModel

        if name == "noop":
            model, source = NoopModel(), "noop"
        else:
            model = SleepModel(service_ms, service_dist, service_per_row, seed)
            source = model.describe()
        return model.to(device).eval(), LoadInfo(source, time.perf_counter() - start)
    if name != "resnet18":
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODEL_NAMES)})")
    model, source = _build_resnet18(device, model_dir)
    return model, LoadInfo(source, time.perf_counter() - start)


def _build_resnet18(device: torch.device, model_dir: Path | None) -> tuple[nn.Module, str]:
    import torch
    from torchvision.models.resnet import BasicBlock, ResNet

    checkpoint = model_dir / CHECKPOINT_NAME if model_dir else None
    if checkpoint is not None and checkpoint.is_file():
        # As in the seed: no allocation on the meta device, weights mmapped
        # straight to the device and assigned, not copied.
        with torch.device("meta"):
            model = ResNet(BasicBlock, [2, 2, 2, 2])
        state = torch.load(checkpoint, mmap=True, map_location=device, weights_only=True)
        model.load_state_dict(state, assign=True)
        source = str(checkpoint)
    else:
        if model_dir is not None:
            log.warning("no checkpoint at %s: using a seeded random initialisation", checkpoint)
        # Never a download: a deterministic init is enough for a speed benchmark.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            model = ResNet(BasicBlock, [2, 2, 2, 2])
        model = model.to(device)
        source = f"random-init(seed={INIT_SEED})"
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return model, source
