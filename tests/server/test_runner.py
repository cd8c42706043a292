"""ModelRunner: one compiled callable for input preparation and the network; what INFO says about numerics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from server.models.spec import IMAGENET_MEAN, IMAGENET_STD
from server.runner import ModelRunner, backend_facts

CPU = torch.device("cpu")


class TinyNet(nn.Module):
    """A convolution, a pool and a linear layer: a network in miniature, quick to compile."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x).relu(), 1), 1))


def pixels(rows: int = 2, side: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (rows, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def test_uint8_pixels_are_normalised_with_imagenet_statistics() -> None:
    x = pixels()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    prepared = ModelRunner(TinyNet(), CPU, channels_last=True).prepare(x)
    assert prepared.dtype == torch.float32 and prepared.is_contiguous(memory_format=torch.channels_last)
    # Computed as x * (1 / (255 std)) - mean / std: the same to rounding (an ulp or two of values up to ~2.6).
    assert torch.allclose(prepared, (x.float() / 255 - mean) / std, rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_compiled_callable_takes_the_raw_input_and_does_the_preparation(channels_last: bool) -> None:
    graphs: list[torch.fx.GraphModule] = []

    def recording_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    net = TinyNet()
    compiled = ModelRunner(net, CPU, compile=True, channels_last=channels_last, compile_backend=recording_backend)
    x = pixels()
    out = compiled(x)
    (graph,) = graphs  # one graph: no break between the preparation and the network
    inputs = [n.meta["example_value"] for n in graph.graph.nodes if n.op == "placeholder"]
    assert any(t.dtype == torch.uint8 and t.shape == x.shape for t in inputs)  # the wire's pixels go in
    targets = {str(n.target) for n in graph.graph.nodes if n.op in ("call_function", "call_method")}
    assert {"float", "mul_", "add_"} <= targets and any("conv2d" in t for t in targets)
    eager = ModelRunner(TinyNet(), CPU, channels_last=channels_last)
    assert torch.equal(out, eager(x)) and out.dtype == torch.float32


@pytest.mark.integration  # inductor runs the C++ compiler
def test_inductor_compiled_output_equals_eager_prepare_and_forward() -> None:
    x = pixels(rows=2, side=16)
    eager = ModelRunner(TinyNet(), CPU, channels_last=True)
    expected = eager.served.model(eager.prepare(x))
    out = ModelRunner(TinyNet(), CPU, compile=True, channels_last=True)(x)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_backend_facts_name_the_numerics_in_force() -> None:
    facts = backend_facts(CPU)
    assert facts["torch_version"] == torch.__version__ and facts["cuda_version"] == torch.version.cuda
    assert facts["tf32_conv"] is torch.backends.cudnn.allow_tf32
    assert facts["tf32_matmul"] is torch.backends.cuda.matmul.allow_tf32
    assert facts["cudnn_benchmark"] is torch.backends.cudnn.benchmark
    assert facts["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert facts["cuda_sync"] is None  # CPU: nothing waits on a device
    assert facts["cudnn_version"] is None or isinstance(facts["cudnn_version"], int)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph compile modes need a GPU")
def test_reduce_overhead_replays_give_each_call_its_own_output() -> None:
    device = torch.device("cuda")
    runner = ModelRunner(TinyNet().to(device), device, compile=True, compile_mode="reduce-overhead")
    with torch.inference_mode():
        outs = [runner(torch.full((2, 3, 8, 8), v, dtype=torch.uint8, device=device)).cpu() for v in (0, 255, 0)]
    assert torch.equal(outs[0], outs[2]) and not torch.equal(outs[0], outs[1])
