"""Patient-level bootstrap confidence intervals.

Images of one patient (both eyes, repeated visits) are correlated, so the resampling
unit is the patient: a resample draws patients with replacement and keeps *all* their
images together. Resamples in which a metric is undefined (e.g. only one class drawn)
are counted and excluded from that metric's interval; the count is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import sklearn

from fundusfm.evaluate.io import patient_groups, to_arrays
from fundusfm.task import TaskSpec
from fundusfm.evaluate.metrics import metrics_from_arrays


def resample_indices(groups: np.ndarray, n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Yield ``n_boot`` row-index arrays, each a resample of whole patients.

    ``groups``: patient key per row. Each resample draws as many patients as there are,
    with replacement; a patient drawn m times contributes each of its rows m times.
    Deterministic for a given ``seed``.
    """
    codes, uniques = pd.factorize(np.asarray(groups), sort=True)
    n_pat = len(uniques)
    if n_pat == 0:
        raise ValueError("cannot bootstrap an empty prediction set")
    rng = np.random.default_rng(seed)
    rows = np.arange(len(codes))
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, n_pat, size=n_pat), minlength=n_pat)
        yield np.repeat(rows, counts[codes])


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite ``values``."""
    a = (1 - level) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_arrays(
    y: np.ndarray,
    P: np.ndarray,
    groups: np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float | None]],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    names: list[str] | None = None,
) -> dict:
    """Bootstrap any ``metric_fn(y, P) -> {name: value or None}`` over patients.

    Returns ``{"ci": {name: [lo, hi] | None}, "n_boot": n_boot, "n_valid": {name: k},
    "n_undefined": {name: n_boot - k}, "level": level}``; ``ci`` is ``None`` when
    no resample gave a value. ``names`` restricts / orders the reported metrics.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    draws: dict[str, list[float]] = {}
    seen: list[str] = list(names or [])
    # the arrays were validated when the point estimates were computed: sklearn's
    # per-call parameter checks would otherwise cost more than the metrics themselves
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        for idx in resample_indices(groups, n_boot, seed):
            vals = metric_fn(y[idx], P[idx])
            for k, v in vals.items():
                if names is not None and k not in names:
                    continue
                if k not in draws:
                    draws[k] = []
                    if k not in seen:
                        seen.append(k)
                if v is not None and np.isfinite(v):
                    draws[k].append(float(v))
    ci, n_valid = {}, {}
    for k in seen:
        vals = np.asarray(draws.get(k, []), dtype=float)
        n_valid[k] = int(len(vals))
        ci[k] = list(percentile_ci(vals, level)) if len(vals) else None
    return {
        "ci": ci,
        "n_boot": int(n_boot),
        "n_valid": n_valid,
        "n_undefined": {k: int(n_boot - v) for k, v in n_valid.items()},
        "level": level,
    }


def patient_bootstrap(
    pred_df: pd.DataFrame,
    task: dict | TaskSpec,
    n_boot: int = 1000,
    seed: int = 0,
    thresholds: dict[str, float | str] | None = None,
    level: float = 0.95,
) -> dict:
    """Patient-level bootstrap CIs of every metric of :func:`compute_metrics`.

    The validation-chosen ``thresholds`` are held fixed (they come from other data).
    Returns the dict of :func:`bootstrap_arrays`.
    """
    spec = TaskSpec.from_dict(task)
    y, P = to_arrays(pred_df, spec)
    groups = patient_groups(pred_df)

    def fn(yy, PP):
        return metrics_from_arrays(yy, PP, spec, thresholds)["metrics"]

    return bootstrap_arrays(y, P, groups, fn, n_boot=n_boot, seed=seed, level=level)
