"""config/paper.yaml (the paper's study on public data) and config/retfound-benchmark.yaml:
valid, leak-free by construction, every task's labels present in its datasets as the adapters
read them (on tiny copies of each dataset's layout), and the whole study planned by
`snakemake -n` with those copies in place of the real datasets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import fixtures_datasets as fx
from workflow_helpers import job_stats
from fundusfm import config as fcfg
from fundusfm.data.adapters import read_dataset
from fundusfm.data.task_table import DERIVED
from fundusfm.task import TaskSpec

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper.yaml"
RETFOUND = REPO / "config" / "retfound-benchmark.yaml"
PAPER_INITS = ["random", "imagenet", "fundus", "imagenet+fundus"]


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# -------------------------------------------------------------- fixture copies of the datasets
# RETFound benchmark copies: train/val/test/<class>, the class folders of each benchmark
# (fixtures_datasets.RETFOUND_TREES cites their source)
def build_retfound_copy(name: str, root: Path) -> Path:
    if name in ("messidor2", "idrid"):  # the DR sets: RETFound's DR class folders
        return fx.build_retfound(root)
    return fx.build_retfound(root, fx.RETFOUND_TREES[name])


def with_fixture_roots(cfg: dict, base: Path) -> dict:
    """The config with every dataset root pointing at a tiny copy of that dataset's layout."""
    out = yaml.safe_load(yaml.safe_dump(cfg))
    for name, ds in out["datasets"].items():
        root = base / name
        if ds["adapter"] == "retfound":
            build_retfound_copy(name, root)
        else:
            fx.BUILDERS[ds["adapter"]](root)
        ds["root"] = str(root)
    return out


@pytest.fixture(scope="module")
def paper_fixture(tmp_path_factory):
    return with_fixture_roots(raw(PAPER), tmp_path_factory.mktemp("public"))


@pytest.fixture(scope="module")
def retfound_fixture(tmp_path_factory):
    return with_fixture_roots(raw(RETFOUND), tmp_path_factory.mktemp("retfound"))


def manifests(cfg: dict) -> dict[str, pd.DataFrame]:
    return {name: read_dataset(name, ds)[0] for name, ds in cfg["datasets"].items()}


def task_labels(man: pd.DataFrame, task: dict) -> pd.DataFrame:
    """The task's label columns as the split step builds them (``dr`` from ``dr_grade``)."""
    man = man.copy()
    for col, (src, fn) in DERIVED.items():
        if col in list(TaskSpec.from_dict(task).columns) and col not in man and src in man:
            man[col] = fn(pd.to_numeric(man[src], errors="coerce").astype("Int64"))
    missing = [c for c in list(TaskSpec.from_dict(task).columns) if c not in man]
    assert not missing, f"label column(s) {missing} absent; manifest has {list(man.columns)}"
    return man[list(TaskSpec.from_dict(task).columns)].apply(pd.to_numeric, errors="coerce")


# ----------------------------------------------------------------------------- paper.yaml
def test_paper_config_has_the_papers_settings():
    cfg = fcfg.load(PAPER)
    train = cfg["train"]
    assert (train["arch"], train["head"], train["img_size"], cfg["preprocess"]["size"]) == ("resnet50", "paper", 512, 512)
    assert cfg["pretrain"]["task"] == {"type": "binary", "label": "abnormal", "classes": ["normal", "abnormal"]}
    assert fcfg.pretrain_sources(cfg) == ["imagenet", "random"]  # fundus and imagenet+fundus
    tasks = cfg["tasks"]
    assert tasks["abnormality"]["label"] == "abnormal" and set(tasks["abnormality"]["external"]) == {"jsiec", "rfmid"}
    assert set(tasks["multidisease"]["labels"]) == {"glaucoma", "dr", "myopia", "rvo"}
    for name, t in tasks.items():
        assert t["inits"] == PAPER_INITS, name
        assert t["split"]["strategy"] == "kfold" and fcfg.run_folds(t) == [0, 1, 2, 3, 4], name
        assert 1.0 in t["fractions"] and min(t["fractions"]) <= 0.1, name
    externals = {d for t in tasks.values() for d in t["external"]}
    assert {"jsiec", "rfmid"} <= externals


def test_paper_upstream_excludes_every_downstream_dataset():
    for path in (PAPER, RETFOUND):
        cfg = fcfg.load(path)
        downstream = {d for t in cfg["tasks"].values() for d in t["datasets"] + t["external"]}
        assert not set(cfg["pretrain"]["datasets"]) & downstream, path
        assert cfg["pretrain"]["exclude_overlaps"] is True
        for name, ds in cfg["datasets"].items():
            assert ds["root"].startswith("data/public/"), (path, name)


def test_paper_tasks_find_their_labels_in_every_dataset(paper_fixture):
    mans = manifests(paper_fixture)
    for tname, task in paper_fixture["tasks"].items():
        for ds in task["datasets"] + task.get("external", []):
            labels = task_labels(mans[ds], task)
            assert labels.notna().any().all(), (tname, ds)
        if task["type"] == "binary":  # both classes among the development images
            dev = pd.concat([task_labels(mans[d], task) for d in task["datasets"]])
            assert set(dev.iloc[:, 0].dropna().astype(int)) == {0, 1}, tname


def test_paper_entries_for_rfmid_and_odir_ingest_their_real_layouts(tmp_path):
    """config/paper.yaml's own entries (adapter + options, root moved) on the real download layouts:
    RFMiD's CSVs with the CRAO column, ODIR-5K's Kaggle download with its duplicate image folders."""
    cfg = raw(PAPER)
    for name, build in (("rfmid", fx.build_rfmid), ("odir5k", fx.build_odir5k)):
        entry = {**cfg["datasets"][name], "root": str(build(tmp_path / name))}
        df, report = read_dataset(name, entry)
        assert len(df) > 0 and report["unmapped"] == [], name
    assert "Training Images" in df["path"].iloc[0]


def test_paper_upstream_has_normal_and_abnormal_only_because_grade_0_counts_as_normal(paper_fixture):
    mans = manifests(paper_fixture)
    union = pd.concat([mans[d] for d in paper_fixture["pretrain"]["datasets"]])
    assert set(union["abnormal"].dropna().astype(int)) == {0, 1}
    # the documented choice: without `exhaustive: true` a DR-only set gives no normal image at all
    eyepacs = {k: v for k, v in paper_fixture["datasets"]["eyepacs"].items() if k != "exhaustive"}
    df, _ = read_dataset("eyepacs", eyepacs)
    assert (df["abnormal"] == 0).sum() == 0 and (df["abnormal"] == 1).sum() > 0


# --------------------------------------------------------------------- retfound-benchmark
def test_retfound_benchmark_has_its_seven_tasks_on_official_splits():
    cfg = fcfg.load(RETFOUND)
    assert set(cfg["tasks"]) == {"aptos2019", "messidor2", "idrid", "papila", "glaucoma_fundus", "jsiec", "retina"}
    for name, t in cfg["tasks"].items():
        assert t["datasets"] == [name] and t["split"]["strategy"] == "official" and t["inits"] == PAPER_INITS
    for dr in ("aptos2019", "messidor2", "idrid"):
        assert cfg["tasks"][dr]["label"] == "dr_grade" and len(cfg["tasks"][dr]["classes"]) == 5


def test_retfound_tasks_find_both_classes_in_their_train_split(retfound_fixture):
    mans = manifests(retfound_fixture)
    for tname, task in retfound_fixture["tasks"].items():
        man = mans[tname]
        assert set(man["split"]) == {"train", "val", "test"}, tname
        train = task_labels(man[man["split"] == "train"], task).iloc[:, 0].dropna().astype(int)
        assert len(set(train)) >= 2, (tname, train.tolist())
        assert set(train) <= set(range(len(task["classes"]))), tname


# ------------------------------------------------------------------------------- dry runs
def dry_run(cfg: dict, wd: Path) -> dict[str, int]:
    for name in ("Snakefile", "rules", "workflow", "config", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / name)
    (wd / "config" / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--quiet", "rules",
                        "--configfile", "config/study.yaml"], cwd=wd, capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    text = p.stdout + p.stderr
    assert "Job stats:" in text, text[-3000:]
    return job_stats(text)


def expected_jobs(cfg: dict) -> dict[str, int]:
    cfg = fcfg.validate(yaml.safe_load(yaml.safe_dump(cfg)))
    tasks = cfg["tasks"]
    ft = {t: len(fcfg.runs(cfg, t, adaptation="finetune")) for t in tasks}
    lin = {t: len(fcfg.runs(cfg, t, adaptation="linear")) for t in tasks}
    n_ext = {t: len(tasks[t]["external"]) for t in tasks}
    probed = [t for t in tasks if "linear" in tasks[t]["adaptations"]]
    n_tasks = len(tasks)
    return {
        "ingest": len(cfg["datasets"]), "preprocess": len(cfg["datasets"]), "overlap": 1, "overlap_report": 1,
        "split": n_tasks + 1, "pretrain": len(fcfg.pretrain_sources(cfg)),
        "finetune": sum(ft.values()),
        "predict_external": sum(ft[t] * n_ext[t] for t in tasks),
        "linear_probe": sum(lin.values()),
        "predict_external_linear": sum(lin[t] * n_ext[t] for t in tasks),
        "embed": sum(len(tasks[t]["inits"]) * (1 + n_ext[t]) for t in probed),
        "model_facts": sum(len(tasks[t]["inits"]) for t in tasks),
        "evaluate": sum((ft[t] + lin[t]) * (1 + n_ext[t]) for t in tasks),
        "table": n_tasks, "figures": n_tasks,
        "cam": sum("finetune" in tasks[t]["adaptations"] for t in tasks) if cfg["report"]["cam"] else 0,
    }


@pytest.mark.slow
@pytest.mark.parametrize("fixture, n_finetune", [
    ("paper_fixture", 6 * 4 * 5 * 4 * 3),  # tasks x inits x folds x label fractions x seeds
    ("retfound_fixture", 7 * 4 * 1 * 1 * 5),
])
def test_dry_run_plans_the_whole_study(fixture, n_finetune, request, tmp_path):
    cfg = request.getfixturevalue(fixture)
    jobs = dry_run(cfg, tmp_path)
    want = expected_jobs(cfg)
    assert want["finetune"] == n_finetune
    for rule, n in want.items():
        assert jobs.get(rule, 0) == n, (rule, jobs)


@pytest.mark.slow
def test_fm_comparison_is_planned_without_any_data_or_weights(tmp_path):
    """config/fm-comparison.yaml as shipped: no dataset and no checkpoint present. The dry
    run plans every job and names each missing checkpoint with where it is published
    (its planning time is reported by benchmarks, not asserted here)."""
    cfg = raw(REPO / "config" / "fm-comparison.yaml")
    for name in ("Snakefile", "rules", "workflow", "config", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--quiet", "rules",
                        "--configfile", "config/fm-comparison.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    text = p.stdout + p.stderr
    assert p.returncode == 0, text[-6000:]
    jobs = job_stats(text)
    want = expected_jobs(cfg)
    assert want["finetune"] == 6 * 9 * 5 * 4 and want["linear_probe"] == 6 * 9 * 5 * 4
    for rule, n in want.items():
        assert jobs.get(rule, 0) == n, (rule, jobs)
    for name, entry in cfg["inits"].items():
        assert f"inits.{name}: {entry['checkpoint']} not found (published: " in text, name
