"""Issue 18 end to end: two inits of different architectures and input sizes, each
fine-tuned and linear-probed by the real workflow, in one table with paired comparisons
(tests/configs/zoo.yaml)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from checkpoint_layouts import mae_checkpoint
from workflow_helpers import copy_workflow, job_stats, run_snakemake

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def zoo_config() -> dict:
    return yaml.safe_load((REPO / "tests" / "configs" / "zoo.yaml").read_text())


@pytest.fixture(scope="module")
def zoo_study(tmp_path_factory):
    wd = copy_workflow(tmp_path_factory.mktemp("zoo"), zoo_config())
    # RETFound's published layout (an MAE pretraining checkpoint), for timm's test_vit at its
    # own 160 px: the study runs it at 64 px, so the position embeddings are resampled
    mae_checkpoint(wd / "weights" / "retfound_test_vit.pth", "test_vit", img_size=None, seed=5)
    run_snakemake(wd, "--cores", "2", timeout=1500)
    return wd


def test_one_table_holds_both_models_and_both_adaptations(zoo_study):
    tables = zoo_study / "results" / "tables"
    table = pd.read_csv(tables / "zoo.csv")
    test = table[table["set"] == "test"]
    arms = set(zip(test["init"], test["adaptation"], test["fraction"]))
    assert arms == {(i, a, f) for i in ("random", "vit") for a in ("finetune", "linear") for f in (0.5, 1.0)}
    ext = table[table["set"] == "external_ext"]
    assert set(zip(ext["init"], ext["adaptation"])) == {(i, a) for i in ("random", "vit")
                                                        for a in ("finetune", "linear")}
    # paired comparisons against compare_to (random), within each adaptation, on every set
    comp = pd.read_csv(tables / "zoo_comparisons.csv")
    same = comp[comp["adaptation"] == comp["reference_adaptation"]]
    assert set(same["init"]) == {"vit"} and set(same["reference_init"]) == {"random"}
    assert set(zip(same["set"], same["adaptation"])) == {(s, a) for s in ("test", "external_ext")
                                                         for a in ("finetune", "linear")}
    # and each linear probe against its own init's fine-tune
    probe = comp[comp["adaptation"] != comp["reference_adaptation"]]
    assert (probe["init"] == probe["reference_init"]).all() and set(probe["adaptation"]) == {"linear"}
    assert set(probe["init"]) == {"random", "vit"}
    # the models: parameter count, input size and throughput of each init
    models = pd.read_csv(tables / "zoo_models.csv").set_index("init")
    assert models.loc["vit", "arch"] == "test_vit" and int(models.loc["vit", "img_size"]) == 64
    assert models.loc["random", "arch"] == "resnet10t" and int(models.loc["random", "img_size"]) == 112
    assert (models["params"] > 0).all() and (models["throughput_img_s"] > 0).all()
    md = (tables / "zoo.md").read_text()
    assert "linear probe" in md and "test_vit" in md and "resnet10t" in md


def test_each_init_runs_its_own_model_definition(zoo_study):
    runs = zoo_study / "results" / "finetune" / "zoo"
    vit = json.loads((runs / "vit" / "finetune" / "fold0" / "frac1" / "seed0" / "model.json").read_text())
    assert (vit["arch"], vit["img_size"], vit["mean"], vit["std"]) == ("test_vit", 64, [0.5] * 3, [0.5] * 3)
    report = vit["init_report"]
    assert report["format"] == "retfound_mae" and not report["partial"] and not report["missing"]
    assert any(k.startswith("decoder_") for k in report["dropped"])  # the MAE decoder
    # RETFound's fine-tuning model (global_pool avg): fc_norm fresh, the checkpoint's norm unused
    assert vit["model_args"] == {"global_pool": "avg"} and "fc_norm.weight" in report["fresh"]
    assert "norm.weight" in report["dropped"]
    cfg = json.loads((runs / "vit" / "finetune" / "fold0" / "frac1" / "seed0" / "train_config.json").read_text())
    assert cfg["hparams"]["lr"] == 0.0005 and cfg["hparams"]["drop_path_rate"] == 0.1  # its recipe
    res = json.loads((runs / "random" / "finetune" / "fold0" / "frac1" / "seed0" / "model.json").read_text())
    assert (res["arch"], res["img_size"]) == ("resnet10t", 112)
    probe = json.loads((runs / "vit" / "linear" / "fold0" / "frac1" / "seed0" / "model.json").read_text())
    assert probe["adaptation"] == "linear" and probe["img_size"] == 64
    # features once per init and image set, whatever the number of probes reading them
    feats = sorted(p.relative_to(zoo_study / "results" / "features").as_posix()
                   for p in (zoo_study / "results" / "features").rglob("*.parquet"))
    assert feats == [f"zoo/{i}/{p}.parquet" for i in ("random", "vit") for p in ("dev", "external_ext")]


def test_the_released_vit_is_rebuilt_with_its_model_definition(zoo_study):
    from fundusfm.release import load_model

    rel = load_model(zoo_study / "results" / "release")
    assert rel.model.global_pool == "avg" and rel.meta["img_size"] == 64 and rel.meta["mean"] == [0.5] * 3


def test_the_arms_differences_are_on_the_protocol_card(zoo_study):
    card = (zoo_study / "results" / "protocol" / "card.md").read_text()
    assert "test_vit" in card and "64" in card and "logistic regression" in card.lower()


def test_a_recipe_edit_retrains_only_that_inits_finetunes(zoo_study, tmp_path):
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(run_snakemake(zoo_study, "-n"))
    cfg = zoo_config()
    cfg["inits"]["vit"]["recipe"]["lr"] = 0.001
    (zoo_study / "config" / "edited.yaml").write_text(yaml.safe_dump(cfg))
    p = run_snakemake(zoo_study, "-n", "--configfile", "config/edited.yaml")
    jobs = job_stats(p.stdout + p.stderr)
    assert jobs.get("finetune") == 2  # vit x 2 fractions; random untouched
    assert "embed" not in jobs and "linear_probe" not in jobs, jobs  # frozen features do not depend on lr
    assert not re.search(r"output: results/finetune/zoo/random/", p.stdout + p.stderr)
