#!/usr/bin/env bash
# One-shot GPU check of the input pipeline: one table, model alone vs the real engine vs
# timm's loader (see benchmarks/gpu_check.py). On one lent GPU it finishes in <= 8 minutes
# (a hard timeout stops it at 8; rows already measured are printed as JSON lines as they
# come). On a CPU machine: `benchmarks/gpu_check.sh --smoke` (under a minute; CI).
#
#   benchmarks/gpu_check.sh [--smoke] [--json FILE] [--workers N] [--peer-workers N]
#
# Python: $PYTHON, else the project's .venv, else python3 on PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
limit=480
for arg in "$@"; do [[ "$arg" == "--smoke" ]] && limit=120; done
# the main process drives the GPU; loader workers set their own single thread
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
exec timeout --signal=TERM --kill-after=15 "$limit" "$py" "$here/gpu_check.py" "$@"
