"""The linear probe (fundusfm linear-probe): the fine-tune's rows, C chosen on validation,
every task type, classes absent from training, unknown labels, infer of a linear run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).parent))
from test_train_helpers import BINARY_TASK, make_task_table, tiny_hparams  # noqa: E402

from fundusfm.cli import main  # noqa: E402
from fundusfm.task import read_predictions  # noqa: E402
from fundusfm.train.features import write_features  # noqa: E402
from fundusfm.train.linear import ABSENT_CLASS_PROB, load_probe, predict_probe  # noqa: E402

torch.set_num_threads(1)  # the fine-tunes here: one thread is faster on a loaded 2-core machine
MULTICLASS = {"type": "multiclass", "label": "grade", "classes": ["none", "mild", "severe"]}
ORDINAL = {**MULTICLASS, "type": "ordinal"}
MULTILABEL = {"type": "multilabel", "labels": ["dr", "amd", "rare"]}
BINARY = json.loads(BINARY_TASK)


def _study(tmp_path, labels: dict[str, np.ndarray], roles: np.ndarray, x: np.ndarray, *, ext: int = 0):
    """A task table (one image per patient, fold0 roles) and a feature file of its images;
    the last ``ext`` rows are an external dataset ``ext``."""
    n = len(roles)
    images = [f"processed/img{i:04d}.png" for i in range(n)]  # never read: the probe joins features on them
    df = pd.DataFrame({"dataset": ["dev"] * (n - ext) + ["ext"] * ext, "image_id": [f"i{i}" for i in range(n)],
                       "patient_id": [f"p{i}" for i in range(n)], "eye": "L", "image": images, "qc_status": "ok",
                       **labels, "fold0": roles})
    table = tmp_path / "task.csv"
    df.to_csv(table, index=False)
    feats = tmp_path / "dev.parquet"
    write_features(feats, images, x, {"model": {"arch": "synthetic", "head": "timm", "img_size": 32,
                                                 "mean": [0.5] * 3, "std": [0.5] * 3},
                                       "init": {"name": "synthetic", "spec": "random"}})
    return table, feats


def _roles(n_train, n_val, n_test, n_ext=0):
    return np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test + ["external"] * n_ext)


def _probe(table, feats, out, task, *, hp=None, c="0.0001,0.001,0.01,0.1,1,10", fraction=1.0, extra=()):
    return main(["linear-probe", "--table", str(table), "--fold", "0", "--fraction", str(fraction), "--seed", "0",
                 "--task-json", json.dumps(task), "--hparams-json", json.dumps(hp or {}), "--features", str(feats),
                 "--c-values", c, "--max-iter", "500", "--init-name", "synthetic", "--out", str(out), *extra])


def test_binary_probe_outputs_and_the_refit_at_the_chosen_c(tmp_path):
    rng = np.random.default_rng(0)
    roles = _roles(80, 40, 40)
    y = (rng.random(len(roles)) < 0.4).astype(int)
    x = rng.normal(size=(len(roles), 8)) + y[:, None] * np.array([1.0, 0.5] + [0] * 6)
    table, feats = _study(tmp_path, {"abnormal": y}, roles, x.astype(np.float32))
    out = tmp_path / "run"
    assert _probe(table, feats, out, BINARY) == 0
    assert {p.name for p in out.iterdir()} == {"predictions_val.csv", "predictions_test.csv", "probe.json",
                                               "history.csv", "train_config.json", "model.json"}
    test = read_predictions(out / "predictions_test.csv", BINARY)  # the predictions contract
    assert len(test) == 40 and list(test["image_id"]) == [f"i{i}" for i in range(120, 160)]
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.columns) == ["epoch", "c", "log10_c", "train_loss", "val_loss", "val_auroc", "monitor_fallback",
                                  "n_iter", "converged", "time"]
    assert list(hist["epoch"]) == list(range(6)) and hist["converged"].all()
    probe, meta = load_probe(out), json.loads((out / "model.json").read_text())
    assert meta["mode"] == meta["adaptation"] == "linear" and meta["best_c"] == probe["c"]
    assert meta["feature_dim"] == 8 and meta["arch"] == "synthetic" and meta["monitor"] == "auroc"
    assert meta["best_value"] == hist["val_auroc"].max()
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["n_images"] == {"train": 80, "val": 40, "test": 40} and cfg["c_values"][0] == 1e-4
    assert cfg["features"]["meta"]["init"]["name"] == "synthetic" and cfg["resources"]["wall_s"] >= 0
    # the saved model is scikit-learn's fit on the standardised training rows at the chosen C
    tr = roles == "train"
    scaler = StandardScaler().fit(x[tr].astype(np.float32).astype(np.float64))
    ref = LogisticRegression(C=probe["c"], max_iter=500).fit(scaler.transform(x[tr].astype(np.float32)), y[tr])
    te = roles == "test"
    want = ref.predict_proba(scaler.transform(x[te].astype(np.float32)))
    np.testing.assert_allclose(test[["prob_normal", "prob_abnormal"]].to_numpy(), want, atol=1e-3)


def test_c_is_chosen_on_validation_not_on_test(tmp_path):
    # 30 noise features and one weak signal: a weak penalty overfits the training rows.
    # The test rows are copies of the training rows, so the test loss keeps falling as C
    # grows, while the validation loss (fresh rows) is lowest at a moderate C.
    rng = np.random.default_rng(1)
    n_tr, n_val = 60, 200
    ytr, yval = (rng.random(n_tr) < 0.5).astype(int), (rng.random(n_val) < 0.5).astype(int)
    signal = np.array([1.2] + [0.0] * 30)
    xtr = rng.normal(size=(n_tr, 31)) + ytr[:, None] * signal
    xval = rng.normal(size=(n_val, 31)) + yval[:, None] * signal
    x = np.vstack([xtr, xval, xtr]).astype(np.float32)
    y = np.concatenate([ytr, yval, ytr])
    table, feats = _study(tmp_path, {"abnormal": y}, _roles(n_tr, n_val, n_tr), x)
    out = tmp_path / "run"
    c_values = [1e-3, 1e-2, 1e-1, 1, 10, 100]
    assert _probe(table, feats, out, BINARY, hp={"monitor": "loss"}, c=",".join(map(str, c_values))) == 0
    hist = pd.read_csv(out / "history.csv")
    chosen = json.loads((out / "model.json").read_text())["best_c"]
    assert chosen == hist["c"][hist["val_loss"].idxmin()]
    assert chosen < 10  # a moderate C: validation penalises the overfit
    test_loss = []
    for c in c_values:  # what a choice on the test rows would have picked: the weakest penalty
        s = StandardScaler().fit(xtr.astype(np.float32))
        p = LogisticRegression(C=c, max_iter=2000).fit(s.transform(xtr.astype(np.float32)), ytr)
        q = p.predict_proba(s.transform(xtr.astype(np.float32)))[np.arange(n_tr), ytr]
        test_loss.append(-np.mean(np.log(q)))
    assert c_values[int(np.argmin(test_loss))] == 100 != chosen


def test_ties_on_validation_go_to_the_smaller_c(tmp_path):
    rng = np.random.default_rng(2)
    roles = _roles(40, 20, 20)
    y = np.tile([0, 1], 40)
    x = (rng.normal(size=(80, 4)) * 0.1 + y[:, None] * 5).astype(np.float32)  # separable: AUROC 1 for every C
    table, feats = _study(tmp_path, {"abnormal": y}, roles, x)
    assert _probe(table, feats, tmp_path / "run", BINARY, c="10,0.01,1") == 0
    hist = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(hist["c"]) == [0.01, 1, 10] and (hist["val_auroc"] == 1).all()
    assert load_probe(tmp_path / "run")["c"] == 0.01


@pytest.mark.parametrize("task", [MULTICLASS, ORDINAL], ids=["multiclass", "ordinal"])
def test_a_class_absent_from_training_gets_the_floor_and_is_named(tmp_path, task):
    rng = np.random.default_rng(3)
    roles = _roles(60, 30, 30)
    y = rng.integers(0, 3, len(roles))
    y[roles == "train"] = rng.integers(0, 2, 60)  # no 'severe' among the training rows
    x = (rng.normal(size=(len(roles), 5)) + np.eye(3, 5)[y] * 2).astype(np.float32)
    table, feats = _study(tmp_path, {"grade": y}, roles, x)
    out = tmp_path / "run"
    hp = {"monitor": "kappa"} if task["type"] == "ordinal" else {}
    assert _probe(table, feats, out, task, hp=hp) == 0
    probe, meta = load_probe(out), json.loads((out / "model.json").read_text())
    assert probe["absent_classes"] == meta["absent_classes"] == ["severe"]
    assert "absent from the training rows" in probe["absent_class_rule"]
    assert probe["model"]["fitted_classes"] == [0, 1]
    for name in ("val", "test"):
        pred = read_predictions(out / f"predictions_{name}.csv", task)  # sums to 1, in [0, 1]
        assert np.allclose(pred["prob_severe"], ABSENT_CLASS_PROB)
        assert (pred[["prob_none", "prob_mild"]].to_numpy().argmax(1) >= 0).all()
    assert meta["monitor"] == ("kappa" if task["type"] == "ordinal" else "auroc")


def test_multiclass_is_one_multinomial_model(tmp_path):
    rng = np.random.default_rng(4)
    roles = _roles(90, 30, 30)
    y = np.resize([0, 1, 2], len(roles))
    x = (rng.normal(size=(len(roles), 6)) + np.eye(3, 6)[y] * 1.5).astype(np.float32)
    table, feats = _study(tmp_path, {"grade": y}, roles, x)
    assert _probe(table, feats, tmp_path / "run", MULTICLASS) == 0
    probe = load_probe(tmp_path / "run")
    assert probe["model"]["type"] == "softmax" and np.asarray(probe["model"]["coef"]).shape == (3, 6)
    tr = roles == "train"
    s = StandardScaler().fit(x[tr])
    ref = LogisticRegression(C=probe["c"], max_iter=500).fit(s.transform(x[tr]), y[tr])
    np.testing.assert_allclose(predict_probe(probe, x), ref.predict_proba(s.transform(x)), atol=1e-3)


def test_multilabel_fits_each_label_on_its_known_rows(tmp_path):
    rng = np.random.default_rng(5)
    roles = _roles(80, 40, 40)
    n = len(roles)
    dr, amd = (rng.random(n) < 0.4).astype(float), (rng.random(n) < 0.3).astype(float)
    x = (rng.normal(size=(n, 6)) + np.stack([dr * 2, amd * 2], 1) @ np.eye(2, 6)).astype(np.float32)
    unknown = rng.random(n) < 0.3
    amd_known = amd.copy()
    amd_known[unknown] = np.nan  # amd unknown on 30% of the rows
    rare = np.zeros(n)
    rare[(roles != "train") & (rng.random(n) < 0.2)] = 1  # never positive in training
    table, feats = _study(tmp_path, {"dr": dr, "amd": amd_known, "rare": rare}, roles, x)
    out = tmp_path / "run"
    assert _probe(table, feats, out, MULTILABEL) == 0
    probe = load_probe(out)
    labels = probe["model"]["labels"]
    tr = roles == "train"
    assert labels[1]["n_train"] == int((tr & ~unknown).sum()) and labels[0]["n_train"] == 80
    assert probe["constant_outputs"] == ["rare"] and labels[2]["constant"] == ABSENT_CLASS_PROB
    s = StandardScaler().fit(x[tr])
    known = tr & ~unknown
    ref = LogisticRegression(C=probe["c"], max_iter=500).fit(s.transform(x[known]), amd[known].astype(int))
    np.testing.assert_allclose(predict_probe(probe, x)[:, 1], ref.predict_proba(s.transform(x))[:, 1], atol=1e-3)
    raw = pd.read_csv(out / "predictions_val.csv")  # unknown labels stay unknown (empty) in the file
    assert raw["label_amd"].isna().sum() == int(unknown[roles == "val"].sum()) > 0
    assert raw[["prob_dr", "prob_amd", "prob_rare"]].apply(lambda c: c.between(0, 1).all()).all()
    # 'rare' is positive in validation but constant: its AUROC is 0.5, the macro value defined
    assert json.loads((out / "model.json").read_text())["monitor"] == "auroc"


def test_a_single_training_class_gives_a_constant_not_a_crash(tmp_path):
    rng = np.random.default_rng(6)
    roles = _roles(20, 10, 10)
    y = np.zeros(len(roles), int)
    y[20:] = rng.integers(0, 2, 20)
    x = rng.normal(size=(len(roles), 3)).astype(np.float32)
    table, feats = _study(tmp_path, {"abnormal": y}, roles, x)
    assert _probe(table, feats, tmp_path / "run", BINARY) == 0
    probe = load_probe(tmp_path / "run")
    assert probe["model"]["type"] == "constant" and probe["absent_classes"] == ["abnormal"]
    test = read_predictions(tmp_path / "run" / "predictions_test.csv", BINARY)
    assert np.allclose(test["prob_abnormal"], ABSENT_CLASS_PROB)


def test_probe_and_finetune_of_a_run_use_the_same_rows(tmp_path):
    table = make_task_table(tmp_path, n=80, n_external=0)
    feats = tmp_path / "dev.parquet"
    hp = tiny_hparams(epochs=1, val_min_patients=1)
    assert main(["embed", "--table", str(table), "--init", "random", "--hparams-json", hp, "--task-json",
                 BINARY_TASK, "--gpus", "0", "--out", str(feats)]) == 0
    common = ["--table", str(table), "--fold", "0", "--fraction", "0.5", "--seed", "2", "--task-json", BINARY_TASK,
              "--hparams-json", hp]
    ft, lp = tmp_path / "ft", tmp_path / "lp"
    assert main(["train", *common, "--init", "random", "--out", str(ft), "--device", "cpu", "--workers", "0"]) == 0
    assert main(["linear-probe", *common, "--features", str(feats), "--out", str(lp)]) == 0
    for name in ("val", "test"):
        a = pd.read_csv(ft / f"predictions_{name}.csv", dtype=str)
        b = pd.read_csv(lp / f"predictions_{name}.csv", dtype=str)
        assert list(a["image_id"]) == list(b["image_id"]) and list(a["label"]) == list(b["label"])
    n_ft = json.loads((ft / "train_config.json").read_text())["n_images"]
    n_lp = json.loads((lp / "train_config.json").read_text())["n_images"]
    assert n_ft == n_lp and n_ft["val"] < 16  # the fraction shrank validation too, for both
    # and the training rows themselves: the engine's selection equals the probe's
    from fundusfm.task import TaskSpec
    from fundusfm.train.config import resolve_hparams
    from fundusfm.train.engine import RunSpec, Trainer
    from fundusfm.train.linear import ProbeSpec, probe_sets

    task = TaskSpec.from_dict(json.loads(BINARY_TASK))
    h = resolve_hparams(json.loads(hp))
    trainer = Trainer(RunSpec(table=str(table), fold=0, fraction=0.5, seed=2, task=task, init="random", hparams=h,
                              out=str(tmp_path / "x"), device="cpu", workers=0))
    trainer._setup()
    sets = probe_sets(ProbeSpec(table=str(table), fold=0, fraction=0.5, seed=2, task=task, hparams=h,
                                features=str(feats), out=str(lp)))
    for name in ("train", "val", "test"):
        assert trainer.sets[name]["image"].tolist() == sets[name]["image"].tolist()


def test_infer_of_a_linear_run_predicts_external_features_with_the_saved_probe(tmp_path, capsys):
    rng = np.random.default_rng(7)
    roles = _roles(60, 20, 20, 10)
    y = (rng.random(len(roles)) < 0.5).astype(int)
    x = (rng.normal(size=(len(roles), 4)) + y[:, None]).astype(np.float32)
    table, feats = _study(tmp_path, {"abnormal": y}, roles, x, ext=10)
    out = tmp_path / "run"
    assert _probe(table, feats, out, BINARY) == 0
    # external features: the first ten test rows' features under the external images' names
    df = pd.read_csv(table)
    ext_images = df.loc[df["fold0"] == "external", "image"].tolist()
    test_idx = np.flatnonzero(roles == "test")[:10]
    ext_feats = tmp_path / "external_ext.parquet"
    write_features(ext_feats, ext_images, x[test_idx], json.loads(json.dumps(
        {"model": {"arch": "synthetic", "head": "timm", "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
         "init": {"name": "synthetic", "spec": "random"}})))
    pred = tmp_path / "ext.csv"
    args = ["infer", "--model-dir", str(out), "--table", str(table), "--dataset", "ext", "--out", str(pred)]
    assert main(args) == 2 and "--features" in capsys.readouterr().err
    assert main(args + ["--features", str(ext_feats)]) == 0
    got = read_predictions(pred, BINARY)
    own = read_predictions(out / "predictions_test.csv", BINARY).iloc[:10]
    np.testing.assert_array_equal(got[["prob_normal", "prob_abnormal"]].to_numpy(),
                                  own[["prob_normal", "prob_abnormal"]].to_numpy())
    assert list(got["label"]) == list(y[roles == "external"])
    # features of another model are refused
    other = tmp_path / "other.parquet"
    write_features(other, ext_images, x[test_idx], {"model": {"arch": "resnet50"}, "init": {"spec": "random"}})
    assert main(args[:-2] + ["--out", str(tmp_path / "o.csv"), "--features", str(other)]) == 1
    assert "features of model" in capsys.readouterr().err


def test_a_table_image_without_features_names_the_image_and_the_file(tmp_path, capsys):
    rng = np.random.default_rng(8)
    roles = _roles(10, 5, 5)
    y = np.tile([0, 1], 10)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    table, _ = _study(tmp_path, {"abnormal": y}, roles, x)
    images = pd.read_csv(table)["image"].tolist()
    partial = tmp_path / "partial.parquet"
    write_features(partial, images[:12] + images[13:], np.delete(x, 12, 0), {"model": {}, "init": {}})
    assert _probe(table, partial, tmp_path / "run", BINARY) == 1
    err = capsys.readouterr().err
    assert f"{partial}: no features for image {images[12]!r}" in err and f"{table} (val, fold0)" in err
    assert not (tmp_path / "run").exists()
    assert _probe(table, tmp_path / "none.parquet", tmp_path / "run", BINARY) == 1
    assert "none.parquet not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _probe(table, partial, tmp_path / "run", BINARY, c="0.1,-1")


def test_the_probe_is_deterministic(tmp_path):
    rng = np.random.default_rng(9)
    roles = _roles(50, 20, 20)
    y = rng.integers(0, 3, 90)
    x = (rng.normal(size=(90, 10)) + np.eye(3, 10)[y]).astype(np.float32)
    table, feats = _study(tmp_path, {"grade": y}, roles, x)
    for name in ("a", "b"):
        assert _probe(table, feats, tmp_path / name, MULTICLASS) == 0
    for f in ("predictions_val.csv", "predictions_test.csv", "model.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    a, b = (load_probe(tmp_path / name) for name in "ab")
    for p in (a, b):  # everything but the fit times
        for row in p["sweep"]:
            row.pop("fit_s")
    assert a == b


def test_an_undefined_validation_metric_selects_c_on_the_validation_loss(tmp_path):
    rng = np.random.default_rng(10)
    roles = _roles(40, 10, 10)
    y = np.tile([0, 1], 30)
    y[40:50] = 0  # validation of one class: its AUROC is undefined whatever the model says
    x = (rng.normal(size=(60, 4)) + y[:, None]).astype(np.float32)
    table, feats = _study(tmp_path, {"abnormal": y}, roles, x)
    assert _probe(table, feats, tmp_path / "run", BINARY) == 0
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["monitor"] == "loss" and meta["monitor_requested"] == "auroc" and "undefined" in meta["monitor_note"]
    hist = pd.read_csv(tmp_path / "run" / "history.csv")
    assert (hist["monitor_fallback"] == 1).all() and hist["val_auroc"].isna().all()
    assert meta["best_c"] == hist["c"][hist["val_loss"].idxmin()]


def test_infer_of_a_finetune_still_predicts_from_the_images(tmp_path):
    table = make_task_table(tmp_path, n=24, n_external=6)
    out = tmp_path / "ft"
    assert main(["train", "--table", str(table), "--task-json", BINARY_TASK, "--init", "random", "--hparams-json",
                 tiny_hparams(epochs=1), "--external", "ext", "--device", "cpu", "--workers", "0",
                 "--out", str(out)]) == 0
    pred = tmp_path / "ext.csv"
    assert main(["infer", "--model-dir", str(out), "--table", str(table), "--dataset", "ext", "--gpus", "0",
                 "--out", str(pred)]) == 0
    got, want = read_predictions(pred, BINARY), read_predictions(out / "predictions_external_ext.csv", BINARY)
    assert list(got["image_id"]) == list(want["image_id"])
    np.testing.assert_allclose(got[["prob_normal", "prob_abnormal"]], want[["prob_normal", "prob_abnormal"]],
                               atol=1e-5)
