#!/usr/bin/env bash
# Wall time of the demo study (`make run` after setup): a fresh results/ and data/,
# the environment already installed. Prints seconds and the slowest rules.
# Usage: [KEEP=1] bash benchmarks/demo_walltime.sh [extra snakemake args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$(pwd)/$VENV/bin:$PATH"
work=$(mktemp -d)
# KEEP=1 keeps the study folder for a look at its results and logs
[ -n "${KEEP:-}" ] && echo "study folder: $work" || trap 'rm -rf "$work"' EXIT
cp -r Snakefile rules workflow config envs "$work"/
cd "$work"
start=$(date +%s.%N)
snakemake --cores all --quiet rules "$@" > snakemake.log 2>&1 || { tail -50 snakemake.log; exit 1; }
mid=$(date +%s.%N)
snakemake --cores 1 --report results/report.html > report.log 2>&1 || { tail -30 report.log; exit 1; }
end=$(date +%s.%N)
python3 - "$start" "$mid" "$end" <<'PY'
import sys, glob, csv, collections
start, mid, end = map(float, sys.argv[1:])
print(f"demo study wall time: {mid - start:.1f} s  (+ report {end - mid:.1f} s)  on {__import__('os').cpu_count()} cores")
per_rule = collections.defaultdict(float)
for f in glob.glob("results/benchmarks/**/*.tsv", recursive=True):
    rule = f.split("/")[2]
    with open(f) as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    per_rule[rule] += float(row["s"])
print("CPU-job seconds by rule (benchmark: directives):")
for rule, s in sorted(per_rule.items(), key=lambda kv: -kv[1]):
    print(f"  {rule:<12} {s:8.1f} s")
PY
for t in results/tables/*.md; do echo "== $t"; cat "$t"; done
