#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels the GPU machine lacks, into .whl/ (ignored by git).
#
#   benchmarks/device/fetch_wheels.sh            # .whl/ for the GPU machine (CPython 3.12), .whl/cp311/ for tests
#
# The GPU machine's image has torch, torchvision, msgpack, click, nvidia-ml-py, psutil,
# matplotlib and tqdm, but not pyzmq or hdrhistogram, and it cannot reach a registry:
# benchmarks/device/install.sh installs these wheels there with --no-index --no-deps.
# hdrhistogram declares pbr and setuptools; setuptools is on the image, pbr is fetched
# (it is a build-time helper hdrh never imports, but it is tiny and declared).
# Versions are the ones .venv runs (the tested ones); one version of each is kept,
# since two versions of one package make pip refuse the whole install.
# .whl/cp311/ holds the CPython 3.11 pyzmq wheel that tests/benchmarks/test_device_install.py
# installs into a bare venv, so that test needs no network.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WHEELS=${WHEELS:-$ROOT/.whl}
PIP=${PIP:-$ROOT/.venv/bin/pip}
PACKAGES=(pyzmq hdrhistogram pbr)
# The platform tags the device README lists; pip matches each manylinux_2_N exactly.
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)

if [[ ! -x $PIP ]]; then
    echo "fetch_wheels.sh: no pip at $PIP (run make install first, or set PIP=...)" >&2
    exit 2
fi

pinned_version() {  # the version .venv has installed, or the override PIN_<name>=X.Y
    local override="PIN_${1//-/_}"
    if [[ -n ${!override:-} ]]; then echo "${!override}"; return; fi
    "$PIP" show "$1" 2>/dev/null | sed -n 's/^Version: //p'
}

download() {  # download DEST PYTHON_VERSION NAME==VERSION...
    local dest=$1 pyver=$2; shift 2
    local platform_args=()
    for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
    "$PIP" download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
        "${platform_args[@]}" -d "$dest" "$@"
}

drop_other_versions() {  # drop_other_versions DIR NAME VERSION: keep one version of NAME in DIR
    local dir=$1 dist=${2//-/_} version=$3 f
    for f in "$dir/$dist"-*.whl; do
        [[ -e $f ]] || continue
        [[ $(basename "$f") == "$dist-$version-"* ]] || { echo "removing $(basename "$f") (not $version)"; rm -f "$f"; }
    done
}

mkdir -p "$WHEELS/cp311"
specs=()
for name in "${PACKAGES[@]}"; do
    version=$(pinned_version "$name")
    if [[ -z $version ]]; then
        echo "fetch_wheels.sh: $name is not installed in .venv; set PIN_$name=VERSION" >&2
        exit 2
    fi
    drop_other_versions "$WHEELS" "$name" "$version"
    specs+=("$name==$version")
done

download "$WHEELS" 3.12 "${specs[@]}"
pyzmq_spec=${specs[0]}
drop_other_versions "$WHEELS/cp311" pyzmq "${pyzmq_spec#pyzmq==}"
download "$WHEELS/cp311" 3.11 "$pyzmq_spec"

if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1 && ! git -C "$ROOT" check-ignore -q "$WHEELS/x.whl"; then
    echo "fetch_wheels.sh: warning: $WHEELS is not ignored by git; add /.whl/ to .gitignore" >&2
fi
echo "wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1) in all; carry it as \".whl\"):"
(cd "$WHEELS" && ls -l ./*.whl cp311/*.whl | awk '{printf "  %-90s %8.1f KiB\n", $NF, $5 / 1024}')
