#!/usr/bin/env bash
# Planning time of the shipped study configs: `snakemake -n` with no data and no weights
# present (issue 18: config/fm-comparison.yaml within 30 s). Prints jobs and seconds per
# config, repeated (the machine may be shared: take the smallest).
#   bash benchmarks/plan_time.sh [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
SMK="${SNAKEMAKE:-.venv/bin/snakemake}"
repeats="${1:-2}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r Snakefile rules workflow config envs "$work"/
printf "%-32s %8s %8s\n" config jobs seconds
for cfg in config/config.yaml config/paper.yaml config/retfound-benchmark.yaml config/fm-comparison.yaml; do
  for _ in $(seq "$repeats"); do
    t0=$(date +%s.%N)
    out=$(cd "$work" && "$OLDPWD/$SMK" -n --cores 2 --quiet rules --configfile "$cfg" 2>&1)
    t1=$(date +%s.%N)
    jobs=$(echo "$out" | awk '$1 == "total" {print $2; exit}')
    printf "%-32s %8s %8.1f\n" "$cfg" "$jobs" "$(echo "$t1 - $t0" | bc)"
  done
done
