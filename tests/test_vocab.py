"""normal/abnormal are derived from disease columns only where that is not a guess."""

from __future__ import annotations

import pandas as pd

from fundusfm.data.vocab import DISEASE_COLUMNS, LABELS, harmonise_abnormal, label_conflicts


def frame(**cols):
    return pd.DataFrame({k: pd.array(v, dtype="Int64") for k, v in cols.items()})


def test_vocabulary_has_the_contract_columns():
    assert LABELS["dr_grade"].values == (0, 1, 2, 3, 4) and LABELS["quality"].values == ("good", "usable", "reject")
    for c in ["normal", "abnormal", "dme", "glaucoma", "glaucoma_suspect", "amd", "myopia", "rvo", "brvo", "crvo",
              "cataract", "hypertensive", "other"]:
        assert LABELS[c].values == (0, 1) and LABELS[c].description
    assert "glaucoma_suspect" not in DISEASE_COLUMNS


def test_any_positive_disease_is_abnormal():
    out = harmonise_abnormal(frame(dr_grade=[2, 0, None], amd=[0, 1, None]))
    assert out["abnormal"].tolist()[:2] == [1, 1] and pd.isna(out["abnormal"].iloc[2])
    assert out["normal"].tolist()[:2] == [0, 0]


def test_all_negative_is_normal_only_for_exhaustive_labels():
    df = frame(dr_grade=[0], amd=[0])
    assert pd.isna(harmonise_abnormal(df)["normal"].iloc[0])
    out = harmonise_abnormal(df, exhaustive=True)
    assert (out["normal"].iloc[0], out["abnormal"].iloc[0]) == (1, 0)
    # an unknown disease column or a suspect blocks the derivation
    assert pd.isna(harmonise_abnormal(frame(dr_grade=[0], amd=[None]), exhaustive=True)["abnormal"].iloc[0])
    assert pd.isna(harmonise_abnormal(frame(glaucoma=[0], glaucoma_suspect=[1]), exhaustive=True)["abnormal"].iloc[0])


def test_explicit_values_are_kept_and_conflicts_found():
    out = harmonise_abnormal(frame(normal=[1], amd=[None]))
    assert out["abnormal"].iloc[0] == 0
    bad = harmonise_abnormal(frame(normal=[1], amd=[1]))
    assert label_conflicts(bad) == [(0, "abnormal=0 but amd positive")]
    assert label_conflicts(frame(normal=[1], abnormal=[1])) == [(0, "normal=1 and abnormal=1 must sum to 1")]
