"""End-to-end: the real Snakemake workflow on the tiny config, in a copy of the repo."""

import json
import re
import shutil

import pandas as pd
import pytest
import yaml

from workflow_helpers import copy_workflow, job_stats, run_snakemake, tiny_config

from fundusfm.evaluate.aggregate import metric_range

pytestmark = pytest.mark.slow


def test_dry_run_lists_every_stage(tmp_path):
    cfg = tiny_config()
    wd = copy_workflow(tmp_path, cfg)
    p = run_snakemake(wd, "-n", "--cores", "2")
    jobs = job_stats(p.stdout + p.stderr)
    for rule in ("synth", "ingest", "preprocess", "split", "pretrain", "finetune", "evaluate", "table", "release"):
        assert jobs.get(rule, 0) >= 1, (rule, jobs)
    n_finetune = sum(len(t["inits"]) * len(t.get("run_folds", [0])) * len(t["fractions"]) * len(t["seeds"])
                     for t in cfg["tasks"].values())
    assert jobs["finetune"] == n_finetune


def test_study_produces_tables_figures_and_cams_for_every_task(tiny_study):
    results = tiny_study / "results"
    for task in ("multi", "grade"):
        table = pd.read_csv(results / "tables" / f"{task}.csv")
        assert len(table) > 0
        assert (results / "tables" / f"{task}.md").read_text().strip()
        assert (results / "figures" / task / "roc_test.png").stat().st_size > 0
        assert any((results / "cam" / task).glob("gradcam_*.png"))
        # issue 14: the protocol card heads the table, and no printed bound leaves its metric's range
        md = (results / "tables" / f"{task}.md").read_text()
        assert md.splitlines()[2].startswith("**Protocol card**")
        for col in table.columns:
            metric, _, stat = col.rpartition("__")
            if stat in ("ci_lo", "ci_hi", "boot_lo", "boot_hi", "hl_lo", "hl_hi", "range_lo", "range_hi"):
                lo, hi = metric_range(metric)
                vals = table[col].dropna()
                assert ((vals >= lo) & (vals <= hi)).all(), (task, col, vals.tolist())
        assert json.loads((results / "cam" / task / "best_run.json").read_text())["chosen_on"] == "validation"
    assert "Protocol card" in (results / "protocol" / "card.md").read_text()
    # every input image has a QC row
    for ds in ("up", "down", "ext"):
        labels = pd.read_csv(tiny_study / "data" / ds / "labels.csv")
        qc = pd.read_csv(results / "preprocessed" / ds / "qc.csv")
        assert len(qc) == len(labels)
    # the metrics of each run were computed from its own predictions
    m = json.loads((results / "metrics" / "multi" / "fundus" / "finetune" / "fold0" / "frac1" / "seed0" / "test.json").read_text())
    assert m["task"] == "multi" and m["init"] == "fundus" and "auroc_micro" in m["metrics"]
    assert (results / "finetune" / "multi" / "fundus" / "finetune" / "fold0" / "frac1" / "seed0" / "predictions_external_ext.csv").is_file()


def test_rerun_plans_nothing_and_a_task_edit_reruns_only_that_task(tiny_study, tmp_path):
    wd = tmp_path / "study"
    shutil.copytree(tiny_study, wd, symlinks=True)
    assert job_stats(run_snakemake(wd, "-n", "--cores", "2").stdout) == {}
    cfg_path = wd / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["tasks"]["grade"]["hparams"] = {"epochs": 2}
    cfg_path.write_text(yaml.safe_dump(cfg))
    jobs = job_stats(run_snakemake(wd, "-n", "--cores", "2").stdout)
    assert jobs.get("finetune") == 1 and jobs.get("table") == 1, jobs
    assert not {"synth", "ingest", "preprocess", "pretrain", "split"} & set(jobs), jobs


def test_adding_an_external_set_predicts_without_retraining(tiny_study, tmp_path):
    wd = tmp_path / "study"
    shutil.copytree(tiny_study, wd, symlinks=True)
    cfg_path = wd / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["tasks"]["grade"]["external"] = ["ext"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    jobs = job_stats(run_snakemake(wd, "-n", "--cores", "2").stdout)
    assert jobs.get("predict_external") == 1 and jobs.get("split_external") == 1, jobs
    assert "finetune" not in jobs and "pretrain" not in jobs, jobs


def test_a_new_dataset_checked_for_overlaps_first_retrains_nothing(tiny_study, tmp_path):
    """docs/adding-a-dataset.md: `--until overlap`, then the study. With an unchanged
    exclusion list (checksums), pretraining and the fine-tunes stay; the new external
    set is only predicted with the trained models."""
    wd = tmp_path / "study"
    shutil.copytree(tiny_study, wd, symlinks=True)
    model = wd / "results" / "pretrain" / "random" / "model.safetensors"
    before = model.stat().st_mtime_ns
    cfg_path = wd / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["datasets"]["ext2"] = {"adapter": "synth", "synth": {"patients": 4, "seed": 9, "defect_rate": 0.0,
                                                            "non_fundus": 0}}
    cfg["tasks"]["multi"]["external"] = cfg["tasks"]["multi"]["external"] + ["ext2"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    # one plain run would plan pretraining again: it cannot know the overlap result yet
    assert "pretrain" in job_stats(run_snakemake(wd, "-n", "--cores", "2").stdout)
    run_snakemake(wd, "--cores", "2", "--until", "overlap")
    jobs = job_stats(run_snakemake(wd, "-n", "--cores", "2").stdout)
    n_multi_runs = sum(1 for _ in (wd / "results" / "finetune" / "multi").glob("*/*/fold*/frac*/seed*"))
    assert jobs.get("predict_external") == n_multi_runs and jobs.get("split_external") == 1, jobs
    assert not {"pretrain", "finetune", "split", "overlap"} & set(jobs), jobs
    assert model.stat().st_mtime_ns == before


def test_pretraining_chain_goes_first_and_long_jobs_take_half_the_cores(tiny_study, tmp_path):
    """Scheduling: priorities put the data stage and pretraining ahead of fine-tunes;
    synth / preprocess / pretrain take half of --cores (one-thread jobs fill the rest)."""
    wd = tmp_path / "study"
    shutil.copytree(tiny_study, wd, symlinks=True)
    for cores, threads in (("2", 1), ("8", 4)):
        out = run_snakemake(wd, "-n", "-p", "--cores", cores, "-R", "pretrain", "preprocess").stdout
        blocks = {m.group(1): b for b in out.split("\n\n")
                  if (m := re.search(r"^(?:local)?rule (\w+):", b, re.M))}
        assert f"OMP_NUM_THREADS={threads} fundusfm train" in blocks["pretrain"], blocks["pretrain"]
        assert f"--workers {threads} " in blocks["preprocess"], blocks["preprocess"]
        assert "priority: 10" in blocks["pretrain"] and "priority: 10" in blocks["preprocess"]
        assert "priority: 10" not in blocks["finetune"]
