"""The wheels a GPU machine installs offline: which ones (benchmarks/device/wheels.txt) and whether they install.

The GPU image has Python 3.12 and torch, and cannot reach a registry, so whatever else the
server and client import travels as wheels. The first tests need nothing: they read the
imports of server/, client/ and common/ and check the pinned set covers those torch does not
bring. The others install the wheels benchmarks/device/fetch_wheels.sh put in .whl/ into a
bare Python 3.12 venv with benchmarks/device/install.sh (run.sh's install step), offline,
and import each module from there.
"""

from __future__ import annotations

import ast
import glob
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import ROOT

INSTALL = ROOT / "benchmarks" / "device" / "install.sh"
PINS = ROOT / "benchmarks" / "device" / "wheels.txt"
WHEELS = ROOT / ".whl"
FIRST_PARTY = {"common", "client", "server", "benchmarks", "tests"}
IMAGE_HAS = {"torch", "torchvision"}  # what the GPU image is known to have, beyond torch's own requirements


def pins() -> dict[str, str]:
    """wheels.txt as {canonical distribution name: version}."""
    out = {}
    for line in PINS.read_text().splitlines():
        spec = line.split("#")[0].strip()
        if spec:
            name, _, version = spec.partition("==")
            out[canonicalize_name(name)] = version
    return out


def third_party_imports() -> set[str]:
    """Top-level modules that server/, client/ and common/ import anywhere (in functions too)."""
    names = set()
    for package in ("server", "client", "common"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in FIRST_PARTY and n != "__future__"}


def torch_requirements() -> set[str]:
    """The distributions torch itself requires (so any image with torch has them), by canonical name."""
    return {canonicalize_name(Requirement(r).name) for r in importlib.metadata.requires("torch") or []
            if "extra ==" not in r}


def needed_distributions() -> dict[str, str]:
    """{module: distribution} for every third-party import an image with torch may lack."""
    dists = importlib.metadata.packages_distributions()
    provided = torch_requirements() | IMAGE_HAS
    out = {}
    for module in third_party_imports():
        dist = canonicalize_name(dists[module][0])
        if dist not in provided:
            out[module] = dist
    return out


def test_the_pinned_set_covers_every_import_torch_does_not_bring() -> None:
    needed = needed_distributions()
    # What the H200 image is known to lack, and numpy: torch does not require it.
    assert {"zmq", "hdrh", "numpy"} <= set(needed), needed
    assert set(needed.values()) <= set(pins()), f"add to {PINS.name}: {set(needed.values()) - set(pins())}"
    assert "torch" not in pins() and "torchvision" not in pins()


def test_each_pin_is_a_version_the_project_accepts() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = {canonicalize_name(Requirement(r).name): Requirement(r).specifier for r in declared}
    for name, version in pins().items():
        assert re.fullmatch(r"\d+(\.\d+)+", version), f"{name}: pin an exact version, not {version!r}"
        assert name in ranges, f"{name} is pinned for the GPU machine but not a dependency in pyproject.toml"
        assert ranges[name].contains(version), f"{name}=={version} is outside pyproject's {ranges[name]}"


def python312() -> str:
    """An interpreter of the GPU image's Python (3.12), or skip."""
    candidates = [os.environ.get("PYTHON312", ""), shutil.which("python3.12") or ""]
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("pyenv") else ""
    candidates += sorted(glob.glob(f"{root}/versions/3.12*/bin/python3.12")) if root else []
    for exe in filter(None, candidates):
        probe = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True, timeout=60)
        if probe.stdout.strip() == "True":
            return exe
    pytest.skip("no Python 3.12 here (set PYTHON312=/path/to/python3.12): the GPU image's wheels need one")


def fetched_wheels() -> list[Path]:
    wheels = sorted(WHEELS.glob("*.whl"))
    fetched = {canonicalize_name(w.name.split("-")[0]) for w in wheels}
    if not wheels or not set(pins()) <= fetched:
        pytest.skip(f"{WHEELS} lacks {sorted(set(pins()) - fetched)}: run benchmarks/device/fetch_wheels.sh "
                    "(needs a registry) to test the GPU install step offline")
    return wheels


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python 3.12 venv with nothing installed but pip: none of the pinned packages."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([python312(), "-m", "venv", str(venv)], check=True, timeout=180, capture_output=True)
    return venv / "bin" / "python"


def run_python(python: Path, code: str, pythonpath: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd="/")


def source_install(
    python: Path, wheels: Path, site: Path, then: str, pythonpath: str | None = None
) -> subprocess.CompletedProcess:
    """`source install.sh` in bash, then run `then` in the same shell (so with what it exported)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=str(python), WHEEL_DIR=str(wheels), SITE_DIR=str(site))
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    script = f'source "{INSTALL}" || exit 1; {then}'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300, env=env, cwd="/")


@pytest.mark.integration
def test_the_wheels_install_offline_into_python_3_12_and_every_needed_module_imports(
    bare_venv: Path, tmp_path: Path
) -> None:
    wheels = fetched_wheels()
    modules = sorted(needed_distributions())
    imports = "; ".join(f"import {m}; print({m}.__file__)" for m in modules)
    assert run_python(bare_venv, "import zmq", None).returncode != 0, "the bare venv already has zmq"
    folder = tmp_path / "wheels"
    folder.mkdir()
    for wheel in wheels:
        shutil.copy(wheel, folder)
    site = tmp_path / "site"

    proc = source_install(bare_venv, folder, site, f'echo "PYTHONPATH=$PYTHONPATH"; "$PYTHON" -c "{imports}"')

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"PYTHONPATH={site}:{ROOT}" in proc.stdout
    files = proc.stdout.splitlines()[-len(modules):]
    assert all(f.startswith(str(site)) for f in files), files  # each from the wheels, none from elsewhere
    assert run_python(bare_venv, "import zmq", None).returncode != 0  # nothing went into the venv itself

    # Run again where everything already imports: nothing to install, pip not called.
    again = source_install(bare_venv, folder, tmp_path / "unused", "true", pythonpath=str(site))
    assert again.returncode == 0, again.stderr
    assert "skip pyzmq-" in again.stderr and "zmq already importable" in again.stderr
    assert not (tmp_path / "unused").exists()


@pytest.mark.integration
def test_a_wheel_for_another_python_is_passed_over(bare_venv: Path, tmp_path: Path) -> None:
    folder = tmp_path / "wheels"
    folder.mkdir()
    other = folder / "pyzmq-27.3.0-cp39-cp39-manylinux_2_28_x86_64.whl"  # never opened: its tags rule it out
    other.write_bytes(b"")
    proc = source_install(bare_venv, folder, tmp_path / "site", "true")
    assert proc.returncode == 0, proc.stderr
    assert f"skip {other.name}: not for this Python" in proc.stderr


@pytest.mark.integration
def test_a_missing_wheel_folder_is_named_and_the_pythonpath_still_set(bare_venv: Path, tmp_path: Path) -> None:
    proc = source_install(bare_venv, tmp_path / "absent", tmp_path / "site", 'echo "PYTHONPATH=$PYTHONPATH"')
    assert proc.returncode == 0
    assert f"no wheel folder {tmp_path / 'absent'}" in proc.stderr
    assert f"PYTHONPATH={tmp_path / 'site'}:{ROOT}" in proc.stdout
