#!/usr/bin/env bash
# Chaos run of a tiny study: N random kill -9 / SIGTERM interruptions, a rerun after each,
# final results compared with a clean run (benchmarks/chaos.py says how).
#   bash benchmarks/chaos.sh [--interruptions 20] [--workdir /tmp/fundusfm-chaos] [--seed 0] [--cores 2]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "${PYTHON:-python}" "$here/chaos.py" "$@"
