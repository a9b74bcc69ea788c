"""Paired comparison of two models (inits) on the same test images.

* DeLong's test for two correlated AUROCs (binary; fast algorithm of Sun & Xu 2014) —
  treats images as independent.
* Paired patient-level bootstrap of the difference in any metric — respects patients,
  works for every task type, and pools several runs (folds x seeds) into one test of
  the mean difference, the quantity the study table reports.

No maintained Python package offers DeLong's test (scipy / sklearn do not), hence the
short implementation below; it is checked against the direct O(m n) definition in the
tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from fundusfm.evaluate.io import align_predictions, patient_groups, to_arrays
from fundusfm.task import TaskSpec
from fundusfm.evaluate.metrics import Undefined, metrics_from_arrays


def delong_test(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict:
    """DeLong's test of AUROC(a) == AUROC(b) on the same cases.

    Returns ``{"auroc_a", "auroc_b", "diff", "se", "z", "p_value"}`` (two-sided p).
    Raises :class:`~fundusfm.evaluate.metrics.Undefined` when ``y`` has one class only.
    """
    y = np.asarray(y).astype(int)
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m == 0 or n == 0:
        raise Undefined(f"DeLong needs both classes (positives={m}, negatives={n})")
    S = np.vstack([np.asarray(score_a, float), np.asarray(score_b, float)])
    X, Y = S[:, pos], S[:, neg]
    tx = np.apply_along_axis(stats.rankdata, 1, X)
    ty = np.apply_along_axis(stats.rankdata, 1, Y)
    tz = np.apply_along_axis(stats.rankdata, 1, np.hstack([X, Y]))
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz[:, :m] - tx) / n  # placement values of positives
    v10 = 1.0 - (tz[:, m:] - ty) / m  # placement values of negatives
    sx = np.cov(v01) if m > 1 else np.zeros((2, 2))
    sy = np.cov(v10) if n > 1 else np.zeros((2, 2))
    cov = sx / m + sy / n
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        # identical rankings (or perfect separation by both): no evidence of a difference
        se, z, p = 0.0, 0.0, 1.0 if abs(diff) < 1e-12 else None
    else:
        se = var ** 0.5
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    return {"auroc_a": float(aucs[0]), "auroc_b": float(aucs[1]), "diff": diff, "se": se, "z": z, "p_value": p}


def _two_sided_p(d: np.ndarray) -> float:
    # share of resampled differences on the other side of zero, doubled, with the +1
    # correction so that p is never exactly 0 from a finite number of resamples
    b = len(d)
    le = (np.sum(d <= 0) + 1) / (b + 1)
    ge = (np.sum(d >= 0) + 1) / (b + 1)
    return float(min(1.0, 2 * min(le, ge)))



def patient_draws(patients_per_run: Sequence, n_boot: int, rng: np.random.Generator) -> tuple[list, np.ndarray]:
    """Patient-level bootstrap draws shared by several runs on the same patients.

    Returns each run's images as codes into one patient index, and ``counts[b, p]``: how
    often patient ``p`` is drawn in resample ``b`` (all its images go along). The same
    draws serve every run, so runs are compared on the same resampled patients.
    """
    keys = np.concatenate([np.asarray(p) for p in patients_per_run])
    codes_all, uniques = pd.factorize(keys, sort=True)
    bounds = np.cumsum([0] + [len(p) for p in patients_per_run])
    codes = [codes_all[bounds[i]:bounds[i + 1]] for i in range(len(patients_per_run))]
    n_pat = len(uniques)
    counts = np.stack([np.bincount(rng.integers(0, n_pat, size=n_pat), minlength=n_pat) for _ in range(n_boot)])
    return codes, counts

def paired_bootstrap_runs(
    runs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    metric_fn: Callable[[np.ndarray, np.ndarray], float | None],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Paired patient bootstrap of the mean (over runs) difference metric(a) - metric(b).

    ``runs``: ``(y, P_a, P_b, groups)`` per run (e.g. per fold and seed), rows aligned.
    Patients are resampled jointly across runs (an external-set patient seen by several
    fold models is drawn the same number of times in each). Resamples where no run has
    both metrics defined are excluded and counted. A ``metric_fn`` carrying a
    ``resampled(y, P, counts)`` attribute (:func:`metric_getter`'s AUROC) is computed for
    all resamples at once, with the same draws and the same result as the loop.
    Returns ``{"diff", "ci", "p_value", "n_boot", "n_valid", "n_runs"}``; ``diff`` /
    ``p_value`` are ``None`` (with ``"reason"``) when undefined.
    """
    if not runs:
        raise ValueError("paired bootstrap needs at least one run")

    def mean_diff(sel: list[np.ndarray | None]) -> float | None:
        ds = []
        for (y, pa, pb, _), idx in zip(runs, sel):
            ii = slice(None) if idx is None else idx
            a, b = metric_fn(y[ii], pa[ii]), metric_fn(y[ii], pb[ii])
            if a is not None and b is not None and np.isfinite(a) and np.isfinite(b):
                ds.append(a - b)
        return float(np.mean(ds)) if ds else None

    observed = mean_diff([None] * len(runs))
    out = {"n_boot": int(n_boot), "n_runs": len(runs)}
    if observed is None:
        return {**out, "diff": None, "ci": None, "p_value": None, "n_valid": 0,
                "reason": "metric undefined in every run"}
    rng = np.random.default_rng(seed)
    codes, counts = patient_draws([r[3] for r in runs], n_boot, rng)
    resampled = getattr(metric_fn, "resampled", None)
    if resampled is not None:
        # every resample at once: D[r, b] = metric(a) - metric(b) of run r in resample b
        D = np.vstack([resampled(y, pa, counts[:, c]) - resampled(y, pb, counts[:, c])
                       for (y, pa, pb, _), c in zip(runs, codes)])
        defined = ~np.isnan(D).all(axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            draws = list(np.nanmean(D[:, defined], axis=0))
    else:
        draws = []
        for b in range(n_boot):
            sel = [np.repeat(np.arange(len(c)), counts[b][c]) for c in codes]
            d = mean_diff(sel)
            if d is not None:
                draws.append(d)
    d = np.asarray(draws)
    if len(d) == 0:
        return {**out, "diff": observed, "ci": None, "p_value": None, "n_valid": 0,
                "reason": "metric undefined in every resample"}
    a = (1 - level) / 2
    lo, hi = np.quantile(d, [a, 1 - a])
    return {**out, "diff": observed, "ci": [float(lo), float(hi)], "p_value": _two_sided_p(d),
            "n_valid": int(len(d))}


def metric_getter(spec: TaskSpec, metric: str = "auroc") -> Callable[[np.ndarray, np.ndarray], float | None]:
    """``fn(y, P) -> value`` of one metric of :func:`metrics_from_arrays` (None if undefined)."""
    from fundusfm.evaluate.metrics import binary_auroc, resampled_auroc

    if metric == "auroc":
        # the hot path of every comparison: only AUROC, not every metric of the task.
        # Same definition as metrics_from_arrays: binary AUROC, else the unweighted mean
        # of per-class (one-vs-rest) or per-label AUROCs, undefined if any is undefined.
        def truth_columns(y, P):
            # one 0/1 column per class (one-vs-rest) or per label
            return np.eye(P.shape[1], dtype=int)[y] if spec.type in ("multiclass", "ordinal") else y

        def fast(y, P):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if spec.type == "binary":
                        return float(binary_auroc(y, P[:, 1]))
                    cols = truth_columns(y, P)
                    return float(np.mean([binary_auroc(cols[:, c], P[:, c]) for c in range(P.shape[1])]))
            except (Undefined, ValueError):
                return None

        def resampled(y, P, W):
            # fast() in every resample (rows of the count matrix W) at once; NaN = None
            if spec.type == "binary":
                return resampled_auroc(y, P[:, 1], W)
            cols = truth_columns(y, P)
            return np.mean([resampled_auroc(cols[:, c], P[:, c], W) for c in range(P.shape[1])], axis=0)

        fast.resampled = resampled
        return fast

    def fn(y, P):
        return metrics_from_arrays(y, P, spec)["metrics"].get(metric)

    return fn


def paired_auroc_test(
    pred_a: pd.DataFrame,
    pred_b: pd.DataFrame,
    task: dict | TaskSpec,
    method: str = "both",
    n_boot: int = 1000,
    seed: int = 0,
    metric: str = "auroc",
) -> dict:
    """Compare two models' predictions on the same images (a minus b).

    ``method``: ``delong`` (binary tasks only), ``bootstrap`` (paired patient bootstrap of
    ``metric``, any task) or ``both``. Returns ``{"delong": {...} | None, "bootstrap":
    {...} | None, "n_images", "n_patients"}``; an inapplicable test is ``None`` with its
    reason under ``"undefined"``.
    """
    if method not in ("delong", "bootstrap", "both"):
        raise ValueError(f"method must be delong, bootstrap or both, got {method!r}")
    spec = TaskSpec.from_dict(task)
    a, b = align_predictions(pred_a, pred_b, spec)
    y, pa = to_arrays(a, spec)
    _, pb = to_arrays(b, spec)
    groups = patient_groups(a)
    out: dict = {"delong": None, "bootstrap": None, "undefined": {},
                 "n_images": int(len(a)), "n_patients": int(len(set(groups)))}
    if method in ("delong", "both"):
        if spec.type != "binary" or metric != "auroc":
            out["undefined"]["delong"] = "DeLong's test applies to the AUROC of binary tasks only"
        else:
            try:
                out["delong"] = delong_test(y, pa[:, 1], pb[:, 1])
            except Undefined as e:
                out["undefined"]["delong"] = str(e)
    if method in ("bootstrap", "both"):
        res = paired_bootstrap_runs([(y, pa, pb, groups)], metric_getter(spec, metric), n_boot, seed)
        out["bootstrap"] = res
        if res.get("p_value") is None:
            out["undefined"]["bootstrap"] = res.get("reason", "undefined")
    return out
