"""The model behind the server: ResNet-18 (as in the seed) or a no-op stand-in.

`ModelRunner` owns everything between "a tensor of images on the device" and
"float32 logits on the device": uint8 normalisation, channels-last, autocast,
torch.compile, and the gate that keeps compiled calls thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("infer.server.model")

CHECKPOINT_NAME = "resnet18-f37072fd.pth"  # torchvision's file name, as in the seed
NUM_CLASSES = 1000
INIT_SEED = 0
# torchvision's ImageNet normalisation, applied on the device to uint8 pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(Exception):
    """The requested device does not exist on this machine."""


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda:0 when CUDA is present, else cpu; a CUDA device that is not there is an error."""
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


class NoopModel(nn.Module):
    """Returns logits of the right shape without running a network.

    Row i is filled with the first element of sample i, so that tests can check
    that each caller gets its own rows back (e.g. through dynamic batching).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A [B, 1000] view whose row i repeats sample i's first element (stride 0
        # along the row), then one copy: 3 torch calls, half the time of
        # reshape/slice/expand, which counts when this stands in for the model.
        rows = x.as_strided((x.shape[0], NUM_CLASSES), (x.stride(0), 0))
        return rows.float().contiguous()


@dataclass
class LoadInfo:
    source: str  # checkpoint path, "random-init(seed=0)" or "noop"
    load_s: float  # time to build the module and load its weights onto the device


def build_model(name: str, device: torch.device, model_dir: Path | None) -> tuple[nn.Module, LoadInfo]:
    start = time.perf_counter()
    if name == "noop":
        return NoopModel().to(device).eval(), LoadInfo("noop", time.perf_counter() - start)
    if name != "resnet18":
        raise ValueError(f"unknown model {name!r}")
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
    return model, LoadInfo(source, time.perf_counter() - start)


class CompileGate:
    """Makes concurrent calls of a torch.compile'd module safe.

    torch.compile is not thread-safe (pytorch#136833): compiling a new input shape
    mutates Dynamo's caches while other threads may be reading them. Calls for a
    shape that has already run go through concurrently; the first call for a new
    shape waits until no other call is running and runs alone, so compilation
    happens on one thread at a time with nothing else in the compiled code.
    New shapes get priority so a stream of warm calls cannot starve them.

    CUDA-graph compile modes (reduce-overhead, max-autotune) assert under any
    concurrent call (pytorch#123177): `serialize_all` runs every call alone.
    """

    def __init__(self, exclusive_new_shapes: bool, serialize_all: bool = False):
        self._exclusive_new_shapes = exclusive_new_shapes
        self._serial = threading.Lock() if serialize_all else _NOTHING
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False
        self._waiting_new = 0
        self._starting: set[tuple] = set()
        self.warm: set[tuple] = set()
        self.first_call_s: dict[str, float] = {}

    def needed(self, key: tuple) -> bool:
        """False when a call may skip the gate: nothing compiles, nothing is serialised,
        and this shape's first call (whose time is recorded) is over."""
        return self._exclusive_new_shapes or self._serial is not _NOTHING or key not in self.warm

    @contextlib.contextmanager
    def enter(self, key: tuple) -> Iterator[bool]:
        """Yields True for the first call of `key` (the one that compiles, when compile is on)."""
        with self._serial:
            with self._shared_or_exclusive(key) as first:
                yield first

    @contextlib.contextmanager
    def _shared_or_exclusive(self, key: tuple) -> Iterator[bool]:
        with self._cond:
            first = key not in self.warm and key not in self._starting
            if first:
                self._starting.add(key)
                if self._exclusive_new_shapes:
                    self._waiting_new += 1
                    while self._active or self._exclusive:
                        self._cond.wait()
                    self._waiting_new -= 1
                    self._exclusive = True
            elif self._exclusive_new_shapes:
                while self._exclusive or self._waiting_new or key not in self.warm:
                    self._cond.wait()
            self._active += 1
        start = time.perf_counter()
        try:
            yield first
        finally:
            with self._cond:
                self._active -= 1
                if first:
                    self._starting.discard(key)
                    self.warm.add(key)
                    self.first_call_s[_shape_label(key)] = time.perf_counter() - start
                    self._exclusive = False
                self._cond.notify_all()


_NOTHING = contextlib.nullcontext()  # stateless, so one instance serves every `with`


def _shape_label(key: tuple) -> str:
    dtype, shape = key
    return f"{str(dtype).removeprefix('torch.')}[{','.join(map(str, shape))}]"


@dataclass
class ModelRunner:
    """Runs the model on its device: input preparation, precision, compile."""

    model: nn.Module
    device: torch.device
    compile: bool = False
    compile_mode: str = "default"
    precision: str = "fp32"
    channels_last: bool = False
    serialize_calls: bool = False
    gate: CompileGate = field(init=False)
    _mean: torch.Tensor = field(init=False)
    _std: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._forward = self.model
        if self.compile:
            # dynamic=False: one specialised graph per batch shape, as the seed
            # measured; each new shape compiles on its first call.
            self._forward = torch.compile(self.model, mode=self.compile_mode, dynamic=False)
        self.gate = CompileGate(exclusive_new_shapes=self.compile, serialize_all=self.serialize_calls)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Input on the device -> what the network takes (float, normalised if it came as uint8)."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0).sub_(self._mean).div_(self._std)
        elif self.precision == "fp32" and x.dtype != torch.float32:
            x = x.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] on self.device -> float32 logits [B, 1000] on self.device."""
        key = (x.dtype, x.shape)
        autocast_dtype = PRECISIONS[self.precision]
        # Serving threads run in inference mode throughout; entering it per call costs ~4 us.
        inference = _NOTHING if torch.is_inference_mode_enabled() else torch.inference_mode()
        with self.gate.enter(key) if self.gate.needed(key) else _NOTHING, inference:
            x = self.prepare(x)
            if autocast_dtype is None:
                out = self._forward(x)
            else:
                with torch.autocast(self.device.type, dtype=autocast_dtype):
                    out = self._forward(x)
            return out.float()

    def warm_up(self, batch_sizes: list[int], image_size: int, dtype: torch.dtype) -> float:
        """Run (and so compile) each batch shape once before serving; returns seconds spent."""
        start = time.perf_counter()
        for b in batch_sizes:
            x = torch.zeros(b, 3, image_size, image_size, dtype=dtype, device=self.device)
            self(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    @staticmethod
    def compiled_graphs() -> int:
        """Graphs Dynamo compiled in this process (recompilations = this - 1)."""
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
