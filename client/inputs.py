"""Where the measured INFER requests' input batches travel: ZeroMQ frames, or shared memory.

The measurement loop (client/loop.py) asks an input source for each request's
frames (`take`), tells it when the request is over (`done`: answered or lost)
and when a lost server answers again (`reconnected`). `FrameInputs` sends each
pooled batch as a frame after the header, the default; `ShmInputs`
(client/shm_transport.py, `--transport shm`) sends only a header pointing into
a shared-memory region registered with the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from common import codec
from common.protocol import InferHeader, MsgType

if TYPE_CHECKING:
    import torch

    from client.config import ClientConfig
    from client.loadgen import InputPool
    from client.transport import Backend


class InputSource(Protocol):
    def take(self, backend: int, request_id: int) -> tuple[bytes, InferHeader, Sequence[Any]]:
        """(control frame, header to fill with id and ts, frames after the header) of the next request to `backend`.

        Any copy it makes (`--shm-refresh`) happens here, before the send time is taken.
        """

    def ready(self, backend: int) -> bool:
        """Whether `take` can be called for `backend` now (a free slot)."""

    def done(self, request_id: int) -> None:
        """The request was answered or counted lost: its input may be reused."""

    def reconnected(self, backend: int) -> None:
        """A lost server answers again (maybe a new process): redo any per-server set-up."""

    def close(self) -> None:
        """Release what was set up (also after an error)."""


class FrameInputs:
    """Each pooled batch as a ZeroMQ frame, encoded once and reused for every request."""

    def __init__(self, pool: InputPool):
        self._inputs = [_prebuilt(t) for t in pool.batches]
        self._next = 0

    def take(self, backend: int, request_id: int) -> tuple[bytes, InferHeader, Sequence[Any]]:
        item = self._inputs[self._next]
        self._next = (self._next + 1) % len(self._inputs)
        return item

    def ready(self, backend: int) -> bool:
        return True

    def done(self, request_id: int) -> None:
        pass

    def reconnected(self, backend: int) -> None:
        pass

    def close(self) -> None:
        pass


def _prebuilt(batch: torch.Tensor) -> tuple[bytes, InferHeader, tuple[zmq.Frame]]:
    """An input batch encoded once, so that per send only its header's id and ts change.

    The batch becomes one zmq.Frame, sent again and again: a send then shares the
    frame's buffer by reference count, where a zero-copy send of the raw buffer
    would register it with pyzmq's garbage-collector thread and wake that thread
    each time libzmq lets go of it. The header object is reused too (the loop
    packs it right after setting id and ts).
    """
    desc, buf = codec.tensor_to_buffer(batch, 0)
    return codec.control_frame(MsgType.INFER), InferHeader([desc]), (zmq.Frame(buf),)


def open_inputs(config: ClientConfig, backends: list[Backend], infos: list[dict], pool: InputPool) -> InputSource:
    """The input source `config.transport` asks for, set up with every server (ClientError if it cannot be)."""
    if config.transport != "shm":
        return FrameInputs(pool)
    from client.shm_transport import ShmInputs

    return ShmInputs.open(backends, infos, pool, config)
