#!/usr/bin/env bash
# Fetch, on any machine with pip and a registry, the wheels the GPU machine may lack, into .whl/
# (ignored by git). Needs no .venv and no `make install`: a fresh clone and python3 are enough.
#
#   benchmarks/device/fetch_wheels.sh            # -> .whl/ for the GPU machine (CPython 3.12, x86_64)
#   WHEELS=/tmp/w PY_VERSION=3.12 benchmarks/device/fetch_wheels.sh
#
# The set and its pinned versions are benchmarks/device/wheels.txt (the one place they are set).
# The GPU machine cannot reach a registry; benchmarks/device/install.sh installs these wheels
# there with --no-index --no-deps, skipping those that already import. One version of each
# package is kept: two versions of one package make pip refuse the whole install.
# pip: $PIP when set, else .venv's pip when there is one, else `python3 -m pip`.
# Exit status: 0 when every wheel is in .whl/, 1 when a download failed (the reason is printed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WHEELS=${WHEELS:-$ROOT/.whl}
PINS=${PINS:-$ROOT/benchmarks/device/wheels.txt}
PY_VERSION=${PY_VERSION:-3.12}
# The platform tags a manylinux x86_64 machine accepts; pip matches each manylinux_2_N exactly.
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64)

if [[ -n ${PIP:-} ]]; then
    read -r -a pip_cmd <<<"$PIP"
elif [[ -x $ROOT/.venv/bin/pip ]]; then
    pip_cmd=("$ROOT/.venv/bin/pip")
elif command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
    pip_cmd=(python3 -m pip)
else
    echo "fetch_wheels.sh: no pip found (set PIP=..., or install python3-pip)" >&2
    exit 1
fi

mapfile -t specs < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$PINS" | grep -v '^$')
if (( ${#specs[@]} == 0 )); then
    echo "fetch_wheels.sh: no pins in $PINS" >&2
    exit 1
fi

drop_other_versions() {  # drop_other_versions NAME VERSION: keep one version of NAME in $WHEELS
    local dist=${1//-/_} version=$2 f
    for f in "$WHEELS/$dist"-*.whl; do
        [[ -e $f ]] || continue
        [[ $(basename "$f") == "$dist-$version-"* ]] || { echo "removing $(basename "$f") (not $version)"; rm -f "$f"; }
    done
}

mkdir -p "$WHEELS"
for spec in "${specs[@]}"; do
    drop_other_versions "${spec%%==*}" "${spec#*==}"
done
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
echo "fetching ${#specs[@]} wheels for CPython $PY_VERSION with ${pip_cmd[*]}"
if ! "${pip_cmd[@]}" download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
        "${platform_args[@]}" -d "$WHEELS" "${specs[@]}"; then
    echo "fetch_wheels.sh: pip could not download the wheels (no registry access?)" >&2
    exit 1
fi

if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1 && ! git -C "$ROOT" check-ignore -q "$WHEELS/x.whl"; then
    echo "fetch_wheels.sh: warning: $WHEELS is not ignored by git; add /.whl/ to .gitignore" >&2
fi
echo "wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1) in all; carry it as \".whl\"):"
(cd "$WHEELS" && ls -l ./*.whl | awk '{printf "  %-90s %8.1f KiB\n", $NF, $5 / 1024}')
