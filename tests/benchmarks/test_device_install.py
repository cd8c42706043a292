"""benchmarks/device/install.sh (run.sh's install step) against a folder of wheels, in a venv without pyzmq.

The GPU machine cannot reach a registry, so its missing packages travel as wheels. This runs
the same step offline: a bare venv of this interpreter, a wheel folder holding the pyzmq
wheel benchmarks/device/fetch_wheels.sh fetched for this Python (plus one for another Python,
which the step must pass over), then `import zmq` with and without the PYTHONPATH it exports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

INSTALL = ROOT / "benchmarks" / "device" / "install.sh"
# Where fetch_wheels.sh puts the pyzmq wheel for each Python: the GPU machine's in .whl/.
WHEEL_FOLDERS = {(3, 11): ROOT / ".whl" / "cp311", (3, 12): ROOT / ".whl"}
IMPORT_ZMQ = "import zmq; print(zmq.__file__)"


def this_pythons_pyzmq_wheel() -> Path:
    folder = WHEEL_FOLDERS.get(sys.version_info[:2])
    wheels = sorted(folder.glob("pyzmq-*.whl")) if folder else []
    if not wheels:
        pytest.skip(f"no pyzmq wheel for Python {sys.version_info[0]}.{sys.version_info[1]} under .whl/: "
                    "run benchmarks/device/fetch_wheels.sh (needs PyPI) to test the GPU install step offline")
    return wheels[0]


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv of this interpreter with nothing installed but pip: no pyzmq."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=180, capture_output=True)
    return venv / "bin" / "python"


def run_python(python: Path, code: str, pythonpath: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd="/")


def source_install(
    python: Path, wheels: Path, site: Path, then: str, pythonpath: str | None = None
) -> subprocess.CompletedProcess:
    """`source install.sh` in bash, then run `then` in the same shell (so with what it exported)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=str(python), WHEEL_DIR=str(wheels), SITE_DIR=str(site))
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    script = f'source "{INSTALL}" || exit 1; {then}'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=180, env=env, cwd="/")


def test_install_step_makes_zmq_importable_only_through_the_pythonpath_it_exports(
    bare_venv: Path, tmp_path: Path
) -> None:
    wheel = this_pythons_pyzmq_wheel()
    assert run_python(bare_venv, IMPORT_ZMQ, None).returncode != 0, "the bare venv already has zmq"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    shutil.copy(wheel, wheels)
    other = next((w for w in sorted((ROOT / ".whl").glob("pyzmq-*.whl")) if w.name != wheel.name), None)
    if other is not None:  # a wheel for another Python must be passed over, not break the install
        shutil.copy(other, wheels)
    site = tmp_path / "site"

    proc = source_install(bare_venv, wheels, site, f'echo "PYTHONPATH=$PYTHONPATH"; "$PYTHON" -c "{IMPORT_ZMQ}"')

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"PYTHONPATH={site}:{ROOT}" in proc.stdout
    assert str(site / "zmq") in proc.stdout.splitlines()[-1]
    if other is not None:
        assert f"skip {other.name}: not for this Python" in proc.stderr
    assert run_python(bare_venv, IMPORT_ZMQ, None).returncode != 0  # nothing went into the venv itself
    assert run_python(bare_venv, IMPORT_ZMQ, str(site)).returncode == 0

    # Run again where zmq already imports: nothing to install, pip not called.
    again = source_install(bare_venv, wheels, tmp_path / "unused", "true", pythonpath=str(site))
    assert again.returncode == 0, again.stderr
    assert f"skip {wheel.name}: zmq already importable" in again.stderr
    assert not (tmp_path / "unused").exists()


def test_a_missing_wheel_folder_is_named_and_the_pythonpath_still_set(bare_venv: Path, tmp_path: Path) -> None:
    proc = source_install(bare_venv, tmp_path / "absent", tmp_path / "site", 'echo "PYTHONPATH=$PYTHONPATH"')
    assert proc.returncode == 0
    assert f"no wheel folder {tmp_path / 'absent'}" in proc.stderr
    assert f"PYTHONPATH={tmp_path / 'site'}:{ROOT}" in proc.stdout
