"""Classification metrics computed from predictions only.

Every metric is either a finite number or undefined (``None``) with a reason — never a
silent NaN and never an exception for degenerate data (one class only, constant scores,
an empty class). scikit-learn computes every metric it has; ECE (absent from sklearn)
and the Youden threshold are small functions here.

Metric names (flat keys, per-class ones suffixed ``:<class>``):

* all tasks: ``auroc`` (binary AUROC; macro one-vs-rest for multiclass/ordinal; macro
  over labels for multilabel), ``aupr`` (average precision, same averaging),
  ``accuracy``, ``balanced_accuracy``, ``f1_macro``, ``sensitivity``, ``specificity``
  (at 0.5 for binary/multilabel, from the arg-max for multiclass; macro over classes /
  labels where there are several), ``ece``, ``brier``;
* per class / label: ``auroc:<c>``, ``aupr:<c>``, ``sensitivity:<c>``, ``specificity:<c>``;
* multilabel: ``auroc_micro``, ``aupr_micro``; ``accuracy`` is the subset accuracy;
* ordinal: ``kappa_quadratic`` (quadratic weighted Cohen's kappa);
* with a validation-chosen threshold (binary, multilabel): ``threshold_val``,
  ``sensitivity_val_threshold``, ``specificity_val_threshold`` (per label ``...:<l>``).

Classes absent from a set (:data:`ABSENT_CLASS_POLICY`): a macro average over classes
or labels is undefined when one of them cannot be scored on that set (e.g. a label
with no positive case in a test fold); it is never quietly averaged over the classes
that happen to be present. The training monitor applies the same rule (and then falls
back to the validation loss), and the study table counts the runs left out this way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from fundusfm.evaluate.io import to_arrays
from fundusfm.task import TaskSpec

ECE_BINS = 10
# metrics shown first in tables / figures, per task type (all others stay in CSV/JSON)
HEADLINE = {
    "binary": ["auroc", "aupr", "accuracy", "balanced_accuracy", "f1_macro", "sensitivity", "specificity",
               "sensitivity_val_threshold", "specificity_val_threshold", "ece", "brier"],
    "multiclass": ["auroc", "aupr", "accuracy", "balanced_accuracy", "f1_macro", "ece", "brier"],
    "ordinal": ["auroc", "kappa_quadratic", "accuracy", "balanced_accuracy", "f1_macro", "ece", "brier"],
    "multilabel": ["auroc", "auroc_micro", "aupr", "aupr_micro", "f1_macro", "sensitivity", "specificity",
                   "ece", "brier"],
}


ABSENT_CLASS_POLICY = (
    "a macro metric is undefined on a set where a class (or label) cannot be scored, e.g. has no "
    "positive case; such runs are left out of that metric's aggregate and counted as undefined; "
    "the training monitor uses the same rule and then selects epochs on the validation loss"
)


class Undefined(Exception):
    """Raised inside a metric function when the metric does not exist for these data."""


class MetricSet:
    """Collects metric values; failures become ``None`` + reason instead of exceptions."""

    def __init__(self) -> None:
        self.values: dict[str, float | None] = {}
        self.undefined: dict[str, str] = {}

    def add(self, name: str, fn: Callable[[], float]) -> float | None:
        with warnings.catch_warnings():
            # sklearn warns (and returns nan/0) on degenerate input; we report those as
            # undefined with a reason instead, so the warning itself is noise here
            warnings.simplefilter("ignore")
            try:
                with np.errstate(all="ignore"):
                    v = float(fn())
            except Undefined as e:
                return self.set_undefined(name, str(e))
            except ValueError as e:
                return self.set_undefined(name, f"{type(e).__name__}: {e}")
        if not np.isfinite(v):
            return self.set_undefined(name, "not a finite number for these data")
        self.values[name] = v
        return v

    def set_undefined(self, name: str, reason: str) -> None:
        self.values[name] = None
        self.undefined[name] = reason
        return None

    def as_dict(self) -> dict:
        return {"metrics": dict(self.values), "undefined": dict(self.undefined)}


# --- small building blocks -------------------------------------------------------------

def _need_both_classes(y: np.ndarray, what: str = "y_true") -> None:
    n_pos = int(np.sum(y == 1))
    if n_pos == 0 or n_pos == len(y):
        only = "positive" if n_pos else "negative"
        raise Undefined(f"only {only} cases in {what} (n={len(y)})")


def binary_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC (sklearn) of 0/1 truth ``y`` vs score ``s``; :class:`Undefined` if one class only."""
    _need_both_classes(y)
    return skm.roc_auc_score(y, s)


def resampled_auroc(y: np.ndarray, s: np.ndarray, weights: np.ndarray, chunk_elems: int = 2**22) -> np.ndarray:
    """AUROC of 0/1 truth ``y`` vs score ``s`` in many bootstrap resamples at once.

    ``weights``: ``(B, n)`` non-negative counts, row ``b`` = how often each case is drawn
    in resample ``b``. Value ``b`` equals :func:`binary_auroc` (sklearn) on the data with
    case ``i`` repeated ``weights[b, i]`` times: the Mann-Whitney probability that a
    positive outscores a negative, ties counted 1/2 -- the area under the ROC step curve.
    NaN where a resample holds no positive or no negative case. Scores are sorted once;
    each resample costs a few vector operations instead of one sklearn call (the hot loop
    of paired comparisons: resamples x runs x labels x 2 models).
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=float)
    W = np.atleast_2d(np.asarray(weights, dtype=float))
    if W.shape[1] != len(y) or len(s) != len(y):
        raise ValueError(f"weights {W.shape}, y {len(y)} and s {len(s)} disagree")
    order = np.argsort(s, kind="stable")
    ss, yy = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])  # one group per distinct score
    out = np.empty(len(W))
    step = max(1, chunk_elems // max(1, len(y)))
    for a in range(0, len(W), step):
        Ws = W[a : a + step][:, order]
        pos = np.add.reduceat(Ws * yy, starts, axis=1)
        neg = np.add.reduceat(Ws * ~yy, starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each score
        n_pos, n_neg = pos.sum(1), neg.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (pos * (below + 0.5 * neg)).sum(1) / (n_pos * n_neg)
        auc[(n_pos == 0) | (n_neg == 0)] = np.nan
        out[a : a + step] = auc
    return out


def binary_aupr(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision (sklearn); undefined without positive cases."""
    if not np.any(y == 1):
        raise Undefined(f"no positive cases (n={len(y)})")
    return skm.average_precision_score(y, s)


def sensitivity(y: np.ndarray, yhat: np.ndarray) -> float:
    """True-positive rate of 0/1 predictions; undefined without positive cases."""
    pos = y == 1
    if not pos.any():
        raise Undefined(f"no positive cases (n={len(y)})")
    return float(np.mean(yhat[pos] == 1))


def specificity(y: np.ndarray, yhat: np.ndarray) -> float:
    """True-negative rate of 0/1 predictions; undefined without negative cases."""
    neg = y == 0
    if not neg.any():
        raise Undefined(f"no negative cases (n={len(y)})")
    return float(np.mean(yhat[neg] == 0))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Equal-width-bin ECE: sum over bins of (bin share) * |observed rate - mean prediction|.

    ``y`` is 0/1 (event happened), ``p`` its predicted probability. For a binary task this
    is the reliability of P(positive); for multiclass it is applied to the top-label
    confidence (y = arg-max correct), the usual definition of Guo et al. (2017).
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if len(y) == 0:
        raise Undefined("no cases")
    # bin i holds (i/n, (i+1)/n]; p == 0 goes to the first bin
    idx = np.clip(np.ceil(p * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    mean_p = np.bincount(idx, weights=p, minlength=n_bins)
    mean_y = np.bincount(idx, weights=y, minlength=n_bins)
    used = count > 0
    gap = np.abs(mean_y[used] - mean_p[used]) / count[used]
    return float(np.sum(gap * count[used]) / len(y))


def youden_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """Threshold t maximising Youden's J = sensitivity + specificity - 1 (predict s >= t).

    Undefined when ``y`` has one class, or when no threshold separates the classes at all
    (J <= 0, e.g. constant scores). Ties: the highest such threshold (fewest positives).
    """
    y = np.asarray(y)
    _need_both_classes(y, "validation set")
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    finite = np.isfinite(thr)
    j = np.where(finite, j, -np.inf)
    best = int(np.argmax(j))
    if not j[best] > 0:
        raise Undefined("no threshold separates the validation classes (Youden's J <= 0; constant scores?)")
    return float(thr[best])


# --- the metric sets ---------------------------------------------------------------------

def _binary(ms: MetricSet, y, s, thr_val, suffix: str = "") -> None:
    yhat = (s >= 0.5).astype(int)
    ms.add(f"auroc{suffix}", lambda: binary_auroc(y, s))
    ms.add(f"aupr{suffix}", lambda: binary_aupr(y, s))
    ms.add(f"sensitivity{suffix}", lambda: sensitivity(y, yhat))
    ms.add(f"specificity{suffix}", lambda: specificity(y, yhat))
    if thr_val is not None:
        t = thr_val
        if isinstance(t, str):  # a reason: no threshold could be chosen
            for m in ("threshold_val", "sensitivity_val_threshold", "specificity_val_threshold"):
                ms.set_undefined(f"{m}{suffix}", t)
        else:
            yhat_t = (s >= t).astype(int)
            ms.add(f"threshold_val{suffix}", lambda: t)
            ms.add(f"sensitivity_val_threshold{suffix}", lambda: sensitivity(y, yhat_t))
            ms.add(f"specificity_val_threshold{suffix}", lambda: specificity(y, yhat_t))


def _balanced_accuracy(y, yhat, k: int) -> float:
    absent = [c for c in range(k) if not np.any(y == c)]
    if absent:
        # sklearn would silently average over the classes present; that is a different metric
        raise Undefined(f"class(es) {absent} absent from y_true (n={len(y)})")
    return skm.balanced_accuracy_score(y, yhat)


def _f1_macro(y, yhat, k: int) -> float:
    absent = [c for c in range(k) if not np.any(y == c) and not np.any(yhat == c)]
    if absent:
        raise Undefined(f"class(es) {absent} neither true nor predicted; F1 undefined for them")
    return skm.f1_score(y, yhat, labels=list(range(k)), average="macro", zero_division=0)


def metrics_from_arrays(
    y: np.ndarray,
    P: np.ndarray,
    spec: TaskSpec,
    thresholds: dict[str, float | str] | None = None,
    ece_bins: int = ECE_BINS,
) -> dict:
    """All metrics of one prediction set given as arrays (see module docstring for names).

    ``thresholds``: validation-chosen thresholds, ``{name: t}`` (binary: key = positive
    class name; multilabel: one per label); a string value is the reason none could be
    chosen. ``None``: no validation predictions, threshold metrics are not reported.
    Returns ``{"metrics": {name: float | None}, "undefined": {name: reason}}``.
    """
    ms = MetricSet()
    y = np.asarray(y)
    P = np.asarray(P, dtype=float)
    names = spec.names
    if spec.type == "binary":
        s = P[:, 1]
        t = None if thresholds is None else thresholds.get(names[1], "no threshold for the positive class")
        _binary(ms, y, s, t)
        yhat = (s >= 0.5).astype(int)
        ms.add("accuracy", lambda: skm.accuracy_score(y, yhat))
        ms.add("balanced_accuracy", lambda: _balanced_accuracy(y, yhat, 2))
        ms.add("f1_macro", lambda: _f1_macro(y, yhat, 2))
        ms.add("ece", lambda: expected_calibration_error(y, s, ece_bins))
        ms.add("brier", lambda: skm.brier_score_loss(y, s, pos_label=1))
    elif spec.type in ("multiclass", "ordinal"):
        k = len(names)
        onehot = np.eye(k, dtype=int)[y]
        yhat = P.argmax(axis=1)
        for c, n in enumerate(names):
            ms.add(f"auroc:{n}", lambda c=c: binary_auroc(onehot[:, c], P[:, c]))
            ms.add(f"aupr:{n}", lambda c=c: binary_aupr(onehot[:, c], P[:, c]))
            ms.add(f"sensitivity:{n}", lambda c=c: sensitivity(onehot[:, c], (yhat == c).astype(int)))
            ms.add(f"specificity:{n}", lambda c=c: specificity(onehot[:, c], (yhat == c).astype(int)))

        def macro_auroc() -> float:
            absent = [n for c, n in enumerate(names) if ms.values.get(f"auroc:{n}") is None]
            if absent:
                raise Undefined(f"one-vs-rest AUROC undefined for class(es) {absent}")
            return skm.roc_auc_score(y, P, multi_class="ovr", average="macro", labels=list(range(k)))

        ms.add("auroc", macro_auroc)
        ms.add("aupr", lambda: _macro_of(ms, "aupr", names))
        ms.add("sensitivity", lambda: _macro_of(ms, "sensitivity", names))
        ms.add("specificity", lambda: _macro_of(ms, "specificity", names))
        ms.add("accuracy", lambda: skm.accuracy_score(y, yhat))
        ms.add("balanced_accuracy", lambda: _balanced_accuracy(y, yhat, k))
        ms.add("f1_macro", lambda: _f1_macro(y, yhat, k))
        if spec.type == "ordinal":
            def kappa() -> float:
                if len(np.unique(np.concatenate([y, yhat]))) < 2:
                    raise Undefined("truth and prediction are the same single class; kappa is 0/0")
                return skm.cohen_kappa_score(y, yhat, weights="quadratic", labels=list(range(k)))

            ms.add("kappa_quadratic", kappa)
        conf = P.max(axis=1)
        ms.add("ece", lambda: expected_calibration_error((yhat == y).astype(int), conf, ece_bins))
        ms.add("brier", lambda: skm.brier_score_loss(y, P, labels=list(range(k))))
    elif spec.type == "multilabel":
        yhat = (P >= 0.5).astype(int)
        for j, n in enumerate(names):
            t = None if thresholds is None else thresholds.get(n, f"no threshold for label {n!r}")
            _binary(ms, y[:, j], P[:, j], t, suffix=f":{n}")
            ms.add(f"ece:{n}", lambda j=j: expected_calibration_error(y[:, j], P[:, j], ece_bins))
            ms.add(f"brier:{n}", lambda j=j: skm.brier_score_loss(y[:, j], P[:, j], pos_label=1))
        for m in ("auroc", "aupr", "sensitivity", "specificity", "ece", "brier"):
            ms.add(m, lambda m=m: _macro_of(ms, m, names))
        if thresholds is not None:
            for m in ("sensitivity_val_threshold", "specificity_val_threshold"):
                ms.add(m, lambda m=m: _macro_of(ms, m, names))

        def micro(fn) -> float:
            flat_y = y.ravel()
            _need_both_classes(flat_y, "pooled labels")
            return fn(flat_y, P.ravel())

        ms.add("auroc_micro", lambda: micro(skm.roc_auc_score))
        ms.add("aupr_micro", lambda: micro(skm.average_precision_score))
        ms.add("accuracy", lambda: skm.accuracy_score(y, yhat))  # subset accuracy

        def balanced() -> float:
            vals = [0.5 * (sensitivity(y[:, j], yhat[:, j]) + specificity(y[:, j], yhat[:, j]))
                    for j in range(len(names))]
            return float(np.mean(vals))

        ms.add("balanced_accuracy", balanced)

        def f1() -> float:
            empty = [n for j, n in enumerate(names) if not (y[:, j].any() or yhat[:, j].any())]
            if empty:
                raise Undefined(f"label(s) {empty} neither true nor predicted; F1 undefined for them")
            return skm.f1_score(y, yhat, average="macro", zero_division=0)

        ms.add("f1_macro", f1)
    else:  # pragma: no cover - task_spec already rejects this
        raise ValueError(f"unknown task type {spec.type!r}")
    return ms.as_dict()


def _macro_of(ms: MetricSet, metric: str, names) -> float:
    vals = [ms.values.get(f"{metric}:{n}") for n in names]
    bad = [n for n, v in zip(names, vals) if v is None]
    if bad:
        raise Undefined(f"{metric} undefined for {bad}")
    return float(np.mean(vals))


def choose_thresholds(y: np.ndarray, P: np.ndarray, spec: TaskSpec) -> dict[str, float | str]:
    """Validation-chosen (Youden) thresholds: ``{positive class or label: t}``; where none
    can be chosen the value is the reason (a string). Empty for multiclass/ordinal tasks,
    whose decision is the arg-max."""
    out: dict[str, float | str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.type == "binary":
            cols = [(spec.names[1], y, P[:, 1])]
        elif spec.type == "multilabel":
            cols = [(n, y[:, j], P[:, j]) for j, n in enumerate(spec.names)]
        else:
            return out
        for name, yy, ss in cols:
            try:
                out[name] = youden_threshold(yy, ss)
            except Undefined as e:
                out[name] = f"no validation-chosen threshold: {e}"
    return out


def compute_metrics(pred_df: pd.DataFrame, task: dict | TaskSpec,
                    val_df: pd.DataFrame | None = None) -> dict:
    """Metrics of one predictions table (columns per the predictions CSV contract).

    ``val_df``: validation predictions of the same model; when given, binary / multilabel
    tasks also get sensitivity and specificity at the Youden threshold chosen on it.
    Returns ``{"metrics": {...}, "undefined": {...}, "thresholds": {...}}``.
    """
    spec = TaskSpec.from_dict(task)
    y, P = to_arrays(pred_df, spec)
    thresholds = None
    if val_df is not None:
        thresholds = choose_thresholds(*to_arrays(val_df, spec), spec)
    out = metrics_from_arrays(y, P, spec, thresholds)
    out["thresholds"] = thresholds or {}
    return out


def headline_metrics(kind: str) -> list[str]:
    """The metrics a study table shows for a task type (the others stay in CSV/JSON)."""
    return list(HEADLINE[kind])
