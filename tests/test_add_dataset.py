"""Adding a downstream dataset, both ways of docs/adding-a-dataset.md, through fine-tuning and
evaluation; and the messages that say which manifest column or config key is wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from fundusfm import config as fcfg
from fundusfm.data.adapters import ADAPTERS, list_adapters, option_problems, option_schema, read_dataset
from fundusfm.data.cli import ingest_main
from fundusfm.data.manifest import ManifestError
from fundusfm.synth.draw import Disease, render_fundus

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
CASE = HERE / "configs" / "add_dataset"


# ------------------------------------------------------------------ the two example exports
def _photo(path: Path, seed: tuple, glaucoma: bool, eye: str) -> None:
    img, _ = render_fundus(seed, Disease(glaucoma=glaucoma), eye=eye, scale=0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _patients(n: int, seed: int) -> list[tuple[str, bool]]:
    """n patients, half with glaucoma (both eyes), in a seeded order."""
    rng = np.random.default_rng(seed)
    sick = rng.permutation([i < n // 2 for i in range(n)])
    return [(f"S{i:02d}", bool(s)) for i, s in enumerate(sick)]


def make_clinic_a(root: Path, n_patients: int = 14) -> Path:
    """Way (a): a labels table with the clinic's own column names and codes."""
    rows = []
    for k, (pid, sick) in enumerate(_patients(n_patients, 11)):
        for j, side in enumerate(("OD", "OS")):
            name = f"a_{2 * k + j:03d}.png"
            _photo(root / "photos" / name, (11, k, j), sick, "R" if side == "OD" else "L")
            rows.append({"Photo": name, "Subject": pid, "Side": side, "Finding": "G" if sick else "N"})
    pd.DataFrame(rows).to_csv(root / "grades.csv", index=False)
    return root


def make_clinic_b(root: Path, n_patients: int = 14) -> Path:
    """Way (b): one folder per patient and visit, diagnoses in a JSON sidecar."""
    for k, (pid, sick) in enumerate(_patients(n_patients, 22)):
        visit = root / pid.replace("S", "P") / f"2021-03-{k + 1:02d}"
        notes = {}
        for j, side in enumerate(("OD", "OS")):
            _photo(visit / f"{side}.png", (22, k, j), sick, "R" if side == "OD" else "L")
            notes[side] = "glaucoma" if sick else "healthy"
        (visit / "notes.json").write_text(json.dumps(notes))
    return root


# --------------------------------------------------------------------------- the workflow
def copy_workflow(dest: Path) -> Path:
    for name in ("Snakefile", "rules", "workflow", "config", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def let_ingest_wait_for_manifest_csv(wd: Path) -> None:
    """The rules change proposed for rules/common.smk + rules/data.smk, applied to this copy
    only while the shipped rules lack it: ingest of an `adapter: manifest` dataset takes the
    CSV as input, so the user's rule writing it runs first."""
    common, data = wd / "rules" / "common.smk", wd / "rules" / "data.smk"
    if "def dataset_inputs" in common.read_text():
        return
    text = data.read_text()
    old = "    input:\n        synth_input,\n"
    assert old in text, "rules/data.smk changed: update this test's patch"
    data.write_text(text.replace(old, "    input:\n        dataset_inputs,\n"))
    common.write_text(common.read_text() + (CASE / "dataset_inputs.smk").read_text())


def smk(wd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{wd}/results/mlflow.db")
    p = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=wd,
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        logs = sorted((wd / "results" / "logs").rglob("*.log")) if (wd / "results" / "logs").exists() else []
        tail = "\n".join(f"--- {f}\n{f.read_text()[-2000:]}" for f in logs[-4:])
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}\n{tail}")
    return p


def study_config(wd: Path) -> Path:
    """tests/configs/tiny.yaml (its upstream set and pretraining) plus the two new datasets,
    each used by a new task; tiny's own downstream tasks are left out to keep the run short."""
    cfg = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    add = yaml.safe_load((CASE / "add.yaml").read_text())
    cfg["datasets"] = {"up": cfg["datasets"]["up"], **add["datasets"]}
    cfg["tasks"] = add["tasks"]
    cfg["report"]["cam"] = False
    cfg["mlflow"] = {"enabled": False}
    path = wd / "config" / "add.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.slow
def test_new_dataset_both_ways_runs_through_finetuning_and_evaluation(tmp_path):
    wd = copy_workflow(tmp_path)
    let_ingest_wait_for_manifest_csv(wd)
    make_clinic_a(wd / "data" / "clinic_a")
    make_clinic_b(wd / "data" / "clinic_b")
    shutil.copy(CASE / "my_study.smk", wd / "my_study.smk")
    cfg_path = study_config(wd)
    fcfg.load(cfg_path)  # the new entries pass the config check
    targets = ["results/tables/glaucoma_a.md", "results/tables/glaucoma_b.md"]

    # targets first: --configfile takes every value after it
    smk(wd, *targets, "-s", "my_study.smk", "--configfile", "config/add.yaml")

    # (a) the csv adapter read the clinic's columns and codes
    man_a = pd.read_csv(wd / "results" / "manifests" / "clinic_a.csv", dtype=str)
    grades = pd.read_csv(wd / "data" / "clinic_a" / "grades.csv", dtype=str)
    assert len(man_a) == len(grades)
    assert set(man_a["patient_id"]) == set(grades["Subject"]) and set(man_a["eye"]) == {"L", "R"}
    assert (man_a["glaucoma"] == "1").sum() == (grades["Finding"] == "G").sum()
    # (b) the user's rule wrote the manifest the ingest job read
    written = pd.read_csv(wd / "results" / "user" / "clinic_b_manifest.csv", dtype=str)
    man_b = pd.read_csv(wd / "results" / "manifests" / "clinic_b.csv", dtype=str)
    assert len(written) == len(man_b) == 28 and set(man_b["image_id"]) == set(written["image_id"])
    assert man_b["patient_id"].nunique() == 14

    for task in ("glaucoma_a", "glaucoma_b"):
        table = pd.read_csv(wd / "results" / "tables" / f"{task}.csv")
        assert set(table["init"]) == {"random", "fundus"}, table
        md = (wd / "results" / "tables" / f"{task}.md").read_text()
        assert "random" in md and "fundus" in md
        m = json.loads((wd / "results" / "metrics" / task / "fundus" / "finetune" / "fold0" / "frac1" / "seed0" / "test.json").read_text())
        assert m["task"] == task and m["n_images"] > 0 and "auroc" in m["metrics"]
    # pretraining ran once, on the upstream set only, and both fundus runs started from it
    split = pd.read_csv(wd / "results" / "splits" / "pretrain.csv")
    assert set(split["dataset"]) == {"up"}
    for task in ("glaucoma_a", "glaucoma_b"):
        meta = json.loads((wd / "results" / "finetune" / task / "fundus" / "finetune" / "fold0" / "frac1" / "seed0" / "model.json").read_text())
        assert "pretrain/random/model.safetensors" in json.dumps(meta)


# ------------------------------------------------------------------------- validation
def test_wrong_manifest_column_is_named_with_its_file(tmp_path, capsys):
    root = tmp_path / "clinic"
    _photo(root / "a.png", (1, 0), False, "R")
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("image_id,path,patientid,eye\na,a.png,P1,R\n")
    cfg = {"adapter": "manifest", "root": str(root), "path": str(csv_path)}
    with pytest.raises(ManifestError) as e:
        read_dataset("mine", cfg)
    (p,) = e.value.problems
    assert p["file"] == str(csv_path) and p["column"] == "patientid" and p["row"] == 1
    assert "did you mean 'patient_id'" in p["message"]
    # the CLI (the ingest job) prints the same, file and column included, and writes nothing
    out = tmp_path / "m.csv"
    assert ingest_main(["--name", "mine", "--config-json", json.dumps(cfg), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(csv_path) in err and "'patientid'" in err and "patient_id" in err
    assert not out.exists()


def test_missing_required_manifest_column_points_at_the_misspelt_header(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("Image_ID,path\na,a.png\n")
    with pytest.raises(ManifestError) as e:
        read_dataset("mine", {"adapter": "manifest", "root": str(tmp_path), "path": str(csv_path)})
    (p,) = e.value.problems
    assert p["file"] == str(csv_path) and p["column"] == "image_id" and "'Image_ID'" in p["message"]


def test_wrong_dataset_key_is_named_with_the_valid_one(tmp_path, capsys):
    root = make_clinic_a(tmp_path / "clinic_a", n_patients=2)
    cfg = {"adapter": "csv", "root": str(root), "labels_file": "grades.csv", "image_column": "Photo",
           "path_template": "photos/{Photo}", "label_map": {"glaucoma": "Finding"},
           "value_map": {"glaucoma": {"G": 1, "N": 0}}}
    with pytest.raises(ManifestError) as e:
        read_dataset("clinic_a", cfg)
    (p,) = e.value.problems
    assert p["column"] == "datasets.clinic_a.image_column" and "did you mean 'image_col'" in p["message"]
    assert ingest_main(["--name", "clinic_a", "--config-json", json.dumps(cfg), "--out", str(tmp_path / "m.csv")]) == 1
    assert "datasets.clinic_a.image_column" in capsys.readouterr().err
    # fixed, the same entry reads
    cfg["image_col"] = cfg.pop("image_column")
    df, _ = read_dataset("clinic_a", cfg)
    assert len(df) == 4


def test_unknown_adapter_and_unused_value_map_are_named():
    (p,) = option_problems("x", {"adapter": "cvs", "root": "r"})
    assert p["column"] == "datasets.x.adapter" and "did you mean 'csv'" in p["message"]
    (p,) = option_problems("x", {"adapter": "csv", "root": "r", "label_map": {"glaucoma": "Dx"},
                                 "value_map": {"glaucom": {"G": 1}}})
    assert p["column"] == "datasets.x.value_map.glaucom"


def test_every_adapter_declares_its_options_and_the_fixtures_use_only_those():
    import fixtures_datasets as fx

    assert all(option_schema(a) for a in list_adapters()) and set(list_adapters()) == set(ADAPTERS) | {"synth"}
    for name in fx.BUILDERS:
        assert option_problems(name, fx.dataset_config(name, Path("r"))) == [], name
    for cfg_file in ("config/config.yaml", "tests/configs/tiny.yaml", "config/paper.yaml", "config/retfound-benchmark.yaml"):
        cfg = yaml.safe_load((REPO / cfg_file).read_text())
        for name, ds in cfg["datasets"].items():
            assert option_problems(name, ds) == [], (cfg_file, name)


def test_wrong_dataset_key_fails_the_config_check_naming_file_and_key(tmp_path):
    """Before any job runs: needs fundusfm.config to call option_problems (proposed change)."""
    import inspect

    if "option_problems" not in inspect.getsource(fcfg):
        pytest.skip("fundusfm.config._cross_check does not call fundusfm.data.adapters.option_problems yet")
    cfg = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    cfg["datasets"]["clinic_a"] = {"adapter": "csv", "root": "data/clinic_a", "labels_file": "grades.csv",
                                   "image_column": "Photo"}
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(fcfg.ConfigError) as e:
        fcfg.load(path)
    assert str(path) in str(e.value) and "datasets.clinic_a.image_column" in str(e.value)


def test_own_rule_route_command_plans_the_whole_study(tmp_path):
    """Way (b)'s documented command, `snakemake -s my_study.smk --cores all --configfile my.yaml`,
    plans the whole study: an `include:` does not carry the workflow's default target over,
    so without my_study.smk's own default target it would plan only the user's rule. The
    doc shows the tested file."""
    doc = (REPO / "docs" / "adding-a-dataset.md").read_text()
    assert (CASE / "my_study.smk").read_text() in doc.replace("```python\n", "")
    wd = copy_workflow(tmp_path)
    make_clinic_a(wd / "data" / "clinic_a", n_patients=2)
    make_clinic_b(wd / "data" / "clinic_b", n_patients=2)
    shutil.copy(CASE / "my_study.smk", wd / "my_study.smk")
    study_config(wd)
    p = smk(wd, "-s", "my_study.smk", "-n", "--configfile", "config/add.yaml")
    stats = p.stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = {parts[0]: int(parts[1]) for parts in (line.split() for line in stats.splitlines()[3:])
              if len(parts) == 2 and parts[1].isdigit()}
    assert counts["study"] == 1 and counts["clinic_b_manifest"] == 1 and counts["ingest"] == 3
    assert counts["finetune"] == 4 and counts["table"] == 2, counts
