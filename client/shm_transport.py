"""`--transport shm`: the input batches in a shared-memory region, each INFER only a reference.

After HELLO, for each server: check that it shares this host's /dev/shm (INFO's
`shm`), create one region (common/shm.py) with a slot per pooled input batch and
at least as many slots as requests may be in flight, write the batches into it
once, and register it (SHM_REGISTER, with this process's pid so the server
releases it the moment this process dies). Each INFER then carries a header
naming (handle, offset, nbytes) and no tensor frame; the logits still come
back inline. With `--shm-refresh` the next pooled batch is copied into a free
slot before every send, inside the measured latency, so the producer's copy is
counted as it would be in an application. On exit (errors included) each region
is unregistered and unlinked. `--processes N`: each process registers its own.

Region layout: the first page holds the registration key (random bytes the
server compares, proving this client can read the file); slots start at
DATA_OFFSET, each page-aligned.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from client.transport import ClientError
from common import codec
from common.protocol import (
    SHM_KEY_BYTES,
    InferHeader,
    MsgType,
    ShmInfo,
    ShmRegisteredHeader,
    ShmRegisterHeader,
    ShmUnregisterHeader,
    shm_tensor_desc,
)
from common.shm import ShmError, ShmRegion, check_same_host

if TYPE_CHECKING:
    from client.config import ClientConfig
    from client.loadgen import InputPool
    from client.transport import Backend

log = logging.getLogger("infer.client.shm")

PAGE = 4096
DATA_OFFSET = PAGE  # the key's page; slots follow, page-aligned
OPEN_LOOP_SLOTS = 64  # --shm-refresh with no cap on requests in flight: sends wait for a free slot beyond it
UNREGISTER_TIMEOUT_S = 2.0  # on exit; the server releases the region anyway once this process is gone
_INFER_CONTROL = codec.control_frame(MsgType.INFER)
_NO_FRAMES: tuple[Any, ...] = ()


def slot_count(config: ClientConfig, pool: InputPool) -> int:
    """A slot per pooled batch, and one per request that may be in flight."""
    inflight = config.concurrency or (OPEN_LOOP_SLOTS if config.shm_refresh else 0)
    return max(len(pool.batches), inflight)


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class ShmLink:
    """One server's region: its slots, the handle that server gave it, each slot's INFER header."""

    def __init__(self, backend: Backend, region: ShmRegion, key: bytes, slots: list[torch.Tensor], offsets: list[int]):
        self.backend = backend
        self.region = region
        self.key = key
        self.slots = slots
        self.offsets = offsets
        self.handle: int | None = None
        self.pinned = False
        self.headers: list[InferHeader] = []
        self.free = collections.deque(range(len(slots)))  # --shm-refresh: slots not in flight
        self.next = 0  # without it: the slot the next request names

    @classmethod
    def open(cls, backend: Backend, info: dict[str, Any], pool: InputPool, slots: int, timeout_s: float) -> ShmLink:
        """Check the server, create and fill the region, register it (ClientError, one line, if any step fails)."""
        shm = info.get("shm")
        if not shm:
            raise ClientError(
                f"--transport shm: the server at {backend.endpoint} offers no shared memory (an older infer-server,"
                " or no /dev/shm there); use --transport zmq"
            )
        try:
            check_same_host(shm)
        except ShmError as exc:
            raise ClientError(f"{exc} (server {backend.endpoint})") from None
        batch = pool.batches[0]
        slot_bytes = _round_up(batch.nbytes, PAGE)
        size = DATA_OFFSET + slots * slot_bytes
        per_client = ShmInfo.from_wire(shm).limits.get("max_bytes_per_peer")
        if per_client and size > per_client:
            raise ClientError(
                f"--transport shm: {slots} slots of {slot_bytes} bytes ({size} in all) exceed the server's limit of"
                f" {per_client} bytes per client; use fewer requests in flight or a smaller batch"
            )
        try:
            region = ShmRegion.create(size)
        except ShmError as exc:
            raise ClientError(f"--transport shm: {exc}") from None
        try:
            key = secrets.token_bytes(SHM_KEY_BYTES[0])
            region.buffer(0, len(key))[:] = key
            offsets = [DATA_OFFSET + i * slot_bytes for i in range(slots)]
            tensors = [region.tensor(off, batch.dtype, batch.shape) for off in offsets]
            for i, t in enumerate(tensors):
                t.copy_(pool.batches[i % len(pool.batches)])
            link = cls(backend, region, key, tensors, offsets)
            link.register(timeout_s)
        except BaseException:
            region.close()
            raise
        return link

    def register(self, timeout_s: float) -> None:
        """SHM_REGISTER the region (again, after a reconnect: a server that still has it answers the same handle)."""
        header = ShmRegisterHeader(self.region.name, self.region.size, self.key, pid=os.getpid()).to_wire()
        try:
            msg = self.backend.request(MsgType.SHM_REGISTER, header, timeout_s=timeout_s)
        except ClientError as exc:
            raise ClientError(f"--transport shm: registering a {self.region.size}-byte region failed: {exc}") from None
        reply = ShmRegisteredHeader.from_wire(msg.header)
        self.handle, self.pinned = reply.handle, reply.pinned
        dtype = codec.DTYPE_NAMES[self.slots[0].dtype]
        shape = list(self.slots[0].shape)
        nbytes = self.slots[0].nbytes
        self.headers = [InferHeader([shm_tensor_desc(dtype, shape, reply.handle, off, nbytes)]) for off in self.offsets]
        log.info("registered %s (%d bytes, %d slots) with %s as region %d%s", self.region.name, self.region.size,
                 len(self.slots), self.backend.endpoint, reply.handle, " (page-locked)" if reply.pinned else "")

    def close(self) -> None:
        """Unregister (best effort: the server may be gone), then unlink and unmap the region."""
        try:
            if self.handle is not None:
                header = ShmUnregisterHeader(all_regions=True).to_wire()
                self.backend.request(MsgType.SHM_UNREGISTER, header, timeout_s=UNREGISTER_TIMEOUT_S)
        except ClientError as exc:
            log.info("unregistering %s from %s: %s", self.region.name, self.backend.endpoint, exc)
        finally:
            self.handle = None
            self.slots = []  # drop the tensors' views so the mapping goes with the region
            self.region.close()


class ShmInputs:
    """The client's input source for `--transport shm` (client/inputs.py's InputSource)."""

    def __init__(self, links: list[ShmLink], pool: InputPool, refresh: bool, timeout_s: float):
        self._links = links
        self._pool = pool
        self._refresh = refresh
        self._timeout_s = timeout_s
        self._inflight: dict[int, tuple[ShmLink, int]] = {}  # --shm-refresh: request id -> its slot

    @classmethod
    def open(cls, backends: list[Backend], infos: list[dict[str, Any]], pool: InputPool,
             config: ClientConfig) -> ShmInputs:
        slots = slot_count(config, pool)
        links: list[ShmLink] = []
        try:
            for backend, info in zip(backends, infos):
                links.append(ShmLink.open(backend, info, pool, slots, config.timeout_s))
        except BaseException:
            for link in links:
                link.close()
            raise
        return cls(links, pool, config.shm_refresh, config.timeout_s)

    @property
    def links(self) -> list[ShmLink]:
        return self._links

    def take(self, backend: int, request_id: int) -> tuple[bytes, InferHeader, Sequence[Any]]:
        link = self._links[backend]
        if self._refresh:
            # The slot freed last: its pages are the likeliest still in cache and the TLB, as a producer's
            # reused buffer would be (at 1 in flight, always the same one; first in, first out would walk
            # every slot, slots x batch bytes, cold each time).
            slot = link.free.pop()
            link.slots[slot].copy_(self._pool.next())  # the producer's copy, inside the measured latency
            self._inflight[request_id] = (link, slot)
        else:  # the slots never change: requests in flight may share one
            slot = link.next
            link.next = (slot + 1) % len(link.headers)
        return _INFER_CONTROL, link.headers[slot], _NO_FRAMES

    def ready(self, backend: int) -> bool:
        return not self._refresh or bool(self._links[backend].free)

    def done(self, request_id: int) -> None:
        entry = self._inflight.pop(request_id, None)
        if entry is not None:
            entry[0].free.append(entry[1])

    def reconnected(self, backend: int) -> None:
        try:
            self._links[backend].register(self._timeout_s)
        except ClientError as exc:  # its requests will be answered ERROR and counted failed
            log.warning("%s", exc)

    def close(self) -> None:
        for link in self._links:
            link.close()
        self._inflight.clear()
