"""POSIX shared-memory regions: a data plane for a client and a server on one host.

As in Triton's system shared memory, the client creates a region (a file in
/dev/shm), registers it with the server once by name and size, and each request
then names a slice of it (handle, offset, dtype, shape) instead of carrying the
bytes. This module is the client's side: `ShmRegion.create(size)` makes a region
with a random name and mode 0600, unlinked on close, on garbage collection and at
interpreter exit (a killed client cannot unlink: the server does, see
server/shm_registry.py, which maps, checks and page-locks regions).

`host_identity` and `check_same_host` let a client refuse, in one line, a server
that does not share its /dev/shm. Linux only: /dev/shm and /proc.
"""

from __future__ import annotations

import math
import mmap
import os
import platform
import secrets
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

SHM_DIR = Path("/dev/shm")
MODE = 0o600


class ShmError(Exception):
    """Shared memory cannot be used here (the CLI reports it as one line)."""


def _unlink_if_owner(path: str, owner_pid: int) -> None:
    # A forked child inherits the finalizer but not the ownership.
    if os.getpid() == owner_pid:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # the server unlinked it after losing us, or close() ran twice


class ShmRegion:
    """A region this process created and owns (the client side)."""

    def __init__(self, name: str, size: int, mm: mmap.mmap):
        self.name = name  # POSIX form, with the leading slash: what REGISTER sends
        self.size = size
        self.path = SHM_DIR / name.lstrip("/")
        self._mm = mm
        self._unlink = weakref.finalize(self, _unlink_if_owner, str(self.path), os.getpid())

    @classmethod
    def create(cls, size: int, prefix: str = "infer") -> ShmRegion:
        """A new region of `size` bytes named /<prefix>-<32 hex>, backed by memory now."""
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"region size must be a positive number of bytes, got {size!r}")
        if not SHM_DIR.is_dir():
            raise ShmError(f"{SHM_DIR} does not exist: shared memory needs Linux with a tmpfs /dev/shm")
        name = f"/{prefix}-{secrets.token_hex(16)}"
        path = SHM_DIR / name[1:]
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
        except OSError as exc:
            raise ShmError(f"cannot create {path}: {exc.strerror}") from None
        try:
            os.fchmod(fd, MODE)  # the umask may have taken bits away; say exactly 0600
            # Allocate now: a tmpfs that is too small (Docker's default is 64 MiB)
            # then fails here with ENOSPC, not later with SIGBUS on first write.
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.unlink(path)
            free = os.statvfs(SHM_DIR)
            raise ShmError(
                f"cannot allocate {size} bytes in {SHM_DIR} ({free.f_bavail * free.f_frsize} free): {exc.strerror}"
            ) from None
        finally:
            os.close(fd)
        return cls(name, size, mm)

    def buffer(self, offset: int = 0, nbytes: int | None = None) -> memoryview:
        """A writable view of bytes [offset, offset + nbytes)."""
        end = self.size if nbytes is None else offset + nbytes
        if not 0 <= offset <= end <= self.size:
            raise ValueError(f"bytes [{offset}, {end}) outside the region's {self.size}")
        return memoryview(self._mm)[offset:end]

    def tensor(self, offset: int, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
        """A writable tensor over the region (copy a batch in with `.copy_`)."""
        numel = math.prod(shape)
        itemsize = dtype.itemsize
        if offset % itemsize:
            raise ValueError(f"offset {offset} is not a multiple of {dtype}'s {itemsize} bytes")
        buf = self.buffer(offset, numel * itemsize)
        if numel == 0:
            return torch.empty(tuple(shape), dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).view(tuple(shape))

    @property
    def closed(self) -> bool:
        return not self._unlink.alive

    def close(self) -> None:
        """Unlink the name now; the mapping goes with the last view of it."""
        self._unlink()
        try:
            self._mm.close()
        except BufferError:
            pass  # tensors still view it: the mmap unmaps itself when they are gone

    def __enter__(self) -> ShmRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- same-host check -------------------------------------------------------------


def host_identity() -> dict[str, Any]:
    """What tells two processes they share one /dev/shm: for the server's INFO reply.

    The boot id tells hosts apart; the device number of /dev/shm tells apart two
    containers of one host, which share the boot id but not their /dev/shm.
    """
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = None
    try:
        shm_dev = os.stat(SHM_DIR).st_dev
    except OSError:
        shm_dev = None
    return {"hostname": platform.node(), "boot_id": boot_id, "shm_dev": shm_dev}


def check_same_host(server: Mapping[str, Any]) -> None:
    """Raise ShmError (one line) unless the server described by `server` shares our /dev/shm."""
    here = host_identity()
    if here["boot_id"] is None or here["shm_dev"] is None:
        raise ShmError(f"--transport shm needs Linux with {SHM_DIR} and /proc on this host")
    if server.get("boot_id") != here["boot_id"]:
        raise ShmError(
            f"--transport shm needs the server on this host: it runs on {server.get('hostname')!r}, "
            f"this client on {here['hostname']!r}; use the tcp:// or ipc:// transport"
        )
    if server.get("shm_dev") != here["shm_dev"]:
        raise ShmError(
            "--transport shm needs one /dev/shm for client and server: same host but another "
            "/dev/shm (a container?); share it (e.g. docker --ipc=host) or use tcp:// or ipc://"
        )
