"""torchvision's models in-process: names, checkpoints found, loaded and refused, the input each takes.

Small models only (the whole registry, served: tests/server/test_zoo_serving.py, marker `zoo`).
Checkpoints are written by the tests from seeded random weights: nothing is downloaded.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torchvision import models

from server.models import zoo
from server.models.build import build_model
from server.models.spec import CHECKPOINT_NAME, InputSpec, ModelError, one_line

CPU = torch.device("cpu")


def reference(name: str, seed: int = 1, **kwargs) -> torch.nn.Module:
    """torchvision's model with seeded random weights, as a download's architecture would have it."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return models.get_model(name, weights=None, **kwargs).eval()


def write_checkpoint(model: torch.nn.Module, name: str, directory) -> None:
    torch.save(model.state_dict(), directory / zoo.checkpoint_file(name))


def test_the_registry_and_its_file_names() -> None:
    names = zoo.names()
    assert len(names) >= 70 and {"resnet18", "resnet50", "mobilenet_v3_small", "vit_b_16", "convnext_tiny"} <= set(names)
    assert zoo.checkpoint_file("resnet18") == CHECKPOINT_NAME  # the seed's file name
    assert zoo.checkpoint_file("vit_h_14").startswith("vit_h_14_swag")  # DEFAULT, whatever its tag


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet18", {}),
        # GoogLeNet's weights carry its auxiliary heads, which the builder drops after loading them.
        ("googlenet", {"aux_logits": True, "transform_input": True, "init_weights": False}),
        ("regnet_x_400mf", {}),  # cannot be built on the meta device: built on the CPU, then assigned
        ("mobilenet_v3_small", {}),
    ],
)
def test_a_checkpoint_gives_the_in_process_model_exactly(tmp_path, name: str, kwargs: dict) -> None:
    ref = reference(name, **kwargs)
    write_checkpoint(ref, name, tmp_path)
    if name == "googlenet":
        ref.aux_logits, ref.aux1, ref.aux2 = False, None, None
    model, info = build_model(name, CPU, tmp_path)
    assert info.source == str(tmp_path / zoo.checkpoint_file(name)) and not model.training
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(model(x), ref(x))


def test_random_init_is_seeded_and_never_downloads(tmp_path) -> None:
    a, info = build_model("mobilenet_v3_small", CPU, None)
    b, _ = build_model("mobilenet_v3_small", CPU, None)
    other, _ = build_model("mobilenet_v3_small", CPU, None, seed=1)
    assert info.source == "random-init(seed=0)"
    pairs = list(zip(a.state_dict().values(), b.state_dict().values()))
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), other.state_dict().values()))
    # An explicit --model-dir without the file: random weights only when asked for.
    with pytest.raises(ModelError, match="no checkpoint for mobilenet_v3_small"):
        build_model("mobilenet_v3_small", CPU, tmp_path)
    _, allowed = build_model("mobilenet_v3_small", CPU, tmp_path, allow_random_init=True)
    assert allowed.source == "random-init(seed=0)"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"garbage" * 100, "cannot read checkpoint"),
        (b"", "cannot read checkpoint"),
        ({"fc.weight": torch.zeros(3)}, "does not fit resnet18: RuntimeError: Error.s. in loading state_dict"),
        ([1, 2, 3], "holds a list, not a state dict"),
    ],
    ids=["garbage", "empty", "wrong-keys", "not-a-dict"],
)
def test_a_bad_checkpoint_is_one_line(tmp_path, content, message: str) -> None:
    path = tmp_path / CHECKPOINT_NAME
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ModelError, match=message) as caught:
        build_model("resnet18", CPU, tmp_path)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 500


def test_a_checkpoint_of_the_wrong_shape_names_the_model(tmp_path) -> None:
    torch.save(reference("resnet34").state_dict(), tmp_path / CHECKPOINT_NAME)  # resnet34's weights, resnet18's name
    with pytest.raises(ModelError, match="does not fit resnet18"):
        build_model("resnet18", CPU, tmp_path)


def test_the_input_each_architecture_takes() -> None:
    vit, info = build_model("vit_b_32", CPU, None)
    assert info.input == InputSpec(shape=(3, 224, 224), min_side=224)
    assert zoo.input_spec("maxvit_t", reference("maxvit_t")).shape == (3, 224, 224)
    assert zoo.input_spec("inception_v3", torch.nn.Identity()).min_side == 75
    assert zoo.input_spec("resnet50", torch.nn.Identity()) == InputSpec()
    with torch.inference_mode():
        assert vit(torch.zeros(1, *info.input.sample_shape(64))).shape == (1, 1000)


def test_list_models_names_every_model_and_how_to_serve_your_own() -> None:
    text = zoo.list_models_text()
    for name in zoo.names():
        assert f"  {name} " in text
    assert "vit_h_14" in text and "518x518 with its checkpoint" in text
    assert "package.module:factory --input-shape" in text


def test_one_line_collapses_a_long_message() -> None:
    line = one_line(RuntimeError("first\n\tsecond " + "x" * 1000))
    assert line.startswith("RuntimeError: first second x") and len(line) <= 320 and "\n" not in line
