"""torchvision's models and a user's model served by real infer-server processes.

Representative models by default (one CNN, one mobile net, one ViT at its fixed
224 pixels, a user factory); every torchvision classification model only with
`-m zoo` (minutes: one server each, some with 600M parameters). Checkpoints are
written by the tests from seeded random weights: nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pytest
import torch
import zmq

from client.transport import Backend, ClientError
from common.protocol import MsgType
from server.models import zoo
from server.models.build import build_model
from server.models.spec import InputSpec
from tests.server.test_zoo import reference, write_checkpoint
from tests.support import run_cli

pytestmark = pytest.mark.integration  # every test here starts a process

CPU_SERVER = ("--device", "cpu", "--no-compile", "--num-workers", "0")
REPLY_TIMEOUT_S = 120.0


@contextlib.contextmanager
def backend(endpoint: str) -> Iterator[Backend]:
    ctx = zmq.Context()
    b = Backend(ctx, endpoint)
    try:
        yield b
    finally:
        b.close()
        ctx.term()


def infer(b: Backend, x: torch.Tensor) -> torch.Tensor:
    return b.request(MsgType.INFER, {"ts": [0, 0]}, timeout_s=REPLY_TIMEOUT_S, tensors=(x,)).tensors[0]


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("name", "side", "batch"), [("resnet50", 64, 2), ("mobilenet_v3_small", 64, 2), ("vit_b_16", 224, 1)]
)
def test_served_logits_equal_torchvision_for_a_checkpoint(server_factory, tmp_path, name, side, batch) -> None:
    ref = reference(name, seed=7)
    write_checkpoint(ref, name, tmp_path)  # --model-dir holds it; random weights are not allowed
    s = server_factory(*CPU_SERVER, "--model", name, "--model-dir", str(tmp_path))
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(3))
    with backend(s.endpoint) as b:
        info = b.hello(30)
        assert info["model"] == name and info["model_source"] == str(tmp_path / zoo.checkpoint_file(name))
        fixed = name.startswith("vit_")
        assert info["input_shape"] == ([3, 224, 224] if fixed else [3, None, None])
        logits = infer(b, x)
        if fixed:  # another size is a bad request, answered, and the server goes on serving
            with pytest.raises(ClientError, match=r"BAD_REQUEST: input must be \[B, 3, 224, 224\]"):
                infer(b, torch.zeros(1, 3, 64, 64))
            assert infer(b, x).shape == (batch, 1000)
    with torch.inference_mode():
        expected = ref(x)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_the_client_refuses_a_model_that_cannot_take_its_inputs(server_factory) -> None:
    s = server_factory(*CPU_SERVER, "--model", "vit_b_32")
    proc = run_cli("client", "--server", s.endpoint, "--batch-size", "1", "--num-iters", "1", "-q")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "vit_b_32 takes inputs [B, 3, 224, 224]" in last_line(proc.stderr)
    assert last_line(proc.stderr).endswith("run with --image-size 224")
    ok = run_cli("client", "--server", s.endpoint, "--batch-size", "1", "--num-iters", "2", "--image-size", "224",
                 "-q", "--json")
    assert ok.returncode == 0, ok.stderr


def test_a_missing_checkpoint_under_model_dir_is_an_error_unless_random_init_is_allowed(server_factory, tmp_path):
    proc = run_cli("server", *CPU_SERVER, "--model", "mobilenet_v3_small", "--model-dir", str(tmp_path),
                   "--bind", "tcp://127.0.0.1:*")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc.stderr).startswith("Error: model (--model): no checkpoint for mobilenet_v3_small at ")
    assert "--allow-random-init" in last_line(proc.stderr)
    s = server_factory(*CPU_SERVER, "--model", "mobilenet_v3_small", "--model-dir", str(tmp_path),
                       "--allow-random-init")
    with backend(s.endpoint) as b:
        assert b.hello(30)["model_source"] == "random-init(seed=0)"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--model", "resnet99"), 2, "Error: model (--model): unknown model 'resnet99'"),
        (("--model", "Res-Net"), 2, "Error: model (--model): 'Res-Net' is not a model"),
        (("--model", "resnet18", "--model-dir", "GARBAGE"), 1, "Error: cannot read checkpoint"),
    ],
)
def test_a_model_that_cannot_be_served_is_one_line(tmp_path, args, code: int, message: str) -> None:
    args = tuple(str(tmp_path) if a == "GARBAGE" else a for a in args)
    (tmp_path / zoo.checkpoint_file("resnet18")).write_bytes(b"not a checkpoint")
    proc = run_cli("server", *CPU_SERVER, *args, "--bind", "tcp://127.0.0.1:*")
    assert proc.returncode == code and "Traceback" not in proc.stderr
    assert last_line(proc.stderr).startswith(message)


def test_list_models_prints_every_torchvision_model() -> None:
    proc = run_cli("server", "--list-models")
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert set(zoo.names()) | {"noop", "sleep"} <= listed


USER_MODULE = '''
import torch
from torch import nn


class Scaled(nn.Module):
    """Not an image model: [B, 1, 20, 30] in, [B, 5] out."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(20 * 30, 5)

    def forward(self, x):
        return self.linear(x.flatten(1)) * 2


def make_net():
    return Scaled()
'''


def test_a_user_factory_in_a_temporary_package_is_served(server_factory, tmp_path, monkeypatch) -> None:
    package = tmp_path / "user_nets_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scaled.py").write_text(USER_MODULE)
    name = "user_nets_pkg.scaled:make_net"
    s = server_factory("--device", "cpu", "--no-compile", "--model", name, "--input-shape", "1,20,30",
                       "--warmup-batch-sizes", "2", "--max-batch-size", "4", env={"PYTHONPATH": str(tmp_path)})
    x = torch.randn(3, 1, 20, 30, generator=torch.Generator().manual_seed(1))
    with backend(s.endpoint) as b:
        info = b.hello(30)
        assert info["model_source"] == f"user:{name}"
        assert (info["input_shape"], info["input_dtypes"]) == ([1, 20, 30], ["float32"])
        logits = infer(b, x)
        with pytest.raises(ClientError, match=r"BAD_REQUEST: input must be \[B, 1, 20, 30\]"):
            infer(b, torch.zeros(1, 3, 64, 64))
    # infer-client sends what the model takes once told, and says how to tell it otherwise.
    refused = run_cli("client", "--server", s.endpoint, "--batch-size", "2", "--num-iters", "2", "-q")
    assert refused.returncode != 0 and "run with --input-shape 1,20,30" in refused.stderr, refused.stderr
    served = run_cli("client", "--server", s.endpoint, "--batch-size", "2", "--num-iters", "4",
                     "--input-shape", "1,20,30", "-q")
    assert served.returncode == 0, served.stderr
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        model, _ = build_model(name, torch.device("cpu"), None, input_shape=(1, 20, 30))  # seeded as the server
        with torch.inference_mode():
            torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)
    finally:
        for module in ("user_nets_pkg", "user_nets_pkg.scaled"):
            sys.modules.pop(module, None)


@pytest.mark.zoo
@pytest.mark.parametrize("name", zoo.names())
def test_every_torchvision_model_is_served(server_factory, name: str) -> None:
    s = server_factory(*CPU_SERVER, "--model", name)
    with backend(s.endpoint) as b:
        spec = InputSpec.from_info(b.hello(60))
        x = torch.randn(1, *spec.sample_shape(spec.min_side))  # the smallest image it takes
        logits = infer(b, x)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
