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
snakemake --cores all --quiet rules "$@" > snakemake.log 2>&1 &
sm=$!
# Snakemake's own CPU time (scheduling, bookkeeping) competes with the jobs for the cores
own=0
while kill -0 $sm 2>/dev/null; do
  t=$(awk '{print $14 + $15}' /proc/$sm/stat 2>/dev/null) && own=$t
  sleep 1
done
wait $sm || { tail -50 snakemake.log; exit 1; }
mid=$(date +%s.%N)
snakemake --cores 1 --report results/report.html > report.log 2>&1 || { tail -30 report.log; exit 1; }
end=$(date +%s.%N)
python3 - "$start" "$mid" "$end" "$own" <<'PY'
import os, sys, glob, json, collections
start, mid, end, own = map(float, sys.argv[1:])
print(f"demo study wall time: {mid - start:.1f} s  (+ report {end - mid:.1f} s)  on {os.cpu_count()} cores")
print(f"Snakemake's own CPU time: {own / os.sysconf('SC_CLK_TCK'):.1f} s")
# per job: start and end as Snakemake recorded them (.snakemake/metadata, one JSON per output)
jobs = {}
for f in glob.glob(".snakemake/metadata/*"):
    try:
        d = json.load(open(f))
    except (OSError, ValueError):
        continue
    if d.get("starttime") and d.get("endtime"):
        # every output file of a job has its own record: one job = one job_hash
        jobs[(d["rule"], d.get("job_hash"), d.get("shellcmd"))] = d["endtime"] - d["starttime"]
per_rule, count = collections.defaultdict(float), collections.Counter()
for (rule, *_), s in jobs.items():
    per_rule[rule] += s
    count[rule] += 1
print(f"job seconds by rule ({len(jobs)} jobs; wall time of each job, summed):")
for rule, s in sorted(per_rule.items(), key=lambda kv: -kv[1]):
    print(f"  {rule:<18} {count[rule]:3d} jobs {s:8.1f} s")
PY
for t in results/tables/*.md; do echo "== $t"; cat "$t"; done
