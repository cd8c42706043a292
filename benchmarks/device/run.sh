#!/usr/bin/env bash
# One command for a GPU box: install what its image lacks, then validate ResNet-18 serving on it.
#
#   benchmarks/device/run.sh                  # on the GPU machine, from the repo root, with .whl/ beside it
#   benchmarks/device/run.sh --dry-run        # the same code and order on CPU, tiny sizes (tests do this)
#   benchmarks/device/run.sh --batches 128 --points tcp:uint8   # any benchmarks/gpu_validate.py option
#
# The whole run ends within RUN_BUDGET_S (420 s), compilation included: the install, then
# gpu_validate.py with what is left as its --budget-s. `python benchmarks/gpu_validate.py --plan`
# prints each step with its estimate (docs/gpu.md has the table); a step that would not fit in
# what is left is skipped with a row saying so, never started. `timeout` stops the Python side if
# it ever overruns. Everything is logged to $OUT/run.log by the scripts themselves, so the log is
# whole even when the tool that ran this ends early.
# Writes under $OUT when set (the device tool's output folder): run.log, results.md, results.jsonl,
# environment.json, ceiling.err, server-<wire>.err, install.log.
set -uo pipefail

START=$SECONDS
RUN_BUDGET_S=${RUN_BUDGET_S:-420}
STOP_MARGIN_S=10  # for `timeout` to stop the Python side and the files to be written
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-$(mktemp -d /tmp/gpu-validate-XXXXXX)}
export OUT
mkdir -p "$OUT"
LOG=$OUT/run.log

say() {  # a line on stdout and in run.log
    echo "$*"
    echo "$*" >>"$LOG"
}

# The project's venv where there is one (a CPU checkout after `make install`), else the image's python3.
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON

dry_run=0
for arg in "$@"; do [[ $arg == --dry-run ]] && dry_run=1; done

say "== install (python: $PYTHON; log: $OUT)"
# shellcheck source=benchmarks/device/install.sh
source "$ROOT/benchmarks/device/install.sh" >>"$OUT/install.log" 2>&1
install_status=$?
while IFS= read -r line; do say "  $line"; done <"$OUT/install.log"
(( install_status == 0 )) || { say "install failed (see above)"; exit 1; }
missing=$("$PYTHON" - <<'EOF'
import importlib.util
needed = ["zmq", "hdrh", "msgpack", "msgspec", "click", "psutil", "numpy", "torch", "torchvision"]
print(" ".join(n for n in needed if importlib.util.find_spec(n) is None))
EOF
) || missing="(could not run $PYTHON)"
if [[ -n $missing ]]; then
    say "missing Python packages: $missing; fetch wheels on a machine with a registry" \
        "(benchmarks/device/fetch_wheels.sh) and bring .whl/ along"
    exit 1
fi
if ! "$PYTHON" -c 'import pynvml' 2>/dev/null; then
    say "pynvml not importable: GPU figures come from nvidia-smi (no energy, throttle or PCIe figures)"
fi

if (( ! dry_run )); then
    say "== GPU"
    gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
          --format=csv,noheader 2>&1) || gpu="nvidia-smi failed: $gpu (gpu_validate.py will say what torch sees)"
    say "$gpu"
fi

left=$(( RUN_BUDGET_S - (SECONDS - START) - STOP_MARGIN_S ))
say "== validation (budget ${left} s; it logs to run.log itself)"
timeout --kill-after=10 $(( left + STOP_MARGIN_S / 2 )) \
    "$PYTHON" "$ROOT/benchmarks/gpu_validate.py" --skip-perf --budget-s "$left" --out-dir "$OUT" "$@"
status=$?
(( status == 124 )) && say "gpu_validate.py overran its budget and was stopped; rows so far are in results.md"
say "== done in $(( SECONDS - START )) s (exit $status)"
exit $status
