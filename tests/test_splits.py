"""Patient-level splits, nested label fractions and the leakage check."""

import numpy as np
import pandas as pd
import pytest

from fundusfm.data.splits import (
    LeakageError,
    SplitSpec,
    assign_roles,
    check_leakage,
    label_fraction_mask,
    patient_key,
)


def make_table(n_patients=60, datasets=("a",), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for ds in datasets:
        for p in range(n_patients):
            y = int(rng.random() < 0.3)
            for eye in "LR":
                rows.append(
                    dict(dataset=ds, image_id=f"{ds}{p:03d}{eye}", patient_id=f"P{p:03d}", eye=eye,
                         abnormal=y, dr=int(rng.random() < 0.2), glaucoma=int(rng.random() < 0.2), qc_status="ok")
                )
    return pd.DataFrame(rows)


BINARY = {"name": "t", "type": "binary", "label": "abnormal", "classes": ["normal", "abnormal"]}


def test_kfold_keeps_each_patient_in_one_role_per_fold_and_tests_every_patient_once():
    df = assign_roles(make_table(), BINARY, SplitSpec(strategy="kfold", folds=5, seed=1))
    keys = patient_key(df)
    tested = pd.concat([keys[df[f"fold{k}"] == "test"] for k in range(5)])
    assert tested.nunique() == keys.nunique()  # every patient tested exactly once
    assert tested.groupby(tested).size().eq(2).all()  # both eyes in the same test fold
    for k in range(5):
        assert df.groupby(keys)[f"fold{k}"].nunique().max() == 1
        # stratified: each test fold has about the overall positive rate
        rate = df.loc[df[f"fold{k}"] == "test", "abnormal"].mean()
        assert abs(rate - df["abnormal"].mean()) < 0.15


def test_kfold_is_deterministic_and_independent_of_row_order():
    t = make_table()
    a = assign_roles(t, BINARY, SplitSpec(folds=5, seed=3))
    b = assign_roles(t.sample(frac=1, random_state=7), BINARY, SplitSpec(folds=5, seed=3)).loc[a.index]
    pd.testing.assert_frame_equal(a, b)


def test_label_fractions_are_nested_patient_level_and_stratified():
    t = make_table(n_patients=200)
    strata = t["abnormal"]
    m10 = label_fraction_mask(t, 0.1, seed=0, strata=strata)
    m50 = label_fraction_mask(t, 0.5, seed=0, strata=strata)
    m100 = label_fraction_mask(t, 1.0, seed=0, strata=strata)
    assert (m10 <= m50).all() and (m50 <= m100).all() and m100.all()
    keys = patient_key(t)
    assert keys[m10].nunique() == pytest.approx(20, abs=2)
    # both eyes of a kept patient are kept
    assert t[m10].groupby(keys[m10]).size().eq(2).all()
    # stratified: the positive rate among kept patients follows the whole set
    assert abs(t.loc[m10, "abnormal"].mean() - t["abnormal"].mean()) < 0.08
    # another seed draws another subset
    assert not (label_fraction_mask(t, 0.1, seed=1, strata=strata) == m10).all()


def test_label_fraction_keeps_one_patient_of_a_rare_class():
    t = make_table(n_patients=30)
    t["abnormal"] = 0
    t.loc[t["patient_id"] == "P007", "abnormal"] = 1
    m = label_fraction_mask(t, 0.05, seed=0, strata=t["abnormal"])
    assert t.loc[m, "abnormal"].max() == 1


def test_external_and_qc_failures_and_missing_labels_get_roles_not_dropped():
    t = make_table(datasets=("dev", "ext"))
    t.loc[3, "qc_status"] = "rejected"
    t.loc[5, "abnormal"] = np.nan
    task = dict(BINARY, external=["ext"])
    df = assign_roles(t, task, SplitSpec(folds=3))
    assert len(df) == len(t)
    assert (df.loc[df.dataset == "ext", "fold0"] == "external").all()
    assert df.loc[3, "fold0"] == "excluded" and df.loc[3, "exclude_reason"] == "qc:rejected"
    assert df.loc[5, "fold0"] == "excluded" and df.loc[5, "exclude_reason"] == "label missing"


def test_official_split_respected_and_val_carved_from_train_patients():
    t = make_table()
    t["split"] = np.where(t["patient_id"] < "P045", "train", "test")
    df = assign_roles(t, BINARY, SplitSpec(strategy="official"))
    assert (df.loc[t["split"] == "test", "fold0"] == "test").all()
    assert set(df.loc[t["split"] == "train", "fold0"]) == {"train", "val"}


def test_official_split_missing_values_fail_with_the_image_named():
    t = make_table()
    t["split"] = "train"
    t.loc[4, "split"] = ""
    with pytest.raises(ValueError, match=t.loc[4, "image_id"]):
        assign_roles(t, BINARY, SplitSpec(strategy="official"))


def test_planted_patient_leak_is_caught_with_ids():
    df = assign_roles(make_table(), BINARY, SplitSpec(folds=5))
    test_row = df.index[df["fold0"] == "test"][0]
    partner = df.index[(df["patient_id"] == df.loc[test_row, "patient_id"]) & (df.index != test_row)][0]
    df.loc[partner, "fold0"] = "train"
    with pytest.raises(LeakageError, match=df.loc[test_row, "patient_id"]):
        check_leakage(df)
