"""The server's shared-memory service: region requests, INFER references, lost clients.

Owned by the I/O thread (server/loop.py). It answers SHM_REGISTER and
SHM_UNREGISTER, resolves INFER's `shm` references through the registry
(server/shm_registry.py) for the peer that sent them, and releases a peer's
regions when the peer is lost: its process exited (the pidfd the registry holds
turns readable, which the loop polls), or a reply to it failed as unreachable.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
import zmq

from common import codec
from common.protocol import (
    ErrorCode,
    Limits,
    MsgType,
    ProtocolError,
    ServerCounters,
    ShmInfo,
    ShmRegisteredHeader,
    ShmRegisterHeader,
    ShmUnregisteredHeader,
    ShmUnregisterHeader,
)
from common.shm import host_identity
from server.shm_registry import ShmLimits, ShmRegistry

log = logging.getLogger("infer.server.shm")

REAP_INTERVAL_NS = 50_000_000  # how often a loop that cannot poll pidfds checks them


class PeerResolver:
    """Resolves one request's `shm` references in its sender's regions (a codec.ShmResolver).

    Made per request: afterwards `used` says whether the input came from shared
    memory and `pinned` whether all of it is page-locked for the device.
    """

    __slots__ = ("registry", "peer", "used", "pinned")

    def __init__(self, registry: ShmRegistry, peer: bytes):
        self.registry = registry
        self.peer = peer
        self.used = False
        self.pinned = True

    def __call__(self, region: object, offset: object, nbytes: int, dtype: str, dims: list[int]) -> torch.Tensor:
        tensor = self.registry.tensor(self.peer, region, offset, dtype, dims, nbytes)
        self.used = True
        self.pinned = self.pinned and self.registry.pinned(self.peer, region)
        return tensor


class ShmService:
    """The loop's shared-memory side: one registry, this server's counters, the pidfds it polls."""

    def __init__(self, counters: ServerCounters, limits: ShmLimits = ShmLimits(), pin: bool = False):
        self.registry = ShmRegistry(limits, pin=pin)
        self.counters = counters
        self._info = ShmInfo(**host_identity(), limits=dataclasses.asdict(limits), pinned=pin).to_wire()
        self._polled: set[int] = set()
        self._watch_changed = False  # pidfds opened or closed since the last sync_poller
        self._last_reap_ns = 0

    def info(self) -> dict[str, Any]:
        """INFO's `shm`: where this server's /dev/shm is, and the region limits."""
        return self._info

    def usage(self) -> dict[str, int]:
        """STATS_REPLY's `shm`: the regions attached now."""
        return self.registry.stats().to_wire()

    # -- requests ----------------------------------------------------------------

    def register(self, identity: bytes, header: dict, limits: Limits) -> list:
        """SHM_REGISTER -> the SHM_REGISTERED reply's frames (ProtocolError for a bad region)."""
        request = ShmRegisterHeader.from_wire(header, limits)
        self._watch_changed = True  # also when refused: a failed register may close what it opened
        handle = self.registry.register(identity, request.name, request.size, request.pid, request.key)
        self.counters.shm_registered += 1
        reply = ShmRegisteredHeader(request.id, handle, request.size, self.registry.pinned(identity, handle))
        return codec.encode(MsgType.SHM_REGISTERED, reply.to_wire())

    def unregister(self, identity: bytes, header: dict, limits: Limits) -> list:
        """SHM_UNREGISTER -> the SHM_UNREGISTERED reply's frames. The client keeps its names."""
        request = ShmUnregisterHeader.from_wire(header, limits)
        self._watch_changed = True
        if request.all_regions:
            released = self.registry.release_peer(identity, unlink=False)
        else:
            self.registry.unregister(identity, request.handle)
            released = 1
        self.counters.shm_unregistered += released
        return codec.encode(MsgType.SHM_UNREGISTERED, ShmUnregisteredHeader(request.id, released).to_wire())

    def resolver(self, identity: bytes) -> PeerResolver:
        return PeerResolver(self.registry, identity)

    # -- lost peers --------------------------------------------------------------

    def peer_unreachable(self, identity: bytes) -> None:
        """A reply to `identity` failed as unreachable: its DEALER is gone, and its handles with it.

        The names are unlinked too unless the client's process still runs (then it
        may still be using them, and unlinks them itself on exit).
        """
        if not self.registry.has_peer(identity):
            return
        unlink = not self.registry.process_alive(identity)
        self._watch_changed = True
        released = self.registry.release_peer(identity, unlink=unlink)
        self.counters.shm_peers_released += 1
        log.info("peer %s unreachable: released its %d shared-memory regions", identity.hex(), released)

    def reap_exited(self) -> None:
        """Release (and unlink) the regions of every client whose process has exited."""
        self._last_reap_ns = time.monotonic_ns()
        released = self.registry.reap_exited()
        self._watch_changed = self._watch_changed or bool(released)
        self.counters.shm_peers_released += len(released)

    def reap_due(self, now_ns: int) -> None:
        """For a loop that cannot poll the pidfds: reap at most every REAP_INTERVAL_NS."""
        if now_ns - self._last_reap_ns >= REAP_INTERVAL_NS and self.registry.watch_fds():
            self.reap_exited()

    def sync_poller(self, poller: zmq.Poller) -> None:
        """Make `poller` watch exactly the pidfds the registry holds now.

        Called before every poll: the registry closes a pidfd when it forgets a
        peer, so a poll must never see one that is no longer open.
        """
        if not self._watch_changed:
            return
        self._watch_changed = False
        fds = set(self.registry.watch_fds())
        for fd in self._polled - fds:
            poller.unregister(fd)
        for fd in fds - self._polled:
            poller.register(fd, zmq.POLLIN)
        self._polled = fds

    def close(self) -> None:
        """The server is stopping: release everything; clients keep (and unlink) their names."""
        self._watch_changed = True
        self.registry.close()


def shm_request(service: ShmService | None, identity: bytes, msg_type: MsgType, header: dict, limits: Limits) -> list:
    """The reply's frames to SHM_REGISTER or SHM_UNREGISTER (ProtocolError for a bad one)."""
    if service is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "this server offers no shared memory (no /dev/shm)")
    if msg_type == MsgType.SHM_REGISTER:
        return service.register(identity, header, limits)
    return service.unregister(identity, header, limits)
