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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from server.config import CUDA_GRAPH_MODES
from server.gate import CompileGate
from server.models.spec import IMAGENET_MEAN, IMAGENET_STD

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_NOTHING = contextlib.nullcontext()  # stateless, so one instance serves every `with`


def prepare_input(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, raw_input: bool, channels_last: bool,
                  autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """Input on the device -> what the network takes (float, normalised if it came as uint8)."""
    if raw_input:
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
    if x.dtype == torch.uint8:
        # (x / 255 - mean) / std as x * scale + shift: three passes over the batch (kernels, on a GPU), not four.
        x = x.float().mul_(scale).add_(shift)  # in place: x.float() is a new tensor
    elif autocast_dtype is None and x.dtype != torch.float32:
        x = x.float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def run_network(x: torch.Tensor, model: nn.Module, scale: torch.Tensor, shift: torch.Tensor, raw_input: bool,
                channels_last: bool, autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """Preparation, precision and the network: float32 logits."""
    x = prepare_input(x, scale, shift, raw_input, channels_last, autocast_dtype)
    if autocast_dtype is None:
        out = model(x)
        return out if out.dtype == torch.float32 else out.float()
    with torch.autocast(x.device.type, dtype=autocast_dtype):
        out = model(x)
    return out.float()


class Served(nn.Module):
    """Input preparation, precision and the network as one module: what gets compiled."""

    def __init__(self, model: nn.Module, precision: str, channels_last: bool, raw_input: bool = False):
        super().__init__()
        self.model = model
        self.raw_input = raw_input  # a user model takes its input as it came
        self.autocast_dtype = PRECISIONS[precision]
        self.channels_last = channels_last
        # Buffers, so they follow the model to its device and compile as constants.
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return prepare_input(x, self.scale, self.shift, self.raw_input, self.channels_last, self.autocast_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_network(x, self.model, self.scale, self.shift, self.raw_input, self.channels_last,
                           self.autocast_dtype)

    def eager(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """`forward` for eager calls, with this module's parts (as they are now: call it after `.to`) held in
        a closure. A module's submodules and buffers are found through its Python `__getattr__`, and four
        such lookups cost more than the noop model at batch 1."""
        model, scale, shift = self.model, self.scale, self.shift
        raw_input, channels_last, autocast_dtype = self.raw_input, self.channels_last, self.autocast_dtype
        if getattr(model, "stand_in", False):  # server/synthetic.py: never hooked, called through forward
            model = model.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            return run_network(x, model, scale, shift, raw_input, channels_last, autocast_dtype)

        return forward


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
        # Not Served's __call__: no hook is ever registered on this wrapper, and a module call's hook
        # checks cost microseconds at batch 1 (the model inside is called as a module, hooks and all).
        self._forward = self.served.eager()
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
        # The shapes a call may run without the gate or a step mark: eager ones once their first call is
        # over (gate.needed's answer, found in one lookup; the gate fills the set).
        self._warm_eager: set[tuple] = set() if self.compile or self._marks_steps else self.gate.warm

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
        if key in self._warm_eager and torch.is_inference_mode_enabled():
            return self._forward(x)  # the serving threads' common case: nothing to enter around the call
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
