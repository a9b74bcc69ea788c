#!/usr/bin/env bash
# The package as cluster users get it: installed NON-editable (no source tree on the
# path) into a fresh virtualenv from the pins of envs/fundusfm.yaml, then, from a folder
# outside the checkout: validate config/config.yaml, `fundusfm --help`, and
# `fundusfm predict` on a tiny released demo model (.ci/demo_release.py).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
PY="${PYTHON:-python3}"

"$PY" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --no-compile --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
# the conda env's pip pins (every `name==version` line), then the project itself, not editable
sed -n 's/^ *- \([A-Za-z0-9_.-]*==[^ ]*\) *$/\1/p' "$repo/envs/fundusfm.yaml" > "$work/requirements.txt"
"$py" -m pip install -q --no-compile --disable-pip-version-check -r "$work/requirements.txt"
"$py" -m pip install -q --no-compile --disable-pip-version-check "$repo"

cd "$work"  # nothing of the checkout importable from here
where="$("$py" -c 'import fundusfm, pathlib; print(pathlib.Path(fundusfm.__file__).parent)')"
case "$where" in
  "$work"/venv/*) echo "fundusfm imported from the install: $where" ;;
  *) echo "fundusfm imported from $where, not from the fresh install" >&2; exit 1 ;;
esac
"$py" -c 'import sys; from fundusfm import config; config.load(sys.argv[1]); print("config valid:", sys.argv[1])' \
  "$repo/config/config.yaml"
"$work/venv/bin/fundusfm" --help > help.txt
grep -q "predict" help.txt
release="$("$py" "$repo/.ci/demo_release.py" "$work/demo")"
"$work/venv/bin/fundusfm" predict --model "$release" "$work/demo/photos" --out "$work/pred.csv" --device cpu --no-progress
"$py" - "$work/pred.csv" <<'PYEOF'
import sys

import pandas as pd

df = pd.read_csv(sys.argv[1])
assert len(df) == 2 and (df["status"] == "ok").all(), df
assert ((df["prob_normal"] + df["prob_abnormal"] - 1).abs() < 1e-5).all(), df
print(f"fundusfm predict on the installed package: {len(df)} photographs ok")
PYEOF
