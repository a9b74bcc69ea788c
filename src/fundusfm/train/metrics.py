"""The validation metric that selects the best epoch (full evaluation lives in fundusfm.evaluate).

Classes absent from the validation set follow the evaluation's policy
(:data:`fundusfm.evaluate.metrics.ABSENT_CLASS_POLICY`): a macro value over classes or
labels is undefined (NaN) when one of them cannot be scored, never an average over the
classes that happen to be present; the engine then selects epochs on the validation loss.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

from fundusfm.task import TaskSpec

HIGHER_IS_BETTER = {"auroc": True, "accuracy": True, "balanced_accuracy": True, "kappa": True, "f1": True, "loss": False}


def monitor_value(name: str, task: TaskSpec, y: np.ndarray, prob: np.ndarray, loss: float) -> float:
    """Value of metric ``name`` on predictions; NaN when undefined (e.g. one class only)."""
    if name == "loss":
        return float(loss)
    if len(y) == 0:
        return math.nan
    if task.multilabel:
        vals = []
        for j in range(y.shape[1]):
            known = ~np.isnan(y[:, j])
            yj, pj = y[known, j].astype(int), prob[known, j]
            if len(np.unique(yj)) < 2 and name in ("auroc", "kappa", "balanced_accuracy"):
                return math.nan  # one label cannot be scored: the macro value is undefined (module doc)
            vals.append(_single(name, yj, np.stack([1 - pj, pj], 1), binary=True, ordinal=False))
        return float(np.mean(vals)) if vals else math.nan
    return _single(name, y.astype(int), prob, binary=task.type == "binary", ordinal=task.type == "ordinal")


def _single(name: str, y: np.ndarray, prob: np.ndarray, binary: bool, ordinal: bool) -> float:
    pred = prob.argmax(1)
    present = np.unique(y)
    if name == "auroc":
        if len(present) < 2:
            return math.nan
        if binary or prob.shape[1] == 2:
            return float(skm.roc_auc_score(y, prob[:, 1]))
        if len(present) < prob.shape[1]:
            return math.nan  # a class absent from validation: macro one-vs-rest undefined (module doc)
        return float(skm.roc_auc_score(y, prob, multi_class="ovr", labels=list(range(prob.shape[1])),
                                       average="macro"))
    if name == "accuracy":
        return float(skm.accuracy_score(y, pred))
    if name == "balanced_accuracy":
        return float(skm.balanced_accuracy_score(y, pred)) if len(present) > 1 else math.nan
    if name == "kappa":
        if len(present) < 2:
            return math.nan
        return float(skm.cohen_kappa_score(y, pred, weights="quadratic" if ordinal else None))
    if name == "f1":
        return float(skm.f1_score(y, pred, average="binary" if binary else "macro", zero_division=0))
    raise ValueError(f"unknown monitor metric {name!r}")


def effective_monitor(wanted: str, task: TaskSpec, y_val: np.ndarray | None) -> tuple[str, str]:
    """The metric that selects epochs (fine-tuning) or C (the linear probe) and its note:
    ``wanted``, or the validation loss when ``wanted`` is undefined on this validation set
    whatever the model predicts (one class only, a class absent: the policy of
    fundusfm.evaluate.metrics). Decided from the validation labels alone (random
    probabilities stand in for predictions), so a resumed run decides the same. Without
    validation labels ``wanted`` is returned as is (the caller falls back to training)."""
    if wanted == "loss" or y_val is None or not len(y_val):
        return wanted, wanted
    rng = np.random.default_rng(0)
    probe = rng.random((len(y_val), task.num_outputs))
    if not task.multilabel:
        probe = probe / probe.sum(1, keepdims=True)
    if math.isnan(monitor_value(wanted, task, y_val, probe, 0.0)):
        return "loss", f"loss (val_{wanted} undefined on this validation set)"
    return wanted, wanted


def is_better(name: str, new: float, best: float | None) -> bool:
    """Whether ``new`` improves on ``best`` (NaN never improves; first finite value does)."""
    if math.isnan(new):
        return False
    if best is None or math.isnan(best):
        return True
    return new > best if HIGHER_IS_BETTER[name] else new < best
