# Source this (bash): installs the wheels in $WHEEL_DIR that this Python can use and does not
# already import, into $SITE_DIR, and exports PYTHONPATH=$SITE_DIR:<repo root>.
#
#   source benchmarks/device/install.sh        # PYTHON=python3 WHEEL_DIR=<repo>/.whl SITE_DIR=/tmp/site
#
# For a machine that cannot reach a registry (the GPU machine): benchmarks/device/fetch_wheels.sh
# fetches the wheels on one that can. A wheel whose tags this Python does not support, whose
# packages already import or whose distribution is already installed is skipped and named,
# so a machine that has them all installs nothing. Returns non-zero,
# with one line saying why, when pip fails.

_device_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
WHEEL_DIR=${WHEEL_DIR:-$_device_root/.whl}
SITE_DIR=${SITE_DIR:-/tmp/site}

# Prints the wheels to install, one per line; reasons for skipping the others go to stderr.
_device_wheels_to_install() {
    "$PYTHON" - "$WHEEL_DIR" <<'EOF'
import importlib.metadata
import importlib.util
import sys
import zipfile
from pathlib import Path

try:
    from packaging.tags import parse_tag, sys_tags
except ImportError:  # pip vendors packaging; every Python with pip has it
    from pip._vendor.packaging.tags import parse_tag, sys_tags


def top_level(wheel):
    """The importable names a wheel installs, read off its RECORD."""
    names = set()
    with zipfile.ZipFile(wheel) as z:
        for entry in z.namelist():
            first, _, rest = entry.partition("/")
            if first.endswith((".dist-info", ".data", ".libs")):
                continue
            if rest == "__init__.py":
                names.add(first)
            elif not rest and first.endswith((".py", ".so")):
                names.add(first.split(".")[0])
    return sorted(names)


def installed(dist):
    """The version of distribution `dist` this Python has, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


supported = set(sys_tags())
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    dist = wheel.name.split("-")[0]
    python_tag, abi_tag, platform_tag = wheel.stem.split("-")[-3:]
    if not supported & set(parse_tag(f"{python_tag}-{abi_tag}-{platform_tag}")):
        print(f"skip {wheel.name}: not for this Python", file=sys.stderr)
        continue
    names = top_level(wheel)
    if names and all(importlib.util.find_spec(n) is not None for n in names):
        print(f"skip {wheel.name}: {', '.join(names)} already importable", file=sys.stderr)
        continue
    if installed(dist):  # e.g. nvidia-ml-py, whose wheel also carries an example.py
        print(f"skip {wheel.name}: {dist} {installed(dist)} already installed", file=sys.stderr)
        continue
    print(wheel)
EOF
}

_device_install() {
    local listed wheels=()
    if [[ ! -d $WHEEL_DIR ]]; then
        echo "install: no wheel folder $WHEEL_DIR (fetch it with benchmarks/device/fetch_wheels.sh)" >&2
    else
        listed=$(_device_wheels_to_install) || {
            echo "install: could not read the wheels in $WHEEL_DIR" >&2
            return 1
        }
        [[ -n $listed ]] && mapfile -t wheels <<<"$listed"
        if (( ${#wheels[@]} )); then
            echo "install: $(printf '%s ' "${wheels[@]##*/}")-> $SITE_DIR"
            "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$SITE_DIR" "${wheels[@]}" || { echo "install: pip failed for $WHEEL_DIR" >&2; return 1; }
        fi
    fi
    export PYTHONPATH="$SITE_DIR:$_device_root${PYTHONPATH:+:$PYTHONPATH}"
}

_device_install
