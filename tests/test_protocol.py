"""The comparison protocol (issue 14): label scarcity applies to validation too, with a floor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fundusfm.data.splits import _patient_strata, label_fraction_mask, patient_key
from fundusfm.task import TaskSpec
from fundusfm.train.config import resolve_hparams
from fundusfm.train.sets import select_sets

TASK = {"type": "binary", "label": "abnormal", "classes": ["normal", "abnormal"]}


def _table(tmp_path, n_train=400, n_val=200, prevalence=0.3):
    """Two eyes per patient; roles of fold 0; empty image files (select_sets checks they exist)."""
    rows = []
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    for role, n in (("train", n_train), ("val", n_val), ("test", 50)):
        for p in range(n):
            y = int(p < prevalence * n)
            for eye in "LR":
                rows.append(dict(dataset="d", image_id=f"{role}{p}{eye}", patient_id=f"{role}{p}", eye=eye,
                                 image=str(img), abnormal=y, fold0=role))
    return pd.DataFrame(rows)


def _spec(fraction, **hp):
    return dict(table="t.csv", fraction=fraction, seed=0, task=TaskSpec.from_dict(TASK), hparams=resolve_hparams(hp))


def test_label_fraction_shrinks_validation_too_above_the_floor(tmp_path):
    df = _table(tmp_path)
    full = select_sets(df, "fold0", **_spec(1.0))
    tenth = select_sets(df, "fold0", **_spec(0.1))
    n_full = patient_key(full["val"]).nunique()
    n_tenth = patient_key(tenth["val"]).nunique()
    assert n_full == 200
    assert 18 <= n_tenth <= 24  # about 10% of the full-size validation patients
    assert set(tenth["val"]["abnormal"]) == {0, 1}  # both classes kept
    assert len(tenth["test"]) == len(full["test"])  # the test set never shrinks
    # the training set shrinks as before, and validation patients stay out of it
    assert 36 <= patient_key(tenth["train"]).nunique() <= 44
    # nested: the 10% validation patients are among the 50% ones
    half = select_sets(df, "fold0", **_spec(0.5))
    assert set(tenth["val"]["patient_id"]) <= set(half["val"]["patient_id"])


def test_validation_floor_and_the_full_validation_option(tmp_path):
    df = _table(tmp_path, n_val=20, prevalence=0.25)  # 5 positive, 15 negative validation patients
    tiny = select_sets(df, "fold0", **_spec(0.1, val_min_patients=3))
    per_class = tiny["val"].groupby("abnormal")["patient_id"].nunique().to_dict()
    assert per_class == {0: 3, 1: 3}  # the floor, not round(0.1 * n)
    kept = select_sets(df, "fold0", **_spec(0.1, val_labels="full"))
    assert patient_key(kept["val"]).nunique() == 20
    with pytest.raises(ValueError, match="val_labels"):
        resolve_hparams({"val_labels": "half"})


def test_patient_stratum_prefers_a_finding_over_none():
    keys = pd.Series(["a", "a", "a", "b", "b", "c", "c"])
    strata = pd.Series(["none", "none", "dr", "amd", "dr", "none", "none"])
    got = _patient_strata(keys, strata).to_dict()
    # a: its one finding beats two 'none'; b: tie broken by name; c: no finding at all
    assert got == {"a": "dr", "b": "amd", "c": "none"}
    shuffled = _patient_strata(keys[::-1].reset_index(drop=True), strata[::-1].reset_index(drop=True)).to_dict()
    assert shuffled == got


def test_label_fraction_floor_keeps_small_strata_whole():
    df = pd.DataFrame({"dataset": "d", "patient_id": [f"p{i}" for i in range(12)],
                       "image_id": [f"i{i}" for i in range(12)]})
    strata = pd.Series(["1"] * 2 + ["0"] * 10)
    m = label_fraction_mask(df, 0.1, 0, strata, min_per_stratum=3)
    assert int(m[:2].sum()) == 2 and int(m[2:].sum()) == 3
    assert np.array_equal(label_fraction_mask(df, 0.1, 0, strata), label_fraction_mask(df, 0.1, 0, strata, 1))


def test_undefined_validation_metric_falls_back_to_loss_with_a_warning(tmp_path, caplog):
    """One class in validation: AUROC is undefined in every epoch; epochs are then chosen on
    the validation loss (warned, and recorded in history and model.json), not epoch 0 by default."""
    import json
    import logging
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from test_train_helpers import BINARY_TASK, make_task_table, tiny_hparams

    from fundusfm.train.cli import train_main as main

    torch.set_num_threads(1)
    table = make_task_table(tmp_path, n=40)
    df = pd.read_csv(table)
    val = df["fold0"] == "val"
    df.loc[val, "abnormal"] = 0  # validation holds one class only
    df.to_csv(table, index=False)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert main(["--table", str(table), "--fold", "0", "--fraction", "1.0", "--seed", "0", "--task-json",
                     BINARY_TASK, "--init", "random", "--hparams-json", tiny_hparams(epochs=3, patience=None),
                     "--out", str(out), "--external", "ext", "--device", "cpu", "--workers", "0"]) == 0
    assert any("epochs are selected on the validation loss" in r.getMessage() for r in caplog.records)
    hist = pd.read_csv(out / "history.csv")
    assert (hist["monitor_fallback"] == 1).all() and hist["val_auroc"].isna().all()
    meta = json.loads((out / "model.json").read_text())
    assert meta["monitor"] == "loss" and meta["monitor_requested"] == "auroc"
    assert meta["best_epoch"] == int(hist["val_loss"].idxmin())


def test_monitor_follows_the_absent_class_policy():
    from fundusfm.task import TaskSpec
    from fundusfm.train.metrics import monitor_value

    task = TaskSpec.from_dict({"type": "multilabel", "labels": ["dr", "rvo"]})
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=float)  # rvo has no positive case
    p = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.2], [0.1, 0.4]])
    assert np.isnan(monitor_value("auroc", task, y, p, 0.5))  # not the AUROC of dr alone
    mc = TaskSpec.from_dict({"type": "multiclass", "label": "c", "classes": ["a", "b", "c"]})
    assert np.isnan(monitor_value("auroc", mc, np.array([0, 1, 0, 1]), np.full((4, 3), 1 / 3), 0.5))


def _binary_preds(path, y, score):
    pd.DataFrame({"image_id": [f"i{k}" for k in range(len(y))], "dataset": "d",
                  "patient_id": [f"p{k}" for k in range(len(y))], "eye": "U", "label": y,
                  "prob_normal": 1 - np.asarray(score), "prob_abnormal": score}).to_csv(path, index=False)


def test_gallery_model_is_chosen_on_validation_not_test(tmp_path):

    from fundusfm.evaluate.study import best_run_on_validation

    y = np.array([0, 0, 0, 1, 1, 1])
    good, bad = np.array([.1, .2, .3, .7, .8, .9]), np.array([.9, .2, .8, .3, .1, .7])
    recs = []
    for name, val_score, test_auroc in (("a", bad, 0.99), ("b", good, 0.60)):
        d = tmp_path / name
        d.mkdir()
        _binary_preds(d / "predictions_val.csv", y, val_score)
        _binary_preds(d / "predictions_test.csv", y, good)
        recs.append({"task": "t", "set": "test", "init": name, "fold": 0, "fraction": 1.0, "seed": 0,
                     "metrics": {"auroc": test_auroc}, "predictions": str(d / "predictions_test.csv"),
                     "_path": str(d / "test.json")})
    best, val = best_run_on_validation(recs, TaskSpec.from_dict(TASK, "t"))
    assert best["init"] == "b" and val == pytest.approx(1.0)  # run a has the better *test* AUROC
    # a linear probe with the best validation AUROC is no gallery model: it has no network
    recs[0]["adaptation"] = "linear"
    _binary_preds(tmp_path / "a" / "predictions_val.csv", y, good)
    best, _ = best_run_on_validation(recs, TaskSpec.from_dict(TASK, "t"))
    assert best["init"] == "b"


def test_protocol_card_is_written_from_config_and_result_files(tmp_path):
    from pathlib import Path

    import yaml

    from fundusfm import config as fcfg
    from fundusfm.evaluate import protocol

    repo = Path(__file__).resolve().parents[1]
    cfg = fcfg.validate(yaml.safe_load((repo / "config" / "config.yaml").read_text()))
    cfg["tasks"]["multidisease"]["hparams"] = {"val_labels": "full"}
    facts = protocol.config_facts(cfg, "multidisease")
    split = pd.DataFrame({"dataset": ["multidisease"] * 3 + ["external"] * 2,
                          "patient_id": ["P1", "P1", "P2", "e1", "e2"], "image_id": ["a", "b", "c", "e1", "e2"],
                          "split_group": ["multidisease/P1", "multidisease/P1", "multidisease/P2", "external/e1",
                                          "external/e1"],
                          "group_source": ["patient_id", "patient_id", "patient_id", "near-duplicate cluster",
                                           "near-duplicate cluster"]})
    split.to_csv(tmp_path / "split.csv", index=False)
    pairs = pd.DataFrame({"task": ["multidisease", ""], "kind": ["development_external", "cross"],
                          "dataset_a": ["multidisease", "upstream"], "image_id_a": ["a", "u1"],
                          "dataset_b": ["external", "multidisease"], "image_id_b": ["e9", "c"],
                          "distance": [1, 0], "hash_a": ["0", "0"], "hash_b": ["0", "0"], "action": ["x", "y"]})
    pairs.to_csv(tmp_path / "overlap.csv", index=False)
    items = protocol.card_items(facts, {}, protocol.split_levels([tmp_path / "split.csv"]),
                                protocol.overlap_counts(tmp_path / "overlap.csv", "multidisease",
                                                        ["multidisease", "external"]), {"test": 1})
    md = protocol.card_markdown(items)
    for text in ("inits random, fundus (reference for Δ and p: random)", "10%, 100%",
                 "the final classifier layer starts fresh for every init", "`carry_head`: none",
                 "the full validation set is kept", "Student's t", "1 pretraining image(s)",
                 "1 external image(s) duplicating a development image excluded",
                 "external: image-level split and CIs", "multidisease: patient-level (2 split groups)",
                 "undefined runs per set: test 1", "mobilenetv3_small_100"):
        assert text in md, text
    rst = protocol.card_rst([("Task multidisease", items)])
    assert "``carry_head``" in rst and rst.startswith("Protocol card\n=============")


def test_protocol_card_names_each_inits_model_and_where_the_arms_differ():
    """Issue 18: an init with its own architecture, input size, normalisation and recipe,
    both adaptations; the card says what each arm is and how the linear probe works."""
    import json
    from pathlib import Path

    import yaml

    from fundusfm import config as fcfg
    from fundusfm.evaluate import protocol

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    cfg["inits"] = {"retfound": {"checkpoint": "weights/RETFound_cfp_weights.pth", "format": "retfound_mae",
                                 "arch": "vit_tiny_patch16_224", "img_size": 64, "mean": "imagenet", "std": "imagenet",
                                 "recipe": {"lr": 0.0005, "layer_decay": 0.65},
                                 "published": "github.com/rmaphoh/RETFound_MAE", "licence": "CC-BY-NC-4.0"}}
    cfg["tasks"]["multidisease"].update(inits=["random", "retfound"], adaptations=["finetune", "linear"])
    cfg["linear_probe"] = {"c_values": [0.01, 1.0]}
    cfg = fcfg.validate(cfg)
    facts = json.loads(json.dumps(protocol.config_facts(cfg, "multidisease")))  # as the rule passes it
    assert facts["adaptations"] == ["finetune", "linear"]
    assert facts["models"]["retfound"]["definition"] == fcfg.model_definition(cfg, "multidisease", "retfound")
    assert facts["models"]["retfound"]["recipe"] == {"lr": 0.0005, "layer_decay": 0.65}
    assert facts["models"]["random"]["changes"] == {}
    md = protocol.card_markdown(protocol.card_items(facts))
    for text in ("each fine-tuned and linear-probed (every Δ pairs runs of the same adaptation",
                 "random: mobilenetv3_small_100 at 112 px, timm head, normalisation the architecture's timm default; "
                 "weights: none (random initialisation)",
                 "retfound: vit_tiny_patch16_224 at 64 px, timm head, normalisation imagenet; weights: "
                 "`weights/RETFound_cfp_weights.pth` (format retfound_mae), published github.com/rmaphoh/RETFound_MAE, "
                 "licence CC-BY-NC-4.0",
                 "**Arms differ beyond the init:**",
                 "retfound: arch vit_tiny_patch16_224 (task: mobilenetv3_small_100), img_size 64 (task: 112), "
                 "layer_decay 0.65 (task: none), lr 0.0005 (task: 0.002)",
                 "C swept over 0.01, 1 (`linear_probe.c_values`) and chosen on validation",
                 "fitted on the training rows of the same fold, label fraction and seed as the fine-tunes",
                 "`results/features/multidisease/<init>/`",
                 "the activation-map model is chosen among the fine-tunes"):
        assert text in md, text
    held = md.split("**Held constant:**")[1].split("\n")[0]
    assert "mobilenetv3_small_100" not in held and "lr " not in held and "epochs 6" in held
    # one adaptation, no init of its own: no differences line, no linear probe line
    cfg["tasks"]["drgrade"]["adaptations"] = ["finetune"]
    plain = protocol.card_markdown(protocol.card_items(protocol.config_facts(cfg, "drgrade")))
    assert "Arms differ" not in plain and "Linear probe" not in plain and "linear-probed" not in plain
