"""ModelRunner: everything between "a tensor of images on the device" and
"float32 logits on the device": uint8 normalisation, channels-last, autocast,
torch.compile, and the gate that keeps compiled calls thread-safe.

With compile on, one compiled callable does all of it (`Served`): the
normalisation and the layout change fuse into the network's first kernels
instead of running as separate passes over the batch before it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from server.config import CUDA_GRAPH_MODES
from server.gate import CompileGate
from server.models.spec import IMAGENET_MEAN, IMAGENET_STD

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_NOTHING = contextlib.nullcontext()  # stateless, so one instance serves every `with`


class Served(nn.Module):
    """Input preparation, precision and the network as one module: what gets compiled."""

    def __init__(self, model: nn.Module, precision: str, channels_last: bool, raw_input: bool = False):
        super().__init__()
        self.model = model
        self.raw_input = raw_input  # a user model takes its input as it came
        self.autocast_dtype = PRECISIONS[precision]
        self.channels_last = channels_last
        # Buffers, so they follow the model to its device and compile as constants.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Input on the device -> what the network takes (float, normalised if it came as uint8)."""
        if self.raw_input:
            return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0).sub_(self.mean).div_(self.std)  # in place: x.float() is a new tensor
        elif self.autocast_dtype is None and x.dtype != torch.float32:
            x = x.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        if self.autocast_dtype is None:
            return self.model(x).float()
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            out = self.model(x)
        return out.float()


@dataclass
class ModelRunner:
    """Runs the model on its device: input preparation, precision, compile."""

    model: nn.Module
    device: torch.device
    compile: bool = False
    compile_mode: str = "default"
    precision: str = "fp32"
    channels_last: bool = False
    compile_backend: Any = "inductor"  # tests pass a backend that records the graph it is given
    raw_input: bool = False
    gate: CompileGate = field(init=False)
    served: Served = field(init=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.served = Served(self.model, self.precision, self.channels_last, self.raw_input).to(self.device)
        self._forward = self.served
        if self.compile:
            if hook := getattr(self.model, "before_compile", None):
                hook()  # e.g. the sleep model keeps its wait out of the graph
            # dynamic=False: one specialised graph per input dtype and batch shape, as the
            # seed (PyTorch's benchmarks/inference) measured; each compiles on its first call.
            self._forward = torch.compile(self.served, mode=self.compile_mode, dynamic=False,
                                          backend=self.compile_backend)
        # Each call of a CUDA-graph mode is a new step: its outputs are copied off the
        # device before the next call, so the graph's output memory may be reused.
        self._marks_steps = self.cuda_graphs and self.device.type == "cuda"
        self.gate = CompileGate(exclusive_new_shapes=self.compile)

    @property
    def cuda_graphs(self) -> bool:
        """True when compiled calls are captured and replayed as CUDA graphs (on CUDA): on the
        thread that warmed them up, one call at a time, so the server gives them one thread."""
        return self.compile and self.compile_mode in CUDA_GRAPH_MODES

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """What the compiled callable does to its input before the network (eagerly, for tests)."""
        return self.served.prepare(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] on self.device -> float32 logits [B, 1000] on self.device."""
        key = (x.dtype, x.shape)
        # Serving threads run in inference mode throughout; entering it per call costs ~4 us.
        inference = _NOTHING if torch.is_inference_mode_enabled() else torch.inference_mode()
        with self.gate.enter(key) if self.gate.needed(key) else _NOTHING, inference:
            if self._marks_steps:
                torch.compiler.cudagraph_mark_step_begin()
            return self._forward(x)

    def warm_up(self, batch_sizes: list[int], image_size: int, dtype: torch.dtype) -> float:
        """Run (and so compile) each batch shape once on the calling thread; returns seconds spent.

        The server warms up through its worker pool instead (server/workers.py), so that
        every prediction thread's stream and buffers are ready; this is for callers that run
        the model on one thread of their own (benchmarks/device/ceiling.py).
        """
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


def backend_facts(device: torch.device) -> dict[str, Any]:
    """The numerics and library versions this process computes with, for INFO (and so every result).

    TF32 trades float32 precision for speed on Ampere and later: `tf32_conv` for cuDNN
    convolutions, `tf32_matmul` for matrix multiplies (`float32_matmul_precision` "high" or
    "medium" allows it too). The flags are read on CPU as well; they only act on CUDA.
    """
    cudnn = torch.backends.cudnn
    try:
        cudnn_version = cudnn.version() if cudnn.is_available() else None
    except RuntimeError:  # a build whose cuDNN cannot be loaded here
        cudnn_version = None
    return {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": cudnn_version,
        "tf32_conv": bool(cudnn.allow_tf32),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": bool(cudnn.benchmark),
        # How a prediction thread waits for its device work: blocking-sync CUDA events
        # sleep in the driver; the default (spin) would burn a core per thread.
        "cuda_sync": "blocking-event" if device.type == "cuda" else None,
    }
