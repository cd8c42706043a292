#!/usr/bin/env bash
# One command for a GPU box: install what its image lacks, then validate ResNet-18 serving on it.
#
#   benchmarks/device/run.sh                  # on the GPU machine, from the repo root, with .whl/ beside it
#   benchmarks/device/run.sh --dry-run        # the same code on CPU, tiny sizes (tests do this)
#   benchmarks/device/run.sh --points tcp:uint8 --batches 128,256   # any benchmarks/gpu_validate.py option
#
# Budget: the whole run ends within RUN_BUDGET_S (480 s = 8 minutes), compilation included.
#   install from .whl/ .......................... ~5 s (skipped for what already imports)
#   environment (versions, GPU, TF32 flags) ..... ~5 s
#   then gpu_validate.py gets what is left, minus a margin for stopping, as --budget-s:
#     in-process ceiling, batch 128 and 256 ..... ~60-100 s (two compiles), capped at a third of its budget
#     one server per wire dtype, warm-up ......... ~30-120 s each (4 compiles; inductor's cache from
#                                                  the ceiling and the first server shortens the rest)
#     12 points (4 batches x 3 transport:wire) .. ~10 s each (5 s measured + client start, warm-up)
#   A point that would not fit in what is left is skipped (its row says so), never started; a
#   point that fails prints its row with the reason and the others go on. `timeout` stops the
#   Python side if it ever overruns, and the rows written so far stay under $OUT.
# Writes under $OUT when set (the device tool's output folder): run.log, results.md,
# results.jsonl, environment.json, ceiling.err, server-<wire>.err.
set -uo pipefail

START=$SECONDS
RUN_BUDGET_S=${RUN_BUDGET_S:-480}
STOP_MARGIN_S=20  # for stopping servers and writing files after the last point
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
export PYTHONUNBUFFERED=1
if [[ -n ${OUT:-} ]]; then
    mkdir -p "$OUT"
    exec > >(tee -a "$OUT/run.log") 2>&1
fi
# The project's venv where there is one (a CPU checkout after `make install`), else the image's python3.
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON

dry_run=0
for arg in "$@"; do [[ $arg == --dry-run ]] && dry_run=1; done

echo "== install (python: $PYTHON)"
# shellcheck source=benchmarks/device/install.sh
source "$ROOT/benchmarks/device/install.sh" || exit 1
missing=$("$PYTHON" - <<'EOF'
import importlib.util
needed = ["zmq", "hdrh", "msgpack", "click", "pynvml", "psutil", "torch", "torchvision", "numpy"]
print(" ".join(n for n in needed if importlib.util.find_spec(n) is None))
EOF
) || missing="(could not run $PYTHON)"
if [[ -n $missing ]]; then
    echo "missing Python packages: $missing; fetch wheels on a machine with PyPI" \
         "(benchmarks/device/fetch_wheels.sh) and bring .whl/ along" >&2
    exit 1
fi

if (( ! dry_run )); then
    echo "== GPU"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
        || echo "nvidia-smi failed; gpu_validate.py will say what torch sees"
fi

left=$(( RUN_BUDGET_S - (SECONDS - START) - STOP_MARGIN_S ))
echo "== validation (budget ${left} s)"
timeout --kill-after=15 $(( left + STOP_MARGIN_S / 2 )) \
    "$PYTHON" "$ROOT/benchmarks/gpu_validate.py" --skip-perf --budget-s "$left" "$@"
status=$?
(( status == 124 )) && echo "gpu_validate.py overran its budget and was stopped; rows so far are in results.md"
echo "== done in $(( SECONDS - START )) s (exit $status)"
exit $status
