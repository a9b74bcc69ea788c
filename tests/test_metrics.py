"""Metric functions against hand-computed values and scikit-learn, incl. degenerate data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from fundusfm.evaluate.bootstrap import patient_bootstrap, resample_indices
from fundusfm.task import PredictionsError, TaskSpec, validate_predictions
from fundusfm.evaluate.metrics import (compute_metrics, expected_calibration_error, metrics_from_arrays,
                                       youden_threshold)

BINARY = {"type": "binary", "label": "glaucoma", "classes": ["no", "yes"]}
DR = {"type": "ordinal", "label": "dr_grade", "classes": ["g0", "g1", "g2"]}
ML = {"type": "multilabel", "labels": ["dr", "amd"]}


def binary_df(y, s, patients=None):
    n = len(y)
    return pd.DataFrame({
        "image_id": [f"i{i}" for i in range(n)], "dataset": "d",
        "patient_id": patients if patients is not None else [f"p{i}" for i in range(n)], "eye": "L",
        "label": y, "prob_no": 1 - np.asarray(s, float), "prob_yes": s,
    })


def test_binary_auroc_matches_hand_count_of_pairs():
    # positives 0.8, 0.4; negatives 0.6, 0.2, 0.4:
    # pairs (pos > neg): 0.8 beats all 3; 0.4 beats 0.2, ties 0.4 (1/2), loses to 0.6 -> 4.5 / 6
    y = [1, 1, 0, 0, 0]
    s = [0.8, 0.4, 0.6, 0.2, 0.4]
    m = compute_metrics(binary_df(y, s), BINARY)["metrics"]
    assert m["auroc"] == pytest.approx(4.5 / 6)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, s))
    # at 0.5: predicted positive = [1,0,1,0,0] -> sens 1/2, spec 2/3, accuracy 3/5
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["aupr"] == pytest.approx(skm.average_precision_score(y, s))
    assert m["brier"] == pytest.approx(np.mean((np.array(s) - np.array(y)) ** 2))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, [1, 0, 1, 0, 0], average="macro"))


def test_ece_hand_computed():
    # bins of width 0.1: {0.05, 0.05} -> mean p 0.05, rate 0.5 ; {0.95} -> p 0.95, rate 1
    y = np.array([0, 1, 1])
    p = np.array([0.05, 0.05, 0.95])
    expected = (2 / 3) * abs(0.5 - 0.05) + (1 / 3) * abs(1 - 0.95)
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == pytest.approx(0.0)


def test_multiclass_matches_sklearn_and_ordinal_kappa():
    rng = np.random.default_rng(1)
    n, k = 60, 3
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    spec = TaskSpec.from_dict(DR)
    m = metrics_from_arrays(y, P, spec)["metrics"]
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, P, multi_class="ovr", average="macro"))
    for c, name in enumerate(spec.names):
        assert m[f"auroc:{name}"] == pytest.approx(skm.roc_auc_score(y == c, P[:, c]))
    yhat = P.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, yhat))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, yhat))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, yhat, average="macro"))
    assert m["kappa_quadratic"] == pytest.approx(skm.cohen_kappa_score(y, yhat, weights="quadratic"))
    assert m["brier"] == pytest.approx(np.mean(((P - np.eye(k)[y]) ** 2).sum(1)))
    assert m["sensitivity"] == pytest.approx(m["balanced_accuracy"])  # macro recall


def test_quadratic_kappa_hand_computed():
    # 2x2 with classes 0/1 only in a 3-class ordinal task: y=[0,0,1,1], yhat=[0,1,1,1]
    y = np.array([0, 0, 1, 1])
    P = np.array([[.9, .1, 0], [.2, .8, 0], [.1, .9, 0], [0, 1, 0]])
    # observed O=[[1,1],[0,2]]/4 ; expected from marginals rows (.5,.5) cols (.25,.75)
    # weights (i-j)^2: only off-diagonals weigh 1: kappa = 1 - (0.25) / (.5*.75 + .5*.25) = 0.5
    m = metrics_from_arrays(y, P, TaskSpec.from_dict(DR))
    assert m["metrics"]["kappa_quadratic"] == pytest.approx(0.5)
    # class g2 never occurs: its AUROC and the macro AUROC are undefined, with reasons
    assert m["metrics"]["auroc:g2"] is None and "only negative" in m["undefined"]["auroc:g2"]
    assert m["metrics"]["auroc"] is None and "g2" in m["undefined"]["auroc"]
    assert m["metrics"]["balanced_accuracy"] is None


def test_multilabel_macro_micro_match_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=(40, 2))
    P = np.clip(0.6 * y + rng.uniform(0, 0.5, size=(40, 2)), 0, 1)
    m = metrics_from_arrays(y, P, TaskSpec.from_dict(ML))["metrics"]
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, P, average="macro"))
    assert m["auroc_micro"] == pytest.approx(skm.roc_auc_score(y, P, average="micro"))
    assert m["aupr"] == pytest.approx(skm.average_precision_score(y, P, average="macro"))
    assert m["auroc:amd"] == pytest.approx(skm.roc_auc_score(y[:, 1], P[:, 1]))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, P >= 0.5))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, P >= 0.5, average="macro"))


def test_single_class_gives_null_with_reason_not_crash():
    r = compute_metrics(binary_df([0, 0, 0], [0.1, 0.7, 0.3]), BINARY)
    assert r["metrics"]["auroc"] is None and "only negative" in r["undefined"]["auroc"]
    assert r["metrics"]["sensitivity"] is None and "no positive" in r["undefined"]["sensitivity"]
    assert r["metrics"]["specificity"] == pytest.approx(2 / 3)
    assert r["metrics"]["accuracy"] == pytest.approx(2 / 3)


def test_all_equal_scores_auroc_half_and_threshold_undefined():
    y = [0, 1, 0, 1]
    s = [0.5] * 4
    test = binary_df(y, s)
    r = compute_metrics(test, BINARY, val_df=binary_df(y, s))
    # ties count 1/2: a constant score ranks nothing, AUROC = 0.5 exactly (as sklearn)
    assert r["metrics"]["auroc"] == pytest.approx(0.5)
    assert r["metrics"]["threshold_val"] is None
    assert "Youden" in r["undefined"]["sensitivity_val_threshold"]


def test_youden_threshold_on_validation_is_applied_to_test():
    yv = np.array([0, 0, 0, 1, 1, 1])
    sv = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.9])  # perfect split at 0.35
    assert youden_threshold(yv, sv) == pytest.approx(0.35)
    test = binary_df([0, 1, 1, 0], [0.2, 0.4, 0.45, 0.36])
    r = compute_metrics(test, BINARY, val_df=binary_df(yv, sv))["metrics"]
    assert r["threshold_val"] == pytest.approx(0.35)
    assert r["sensitivity_val_threshold"] == pytest.approx(1.0)  # 0.4, 0.45 >= 0.35
    assert r["specificity_val_threshold"] == pytest.approx(0.5)  # 0.36 >= 0.35 is a false positive
    assert r["sensitivity"] == pytest.approx(0.0)  # at 0.5 nothing is positive


def test_bootstrap_resamples_whole_patients():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    seen_twice = False
    for idx in resample_indices(groups, 50, seed=3):
        times = np.bincount(idx, minlength=len(groups))  # how often each image was drawn
        for g in ("a", "c"):
            rows = times[groups == g]
            # the images of one patient are always drawn together, the same number of times
            assert (rows == rows[0]).all()
            seen_twice |= rows[0] >= 2
        assert len(idx) == sum(times)
    assert seen_twice  # patients really are drawn with replacement


def test_bootstrap_deterministic_and_counts_one_class_resamples():
    # 3 patients, one positive: many resamples contain no positive -> AUROC undefined there
    df = binary_df([1, 0, 0, 0], [0.9, 0.2, 0.4, 0.1], patients=["p1", "p2", "p3", "p3"])
    a = patient_bootstrap(df, BINARY, n_boot=200, seed=7)
    b = patient_bootstrap(df, BINARY, n_boot=200, seed=7)
    assert a == b
    n_undef = a["n_undefined"]["auroc"]
    # P(no positive patient drawn among 3 draws) = (2/3)^3 ~ 0.30
    assert 30 < n_undef < 100
    assert a["n_valid"]["auroc"] == 200 - n_undef
    assert a["ci"]["auroc"] == [1.0, 1.0]


def test_bootstrap_ci_covers_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    s = np.clip(0.3 * y + rng.uniform(0, 0.7, 80), 0, 1)
    df = binary_df(y, s)
    est = compute_metrics(df, BINARY)["metrics"]["auroc"]
    lo, hi = patient_bootstrap(df, BINARY, n_boot=200, seed=0)["ci"]["auroc"]
    assert lo < est < hi and hi - lo < 0.4


def test_bad_predictions_name_row_and_column():
    df = binary_df([0, 1], [0.2, 0.7])
    df.loc[1, "prob_yes"] = 1.7
    with pytest.raises(PredictionsError, match=r"x\.csv: row 2: column 'prob_yes'"):
        validate_predictions(df, BINARY, source="x.csv")
    df = binary_df([0, 3], [0.2, 0.7])
    with pytest.raises(PredictionsError, match="row 2: column 'label'"):
        validate_predictions(df, BINARY, source="x.csv")
    with pytest.raises(PredictionsError, match="missing column"):
        validate_predictions(df.drop(columns="prob_no"), BINARY)
