"""ModelRunner: everything between "a tensor of images on the device" and
"float32 logits on the device": uint8 normalisation, channels-last, autocast,
torch.compile, and the gate that keeps compiled calls thread-safe.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from server.gate import CompileGate
from server.model import IMAGENET_MEAN, IMAGENET_STD

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_NOTHING = contextlib.nullcontext()  # stateless, so one instance serves every `with`


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
            if hook := getattr(self.model, "before_compile", None):
                hook()  # e.g. the sleep model keeps its wait out of the graph
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
