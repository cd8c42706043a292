"""The shared-memory requests' headers: SHM_REGISTER, SHM_REGISTERED, SHM_UNREGISTER, SHM_UNREGISTERED.

A sibling of `headers` (kept apart for its length), and like it the one place these keys are spelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.protocol.core import DEFAULT_LIMITS, ErrorCode, Limits, ProtocolError, check_int
from common.protocol.headers import read_request_id

MAX_SHM_NAME = 256  # characters of a region's name, its leading slash included
SHM_KEY_BYTES = (16, 64)  # shortest and longest `key` of SHM_REGISTER


@dataclass(slots=True)
class ShmRegisterHeader:
    """SHM_REGISTER's header: a region the client created in /dev/shm, by POSIX name and exact size.

    The region must begin with `key` (random bytes the client wrote there), which
    proves the client can read the file; `pid`, the client's process id, lets the
    server release the region the moment that process exits. server.shm_registry
    checks the rest (file type, owner, mode, size).
    """

    name: str
    size: int
    key: bytes
    id: Any = None
    pid: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "size": self.size, "key": self.key, "pid": self.pid}

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> ShmRegisterHeader:
        request_id = read_request_id(d, limits)
        name, size, key, pid = d.get("name"), d.get("size"), d.get("key"), d.get("pid")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_SHM_NAME:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"name must be a str of 1 to {MAX_SHM_NAME} characters")
        check_int(size, "size", 1, 2**63 - 1)
        shortest, longest = SHM_KEY_BYTES
        if not isinstance(key, bytes) or not shortest <= len(key) <= min(longest, size):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"key must be bin of {shortest} to {longest} bytes, at most the region's size"
            )
        if pid is not None:
            check_int(pid, "pid", 1, 2**31 - 1)
        return cls(name, size, key, request_id, pid)


@dataclass(slots=True)
class ShmRegisteredHeader:
    """SHM_REGISTERED's header: the handle INFER's `shm` references name, valid for this DEALER only."""

    id: Any
    handle: int
    size: int
    pinned: bool = False  # page-locked for the device: host-to-device copies read the region directly

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "handle": self.handle, "size": self.size, "pinned": self.pinned}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ShmRegisteredHeader:
        return cls(d.get("id"), d.get("handle"), d.get("size"), bool(d.get("pinned")))


@dataclass(slots=True)
class ShmUnregisterHeader:
    """SHM_UNREGISTER's header: release one region (`handle`) or all of this client's (`all`: true)."""

    id: Any = None
    handle: int | None = None
    all_regions: bool = False

    def to_wire(self) -> dict[str, Any]:
        if self.all_regions:
            return {"id": self.id, "all": True}
        return {"id": self.id, "handle": self.handle}

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> ShmUnregisterHeader:
        request_id = read_request_id(d, limits)
        everything, handle = d.get("all", False), d.get("handle")
        if not isinstance(everything, bool):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "all must be true or false")
        if everything == (handle is not None):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "give either a region 'handle' or 'all': true")
        if handle is not None:
            check_int(handle, "handle", 0, 2**63 - 1)
        return cls(request_id, handle, everything)


@dataclass(slots=True)
class ShmUnregisteredHeader:
    """SHM_UNREGISTERED's header: how many regions were released."""

    id: Any
    released: int

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "released": self.released}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ShmUnregisteredHeader:
        return cls(d.get("id"), int(d.get("released") or 0))
