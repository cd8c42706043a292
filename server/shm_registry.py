"""The server's side of the shared-memory data plane: regions attached per peer.

A client registers a region it created (common/shm.py) by name and size; the
server maps it once and answers with a handle, valid only for the peer (ROUTER
identity) that registered it. Requests then name (handle, offset, dtype, shape),
and every field is checked against the region before a view is built: a bad
reference raises ProtocolError with BAD_REQUEST, never touches memory outside the
region. On CUDA the mapping is page-locked once (cudaHostRegister), so the
host-to-device copy is a DMA from the region with no staging copy.

A peer's regions are released on unregister and when the peer is lost, which
the I/O loop learns from a send failing for that identity, or at once from the
pidfd of the client's process (`watch_fds`, `reap_exited`) when REGISTER named
it. A lost peer's names are unlinked too, since a killed client cannot.

The server attaches only regular files owned by its own uid with mode 0600: the
security boundary is the uid (any process of that user could open the file
anyway). Keying by peer keeps one client from using another's region by mistake.
"""

from __future__ import annotations

import ctypes
import hmac
import logging
import math
import mmap
import os
import re
import select
import stat
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.codec import TORCH_DTYPES, check_int
from common.protocol import DEFAULT_LIMITS, WIRE_DTYPES, ErrorCode, ProtocolError, ShmUsage
from common.shm import MODE, SHM_DIR

log = logging.getLogger("infer.shm")

# What the server accepts as a name: one path component of /dev/shm, POSIX style
# with an optional leading slash, never "." or ".." or a hidden file.
_NAME_RE = re.compile(r"/?([A-Za-z0-9_-][A-Za-z0-9_.-]{0,254})")
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message)


@dataclass(frozen=True)
class ShmLimits:
    """Bounds on what peers may make the server map (and page-lock on CUDA), in bytes."""

    max_regions_per_peer: int = 16
    max_regions: int = 256
    max_bytes_per_peer: int = 4 << 30  # 4 GiB: over 20 batches of 256 float32 3x250x250 images
    max_bytes: int = 16 << 30  # 16 GiB over all peers, draining regions included


def _maps_inode(pid: int, st: os.stat_result) -> bool:
    """Whether process `pid` has the file `st` mapped (so it is the region's client)."""
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return any(len(f := line.split()) >= 5 and f[3] == dev and f[4] == str(st.st_ino) for line in maps)
    except OSError:
        return False


class _Mapping:
    """One region the server has attached: mapped once, viewed by address.

    Views are ctypes arrays over the mapping's address rather than exports of the
    mmap object, so the registry decides when to unmap: when the region is
    released and the last view (held by an in-flight request) has been freed.
    """

    def __init__(self, handle: int, peer: bytes, name: str, fd: int, st: os.stat_result, pin: bool):
        self.handle, self.peer, self.name, self.fd, self.size = handle, peer, name, fd, st.st_size
        self.dev_ino = (st.st_dev, st.st_ino)
        self.mm = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        anchor = ctypes.c_char.from_buffer(self.mm)
        self.address = ctypes.addressof(anchor)
        del anchor  # drop the export at once, or mm.close() would refuse
        self.pinned = pin and _pin(self.address, self.size, name)
        self.lock = threading.Lock()
        self.live_views = 0
        self.released = False
        self.on_unmapped: Any = None  # set by the registry: called with the size once unmapped
        self.key: bytes | None = None  # set by the registry: the key it was registered with

    def view(self, offset: int, nbytes: int, writable: bool) -> memoryview:
        # A shrunk file would SIGBUS the server on access: refuse while it is short.
        if os.fstat(self.fd).st_size < self.size:
            raise _bad(f"region {self.handle} ({self.name}) shrank below its registered {self.size} bytes")
        window = (ctypes.c_char * nbytes).from_address(self.address + offset)
        fin = weakref.finalize(window, self._view_freed)
        fin.atexit = False
        with self.lock:
            self.live_views += 1
        buf = memoryview(window).cast("B")
        return buf if writable else buf.toreadonly()

    def _view_freed(self) -> None:
        with self.lock:
            self.live_views -= 1
            last = self.released and self.live_views == 0
        if last:
            self._unmap()

    def release(self) -> None:
        """No new views; unmap now, or when the last view is freed (whichever thread frees it)."""
        with self.lock:
            if self.released:
                return
            self.released = True
            idle = self.live_views == 0
        if idle:
            self._unmap()

    def _unmap(self) -> None:
        if self.pinned:
            _unpin(self.address, self.name)
        try:
            self.mm.close()
        finally:
            os.close(self.fd)
            if self.on_unmapped is not None:
                self.on_unmapped(self.size)


def _pin(address: int, size: int, name: str) -> bool:
    """Page-lock the mapping for DMA; on any failure serve unpinned (a staged copy)."""
    try:
        torch.cuda.check_error(torch.cuda.cudart().cudaHostRegister(address, size, 0))
        return True
    except Exception as exc:  # no CUDA, no driver, out of lockable memory: all mean "not pinned"
        log.warning("shared-memory region %s not page-locked (%s); host-to-device copies will stage", name, exc)
        return False


def _unpin(address: int, name: str) -> None:
    try:
        torch.cuda.check_error(torch.cuda.cudart().cudaHostUnregister(address))
    except Exception as exc:
        log.warning("cudaHostUnregister of region %s failed: %s", name, exc)


def _unlink_if_same(path: Path, dev_ino: tuple[int, int]) -> None:
    """Unlink `path` if it is still the file we mapped, not a new one of the same name."""
    try:
        st = os.stat(path, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == dev_ino:
            os.unlink(path)
    except OSError:
        pass


class ShmRegistry:
    """The server's attached regions, by peer. Owned by the I/O thread, except that
    views may be freed (and a released region unmapped) on any thread."""

    def __init__(self, limits: ShmLimits = ShmLimits(), pin: bool = False, shm_dir: Path = SHM_DIR):
        self.limits = limits
        self.pin = pin  # page-lock each region (a CUDA device serves)
        self.shm_dir = shm_dir
        self._peers: dict[bytes, dict[int, _Mapping]] = {}
        self._names: dict[str, _Mapping] = {}
        self._pidfds: dict[bytes, tuple[int, int]] = {}  # peer -> (pid, pidfd)
        self._next_handle = 1
        self._lock = threading.Lock()  # guards _mapped_bytes, which view frees update
        self._mapped_bytes = 0

    @property
    def mapped_bytes(self) -> int:
        """Bytes mapped now, over all peers, draining regions included."""
        with self._lock:
            return self._mapped_bytes

    def _unmapped(self, size: int) -> None:
        with self._lock:
            self._mapped_bytes -= size

    def register(self, peer: bytes, name: object, size: object, pid: object = None, key: bytes | None = None) -> int:
        """Attach region `name` of `size` bytes for `peer`; returns its handle.

        With `pid` (the client's process id), the peer's regions are released as
        soon as that process exits (see `reap_exited`). With `key`, the region must
        begin with those bytes: only a process that can read the file knows them,
        so a peer of another uid cannot attach a region it merely saw listed in
        /dev/shm (the protocol requires it; local callers may omit it).
        """
        if not isinstance(name, str) or not (match := _NAME_RE.fullmatch(name)):
            raise _bad(f"region name {str(name)[:80]!r} is not a /dev/shm name (letters, digits, _ . -)")
        file_name = match.group(1)
        size = check_int(size, "region size", 1, self.limits.max_bytes_per_peer)
        if pid is not None:
            pid = check_int(pid, "pid", 1, 2**31 - 1)
            if (known := self._pidfds.get(peer)) is not None and known[0] != pid:
                raise _bad(f"this client registered as process {known[0]}, not {pid}")
        if (existing := self._names.get(file_name)) is not None:
            if existing.peer != peer:
                raise _bad(f"region {name} is registered by another client")
            if existing.size != size:
                raise _bad(f"region {name} is already registered with {existing.size} bytes")
            if existing.key != key:  # the region's first bytes may hold data by now: compare what was sent
                raise _bad(f"region {name} is already registered with another key")
            return existing.handle  # a retried REGISTER whose reply was lost
        regions = self._peers.get(peer, {})
        self._check_room(regions, size)
        fd, st = self._open_checked(file_name, size)
        try:
            if pid is not None:
                self._watch(peer, pid, st)
            mapping = _Mapping(self._next_handle, peer, file_name, fd, st, self.pin)
        except BaseException:
            os.close(fd)
            if peer not in self._peers:
                self._forget(peer)  # the pidfd _watch may just have opened
            raise
        if key is not None and not hmac.compare_digest(ctypes.string_at(mapping.address, min(len(key), size)), key):
            mapping.release()
            if peer not in self._peers:
                self._forget(peer)
            raise _bad(f"region {name} does not begin with the key this request carries")
        mapping.on_unmapped = self._unmapped
        mapping.key = key
        self._next_handle += 1
        with self._lock:
            self._mapped_bytes += size
        self._peers.setdefault(peer, {})[mapping.handle] = mapping
        self._names[file_name] = mapping
        log.debug("peer %s registered %s (%d bytes) as %d", peer.hex(), file_name, size, mapping.handle)
        return mapping.handle

    def _check_room(self, regions: dict[int, _Mapping], size: int) -> None:
        lim = self.limits
        if len(regions) >= lim.max_regions_per_peer or len(self._names) >= lim.max_regions:
            raise _bad(f"region limit reached: {lim.max_regions_per_peer} per client, {lim.max_regions} in all")
        peer_bytes = sum(m.size for m in regions.values())
        if peer_bytes + size > lim.max_bytes_per_peer:
            raise _bad(f"{peer_bytes} + {size} bytes over the {lim.max_bytes_per_peer}-byte limit per client")
        if self.mapped_bytes + size > lim.max_bytes:
            raise _bad(f"{self.mapped_bytes} + {size} bytes over the server's {lim.max_bytes}-byte limit")

    def _open_checked(self, key: str, size: int) -> tuple[int, os.stat_result]:
        try:
            fd = os.open(self.shm_dir / key, _OPEN_FLAGS)
        except OSError as exc:  # ENOENT also when the client is on another host or container
            raise _bad(f"cannot open region /{key} in {self.shm_dir}: {exc.strerror}") from None
        st = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = "is not a regular shared-memory object"
        elif st.st_uid != os.geteuid():
            problem = f"is owned by uid {st.st_uid}, not the server's {os.geteuid()}"
        elif stat.S_IMODE(st.st_mode) != MODE:
            problem = f"has mode {stat.S_IMODE(st.st_mode):04o}, not {MODE:04o}"
        elif st.st_size != size:
            problem = f"has {st.st_size} bytes, not the declared {size}"
        if problem is not None:
            os.close(fd)
            raise _bad(f"region /{key} {problem}")
        return fd, st

    def _watch(self, peer: bytes, pid: int, st: os.stat_result) -> None:
        if peer in self._pidfds:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise _bad(f"process {pid} does not exist") from None
        except (OSError, AttributeError) as exc:  # an old kernel or a seccomp filter
            log.info("cannot watch process %s (%s): its regions go when it is lost or unregisters", pid, exc)
            return
        if not _maps_inode(pid, st):  # a pid from another namespace, or not the region's owner
            os.close(pidfd)
            raise _bad(f"process {pid} does not map the region it registers")
        self._pidfds[peer] = (pid, pidfd)

    def unregister(self, peer: bytes, handle: object) -> None:
        """Release one region (the client still owns the name, so it stays)."""
        self._lookup(peer, handle)
        self._release(self._peers[peer].pop(handle), unlink=False)
        if not self._peers[peer]:
            self._forget(peer)

    def release_peer(self, peer: bytes, unlink: bool = True) -> int:
        """Release all of `peer`'s regions; returns how many. The loop calls this when
        the peer is lost (its names are then unlinked: a killed client cannot)."""
        regions = self._peers.pop(peer, {})
        for mapping in regions.values():
            self._release(mapping, unlink)
        self._forget(peer)
        return len(regions)

    def _release(self, mapping: _Mapping, unlink: bool) -> None:
        del self._names[mapping.name]
        if unlink:
            _unlink_if_same(self.shm_dir / mapping.name, mapping.dev_ino)
        mapping.release()

    def _forget(self, peer: bytes) -> None:
        self._peers.pop(peer, None)
        if (known := self._pidfds.pop(peer, None)) is not None:
            os.close(known[1])

    def watch_fds(self) -> dict[int, bytes]:
        """pidfd -> peer: readable once that peer's process has exited (for the loop's poller)."""
        return {fd: peer for peer, (_, fd) in self._pidfds.items()}

    def reap_exited(self) -> list[bytes]:
        """Release (and unlink) the regions of every peer whose process has exited."""
        fds = self.watch_fds()
        if not fds:
            return []
        ready, _, _ = select.select(list(fds), [], [], 0)
        for fd in ready:
            log.info("client process of peer %s exited: releasing its regions", fds[fd].hex())
            self.release_peer(fds[fd], unlink=True)
        return [fds[fd] for fd in ready]

    def close(self) -> None:
        """Release everything (the server is stopping; clients keep their names)."""
        for peer in list(self._peers):
            self.release_peer(peer, unlink=False)

    def _lookup(self, peer: bytes, handle: object) -> _Mapping:
        handle = check_int(handle, "region handle", 0, 2**63 - 1)
        mapping = self._peers.get(peer, {}).get(handle)
        if mapping is None:  # also another peer's handle: they are per client
            raise _bad(f"region handle {handle} is not registered by this client")
        return mapping

    def view(self, peer: bytes, handle: object, offset: object, nbytes: object, writable: bool = False) -> memoryview:
        """Bytes [offset, offset + nbytes) of one of `peer`'s regions, bounds checked."""
        mapping = self._lookup(peer, handle)
        offset = check_int(offset, "offset", 0, mapping.size)
        nbytes = check_int(nbytes, "nbytes", 0, mapping.size)
        if offset + nbytes > mapping.size:
            raise _bad(f"bytes [{offset}, {offset + nbytes}) outside region {handle}'s {mapping.size}")
        if nbytes == 0:
            return memoryview(bytearray() if writable else b"")
        return mapping.view(offset, nbytes, writable)

    def tensor(
        self,
        peer: bytes,
        handle: object,
        offset: object,
        dtype: object,
        shape: object,
        nbytes: object = None,
        writable: bool = False,
    ) -> torch.Tensor:
        """A tensor over a reference from the wire, every field checked first.

        Read-only views are read-only to Python's buffer protocol only: torch does
        not enforce it, so the server must not write through an input's tensor.
        """
        if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
            raise _bad(f"dtype {str(dtype)[:40]!r} not in {sorted(WIRE_DTYPES)}")
        if not isinstance(shape, (list, tuple)) or len(shape) > DEFAULT_LIMITS.max_rank:
            raise _bad(f"shape must be a list of at most {DEFAULT_LIMITS.max_rank} ints")
        dims = tuple(check_int(d, f"shape[{i}]", 0, 2**62) for i, d in enumerate(shape))
        itemsize = WIRE_DTYPES[dtype]
        size = math.prod(dims) * itemsize
        if nbytes is not None and check_int(nbytes, "nbytes", 0, 2**63) != size:
            raise _bad(f"{dtype}{list(dims)} is {size} bytes, not the declared {nbytes}")
        if isinstance(offset, int) and offset % itemsize:
            raise _bad(f"offset {offset} is not aligned to {dtype}'s {itemsize} bytes")
        buf = self.view(peer, handle, offset, size, writable)
        if size == 0:
            return torch.empty(dims, dtype=TORCH_DTYPES[dtype])
        return torch.frombuffer(buf, dtype=TORCH_DTYPES[dtype]).view(dims)

    def stats(self) -> ShmUsage:
        """For STATS: regions and bytes now, and how many are page-locked."""
        live = list(self._names.values())
        return ShmUsage(len(live), len(self._peers), self.mapped_bytes, sum(m.pinned for m in live))

    def pinned(self, peer: bytes, handle: object) -> bool:
        """Whether one of `peer`'s regions is page-locked (its tensors can be copied to the device directly)."""
        return self._lookup(peer, handle).pinned

    def has_peer(self, peer: bytes) -> bool:
        return peer in self._peers

    def process_alive(self, peer: bytes) -> bool:
        """Whether `peer` named its process at REGISTER and that process still runs."""
        known = self._pidfds.get(peer)
        return known is not None and not select.select([known[1]], [], [], 0)[0]
