"""Helpers shared by the tests that run the real Snakemake workflow in a temporary copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# What a copy of the workflow needs to run on its own.
WORKFLOW_FILES = ("Snakefile", "rules", "workflow", "config", "envs", "profiles")


def copy_workflow(dest: Path, config: dict | None = None) -> Path:
    """Copy the workflow into ``dest``; ``config`` (if given) replaces config/config.yaml.

    The replacement matters: a ``--configfile`` is *merged* into config/config.yaml, so
    the demo study's datasets and tasks would still be planned.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy(src, dest / name)
    if config is not None:
        (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def tiny_config(**tasks_override) -> dict:
    """The tiny test study (tests/configs/tiny.yaml), tasks optionally replaced."""
    cfg = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    if tasks_override:
        cfg["tasks"] = tasks_override
    return cfg


def workflow_logs(workdir: Path, last: int = 5) -> str:
    """Tails of the newest rule logs, for failure messages."""
    logs = workdir / "results" / "logs"
    if not logs.exists():
        return ""
    files = sorted((f for f in logs.rglob("*.log") if f.is_file()), key=lambda f: f.stat().st_mtime)[-last:]
    return "\n".join(f"--- {f}\n{f.read_text(errors='replace')[-3000:]}" for f in files)


def run_snakemake(workdir: Path, *args: str, env: dict | None = None, check: bool = True,
                  timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m snakemake ARGS`` in ``workdir``; on failure raise with output and rule logs."""
    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_NUM_THREADS", "1")
    p = subprocess.run([*SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-8000:]}\n"
            f"{workflow_logs(workdir)}"
        )
    return p


def job_stats(output: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's 'Job stats' table (the first one printed)."""
    counts: dict[str, int] = {}
    if "Job stats:" not in output:
        return counts
    for line in output.split("Job stats:", 1)[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def opt_out(name: str) -> None:
    """Skip when ``FUNDUSFM_SKIP_<NAME>=1`` (the only accepted reason to skip a service test)."""
    var = f"FUNDUSFM_SKIP_{name.upper()}"
    if os.environ.get(var, "") not in ("", "0"):
        pytest.skip(f"{var}={os.environ[var]} (explicit opt-out)")


def expected_final_metrics(results: Path, key: str) -> dict[str, float]:
    """The final metrics a run's MLflow mirror must hold, read straight from its metrics
    JSONs: ``<set>_<metric>`` and, from the CI, ``<set>_<metric>_lo`` / ``_hi``."""
    import json

    from fundusfm.tracking.records import metric_name

    out = {}
    for f in sorted((results / "metrics" / key.split("/", 1)[1]).glob("*.json")):
        rec = json.loads(f.read_text())
        for m, v in rec["metrics"].items():
            if v is not None:
                out[metric_name(f"{rec['set']}_{m}")] = v
        for m, b in rec["ci"].items():
            if b is not None:
                out[metric_name(f"{rec['set']}_{m}_lo")], out[metric_name(f"{rec['set']}_{m}_hi")] = b
    return out
