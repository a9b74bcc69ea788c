"""End-to-end: the real Snakemake workflow on the tiny config, in a copy of the repo."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
pytestmark = pytest.mark.slow


def copy_workflow(dest: Path) -> Path:
    for name in ("Snakefile", "rules", "workflow", "config", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    shutil.copy(REPO / "tests" / "configs" / "tiny.yaml", dest / "config" / "tiny.yaml")
    return dest


def smk(workdir: Path, *args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/results/mlflow.db")
    p = subprocess.run(
        [*SNAKEMAKE, "--cores", "2", "--configfile", "config/tiny.yaml", *args],
        cwd=workdir, capture_output=True, text=True, env=env,
    )
    if check and p.returncode != 0:
        logs = "\n".join(f"--- {f}\n{f.read_text()[-3000:]}" for f in sorted((workdir / "results" / "logs").rglob("*.log"))[-5:]) if (workdir / "results" / "logs").exists() else ""
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stdout[-4000:]}\n{p.stderr[-8000:]}\n{logs}")
    return p


def planned_jobs(p) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    text = p.stdout + p.stderr
    counts = {}
    if "Job stats" not in text:
        return counts
    block = text.split("Job stats:")[1]
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    wd = copy_workflow(tmp_path_factory.mktemp("study"))
    smk(wd)
    return wd


def test_dry_run_lists_every_stage(tmp_path):
    wd = copy_workflow(tmp_path)
    jobs = planned_jobs(smk(wd, "-n"))
    for rule in ("synth", "ingest", "preprocess", "split", "pretrain", "finetune", "evaluate", "table"):
        assert jobs.get(rule, 0) >= 1, (rule, jobs)
    cfg = yaml.safe_load((wd / "config" / "tiny.yaml").read_text())
    n_finetune = sum(len(t["inits"]) * len(t.get("run_folds", [0])) * len(t["fractions"]) * len(t["seeds"]) for t in cfg["tasks"].values())
    assert jobs["finetune"] == n_finetune


def test_study_produces_tables_for_every_task(study):
    for task in ("multi", "grade"):
        table = pd.read_csv(study / "results" / "tables" / f"{task}.csv")
        assert len(table) > 0
        assert (study / "results" / "tables" / f"{task}.md").read_text().strip()
    # every input image has a QC row
    for ds in ("up", "down", "ext"):
        labels = pd.read_csv(study / "data" / ds / "labels.csv")
        qc = pd.read_csv(study / "results" / "preprocessed" / ds / "qc.csv")
        assert len(qc) == len(labels)
    # the metrics of each run were computed from its own predictions
    m = json.loads((study / "results" / "metrics" / "multi" / "fundus" / "fold0" / "frac1" / "seed0" / "test.json").read_text())
    assert m["task"] == "multi" and m["init"] == "fundus" and "auroc" in m["metrics"]


def test_rerun_plans_nothing_and_a_task_edit_reruns_only_that_task(study):
    assert planned_jobs(smk(study, "-n")) == {}
    cfg_path = study / "config" / "tiny.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["tasks"]["grade"]["hparams"] = {"epochs": 2}
    cfg_path.write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(smk(study, "-n"))
    assert jobs.get("finetune") == 1 and jobs.get("table") == 1, jobs
    assert not {"synth", "ingest", "preprocess", "pretrain", "split"} & set(jobs), jobs
