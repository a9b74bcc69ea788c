"""The comparison protocol (issue 14): label scarcity applies to validation too, with a floor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fundusfm.data.splits import _patient_strata, label_fraction_mask, patient_key
from fundusfm.train.config import TaskSpec, resolve_hparams
from fundusfm.train.engine import RunSpec, select_sets

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
    return RunSpec(table="t.csv", fold=0, fraction=fraction, seed=0, task=TaskSpec.from_dict(TASK), init="random",
                   hparams=resolve_hparams(hp), out="o")


def test_label_fraction_shrinks_validation_too_above_the_floor(tmp_path):
    df = _table(tmp_path)
    full = select_sets(df, "fold0", _spec(1.0))
    tenth = select_sets(df, "fold0", _spec(0.1))
    n_full = patient_key(full["val"]).nunique()
    n_tenth = patient_key(tenth["val"]).nunique()
    assert n_full == 200
    assert 18 <= n_tenth <= 24  # about 10% of the full-size validation patients
    assert set(tenth["val"]["abnormal"]) == {0, 1}  # both classes kept
    assert len(tenth["test"]) == len(full["test"])  # the test set never shrinks
    # the training set shrinks as before, and validation patients stay out of it
    assert 36 <= patient_key(tenth["train"]).nunique() <= 44
    # nested: the 10% validation patients are among the 50% ones
    half = select_sets(df, "fold0", _spec(0.5))
    assert set(tenth["val"]["patient_id"]) <= set(half["val"]["patient_id"])


def test_validation_floor_and_the_full_validation_option(tmp_path):
    df = _table(tmp_path, n_val=20, prevalence=0.25)  # 5 positive, 15 negative validation patients
    tiny = select_sets(df, "fold0", _spec(0.1, val_min_patients=3))
    per_class = tiny["val"].groupby("abnormal")["patient_id"].nunique().to_dict()
    assert per_class == {0: 3, 1: 3}  # the floor, not round(0.1 * n)
    kept = select_sets(df, "fold0", _spec(0.1, val_labels="full"))
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
