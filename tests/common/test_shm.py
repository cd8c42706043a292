"""The client's shared-memory regions: names, mode, views, unlinking, the same-host check."""

from __future__ import annotations

import gc
import os
import re
import stat
import subprocess
import sys

import pytest
import torch

from common.shm import MODE, ShmError, ShmRegion, check_same_host, host_identity

# Every region made here carries this prefix, so the leak check (the no_leftover fixture, tests/conftest.py) sees only ours.
PREFIX = f"infertest{os.getpid()}"
CHILD_TIMEOUT_S = 120  # a child that imports torch on a loaded machine


# The leak check (the no_leftover fixture, tests/conftest.py) looks only at names carrying PREFIX.
pytestmark = pytest.mark.usefixtures("no_leftover")


def test_name_is_random_and_mode_is_0600_whatever_the_umask() -> None:
    for umask in (0o000, 0o077, 0o277):
        old = os.umask(umask)
        try:
            a, b = ShmRegion.create(4096, prefix=PREFIX), ShmRegion.create(4096, prefix=PREFIX)
        finally:
            os.umask(old)
        with a, b:
            assert re.fullmatch(rf"/{PREFIX}-[0-9a-f]{{32}}", a.name)
            assert a.name != b.name
            st = os.stat(a.path, follow_symlinks=False)
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == MODE
            assert st.st_uid == os.geteuid() and st.st_size == 4096


def test_tensor_view_writes_the_region_bytes() -> None:
    with ShmRegion.create(1 << 16, prefix=PREFIX) as region:
        x = torch.randn(2, 3, 8, 8)
        region.tensor(64, torch.float32, x.shape).copy_(x)
        assert bytes(region.buffer(64, x.numel() * 4)) == x.numpy().tobytes()
        with open(region.path, "rb") as f:  # another opener sees the same bytes
            f.seek(64)
            assert f.read(x.numel() * 4) == x.numpy().tobytes()
        assert region.tensor(0, torch.bfloat16, (0, 3)).shape == (0, 3)


@pytest.mark.parametrize(
    "offset, dtype, shape, match",
    [(2, torch.float32, (4,), "multiple"), (0, torch.uint8, (4097,), "outside"), (4096, torch.uint8, (1,), "outside")],
)
def test_views_outside_the_region_or_misaligned_are_refused(offset: int, dtype: torch.dtype, shape: tuple, match: str) -> None:
    with ShmRegion.create(4096, prefix=PREFIX) as region:
        with pytest.raises(ValueError, match=match):
            region.tensor(offset, dtype, shape)


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_size_must_be_a_positive_int(size: object) -> None:
    with pytest.raises(ValueError, match="positive"):
        ShmRegion.create(size, prefix=PREFIX)  # type: ignore[arg-type]


def test_close_unlinks_at_once_even_while_a_view_is_alive() -> None:
    region = ShmRegion.create(4096, prefix=PREFIX)
    view = region.tensor(0, torch.int32, (4,))
    view.copy_(torch.arange(4, dtype=torch.int32))
    region.close()
    region.close()  # twice is harmless
    assert region.closed and not region.path.exists()
    assert view.tolist() == [0, 1, 2, 3]  # the mapping outlives the name while viewed


def test_garbage_collection_unlinks() -> None:
    region = ShmRegion.create(4096, prefix=PREFIX)
    path = region.path
    del region
    gc.collect()
    assert not path.exists()


CHILD = """
import os, sys
from common.shm import ShmRegion
region = ShmRegion.create(4096, prefix=sys.argv[1])
print(region.path, flush=True)
if sys.argv[2] == "fork":
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # runs the inherited exit handlers: they must not unlink the parent's region
    os.waitpid(pid, 0)
    print(region.path.exists(), flush=True)
"""


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["exit", "fork"])
def test_interpreter_exit_unlinks_but_a_forked_child_does_not(mode: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, PREFIX, mode], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert not os.path.exists(lines[0])
    if mode == "fork":
        assert lines[1] == "True"


def test_same_host_check_passes_here_and_names_the_mismatch() -> None:
    here = host_identity()
    assert here["boot_id"] and here["shm_dev"] is not None
    check_same_host(here)
    with pytest.raises(ShmError, match="on this host: it runs on 'elsewhere'") as err:
        check_same_host({**here, "boot_id": "0" * 36, "hostname": "elsewhere"})
    assert "\n" not in str(err.value)
    with pytest.raises(ShmError, match="another /dev/shm"):
        check_same_host({**here, "shm_dev": here["shm_dev"] + 1})
    with pytest.raises(ShmError, match="on this host"):
        check_same_host({})  # a server that does not describe its host
