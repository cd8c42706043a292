"""CheckedInputs: a description that passed every check before is looked up, and only that exact one."""

from __future__ import annotations

import pytest
import torch

from common import codec
from server.inputs import CheckedInputs


def frames_of(t: torch.Tensor, offset: int = 0) -> tuple[list, list[memoryview]]:
    """([its description], [a frame holding its bytes, `offset` bytes into a buffer])."""
    desc, buf = codec.tensor_to_buffer(t)
    raw = bytearray(offset + len(buf))
    raw[offset:] = buf
    return [desc], [memoryview(raw)[offset:]]


class Frame:
    """What the server's frames offer: a `buffer`."""

    def __init__(self, buf: memoryview):
        self.buffer = buf


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16, torch.bfloat16])
def test_a_remembered_description_gives_the_tensor_decode_gives(dtype: torch.dtype) -> None:
    x = (torch.arange(2 * 3 * 32 * 32) % 251).to(dtype).view(2, 3, 32, 32)
    descs, bufs = frames_of(x)
    checked = CheckedInputs()
    assert checked.tensor(descs, [Frame(bufs[0])]) is None  # not checked yet
    checked.remember(descs[0], len(bufs[0]))
    got = checked.tensor(descs, [Frame(bufs[0])])
    assert got is not None and torch.equal(got, codec.decode_tensors(descs, bufs)[0]) and got.dtype == dtype


def test_only_the_exact_description_in_a_frame_of_its_size_is_looked_up() -> None:
    x = torch.zeros(1, 3, 32, 32)
    descs, bufs = frames_of(x)
    checked = CheckedInputs()
    checked.remember(descs[0], len(bufs[0]))
    frame = Frame(bufs[0])
    assert checked.tensor(descs, [frame]) is not None
    for changed in ({"shape": [True, 3, 32, 32]}, {"shape": [1.0, 3, 32, 32]}, {"frame": False}, {"frame": 1},
                    {"shm": {"region": 1}}, {"dtype": "float16"}, {"shape": [2, 3, 32, 32]}):
        assert checked.tensor([{**descs[0], **changed}], [frame]) is None, changed
    assert checked.tensor(descs, [Frame(bufs[0][:-4])]) is None  # a frame of another size
    assert checked.tensor(descs, [frame, frame]) is None and checked.tensor(descs * 2, [frame]) is None
    assert checked.tensor(tuple(descs), [frame]) is None and checked.tensor(["x"], [frame]) is None


def test_a_misaligned_frame_gives_an_aligned_copy() -> None:
    x = torch.arange(3 * 32 * 32, dtype=torch.float32).view(1, 3, 32, 32)
    descs, bufs = frames_of(x, offset=1)
    checked = CheckedInputs()
    checked.remember(descs[0], len(bufs[0]))
    got = checked.tensor(descs, [Frame(bufs[0])])
    assert got.data_ptr() % 4 == 0 and torch.equal(got, x)
