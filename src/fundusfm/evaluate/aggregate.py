"""Aggregation of per-run metrics over folds and seeds.

Per (set, init, adaptation, fraction) and metric: mean, sample standard deviation (ddof=1), number
of runs, the runs' range, and -- with at least :data:`MIN_RUNS_FOR_INTERVAL` runs -- the
across-run 95% interval mean +/- t(0.975, n-1) * sd / sqrt(n) (Student's t with n - 1
degrees of freedom; the normal 1.96 covers about 70% at n = 2). With fewer runs there
is no across-run interval: the table shows the runs' range and says so. No bound lies
outside the metric's range (:func:`metric_range`). Runs whose metric is undefined are
excluded from that metric and counted (``n_undefined``). With a single run, the run's
own patient-bootstrap interval is carried (``boot_lo`` / ``boot_hi``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from fundusfm.evaluate.io import DEFAULT_ADAPTATION, adaptation_of
from fundusfm.layout import ADAPTATIONS

LEVEL = 0.95
MIN_RUNS_FOR_INTERVAL = 3
# one arm of the study at one label fraction on one evaluated set (a row of the table)
GROUP_KEYS = ("set", "init", "adaptation", "fraction")
# what identifies one run on one set: two metrics JSONs with the same key are an error
RUN_KEYS = ("task", "set", "init", "adaptation", "fraction", "fold", "seed")
AGG_COLUMNS = ["n", "n_undefined", "mean", "sd", "half_width", "ci_lo", "ci_hi", "range_lo", "range_hi",
               "boot_lo", "boot_hi"]
# metrics whose values are not in [0, 1] (the multiclass Brier score sums over classes)
METRIC_RANGES = {"kappa_quadratic": (-1.0, 1.0), "kappa": (-1.0, 1.0), "brier": (0.0, 2.0)}
# preferred display order of inits; others follow alphabetically
INIT_ORDER = ("random", "imagenet", "fundus", "imagenet+fundus")


def metric_range(metric: str) -> tuple[float, float]:
    """The values a metric can take (``auroc:dr`` has the range of ``auroc``)."""
    return METRIC_RANGES.get(metric.partition(":")[0], (0.0, 1.0))


def clip_to_range(lo: float, hi: float, metric: str | None) -> tuple[float, float]:
    """An interval cut to the metric's range (a printed bound never lies outside it)."""
    if metric is None:
        return lo, hi
    a, b = metric_range(metric)
    return float(min(max(lo, a), b)), float(min(max(hi, a), b))


def t_half_width(sd: float, n: int, level: float = LEVEL) -> float:
    """Half-width of Student's t interval of a mean of ``n`` values (n - 1 df)."""
    return float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))


def aggregate_values(values: Sequence[float | None], metric: str | None = None) -> dict:
    """Mean, sd (ddof=1), n, range and (n >= 3) Student's t interval of the defined values,
    the interval cut to ``metric``'s range."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(len(vals))
    out = {"n": n, "n_undefined": int(len(values) - n), "mean": None, "sd": None,
           "half_width": None, "ci_lo": None, "ci_hi": None, "range_lo": None, "range_hi": None}
    if n == 0:
        return out
    mean = float(vals.mean())
    out.update(mean=mean, range_lo=float(vals.min()), range_hi=float(vals.max()))
    if n >= 2:
        out["sd"] = float(vals.std(ddof=1))
    if n >= MIN_RUNS_FOR_INTERVAL:
        h = t_half_width(out["sd"], n)
        lo, hi = clip_to_range(mean - h, mean + h, metric)
        out.update(half_width=h, ci_lo=lo, ci_hi=hi)
    return out


def check_unique_runs(records: Iterable[dict]) -> None:
    """Raise if two metrics JSONs describe the same run (:data:`RUN_KEYS`; a record
    without ``adaptation`` is a fine-tune)."""
    seen: dict[tuple, str] = {}
    for r in records:
        key = tuple(adaptation_of(r) if k == "adaptation" else r.get(k) for k in RUN_KEYS)
        if key in seen:
            raise ValueError(f"two metrics files for the same run {key}: {seen[key]} and {r.get('_path', '?')}")
        seen[key] = r.get("_path", "?")


def aggregate_records(records: Sequence[dict], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table: one row per (set, init, adaptation, fraction, metric) with :data:`AGG_COLUMNS`.

    ``records``: metrics-JSON dicts of one task. ``metrics``: which to aggregate (default:
    every metric found, in first-seen order).
    """
    check_unique_runs(records)
    if metrics is None:
        metrics = []
        for r in records:
            metrics += [m for m in r["metrics"] if m not in metrics]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["set"], r["init"], adaptation_of(r), float(r["fraction"])), []).append(r)
    rows = []
    for (s, init, adapt, frac), recs in groups.items():
        for m in metrics:
            vals = [r["metrics"].get(m) for r in recs]
            agg = aggregate_values(vals, m)
            agg["boot_lo"] = agg["boot_hi"] = None
            if agg["n"] == 1:
                r1 = next(r for r in recs if r["metrics"].get(m) is not None)
                ci = (r1.get("ci") or {}).get(m)
                if ci:
                    agg["boot_lo"], agg["boot_hi"] = clip_to_range(*ci, m)
            rows.append({"set": s, "init": init, "adaptation": adapt, "fraction": frac, "metric": m, **agg})
    df = pd.DataFrame(rows, columns=[*GROUP_KEYS, "metric", *AGG_COLUMNS])
    return sort_runs(df)


def init_rank(init: str, order: Sequence[str] | None = None) -> tuple:
    order = list(order or INIT_ORDER)
    return (order.index(init), "") if init in order else (len(order), init)


def set_rank(name: str) -> tuple:
    # internal test first, then validation, then external sets alphabetically
    first = {"test": 0, "val": 1}
    return (first.get(name, 2), name)


def adaptation_rank(adaptation: str) -> tuple:
    # fine-tune first, then linear probe (the order of fundusfm.layout.ADAPTATIONS)
    return (ADAPTATIONS.index(adaptation), "") if adaptation in ADAPTATIONS else (len(ADAPTATIONS), adaptation)


def sort_runs(df: pd.DataFrame, init_order: Sequence[str] | None = None) -> pd.DataFrame:
    """Order rows: set (test, val, externals), init (display order), adaptation (fine-tune,
    then linear probe: one init's arms side by side), fraction ascending. A frame without
    an ``adaptation`` column (older tables) sorts as fine-tunes."""
    if df.empty:
        return df.reset_index(drop=True)
    adapt = df["adaptation"] if "adaptation" in df.columns else [DEFAULT_ADAPTATION] * len(df)
    keys = [(set_rank(s), init_rank(i, init_order), adaptation_rank(a), f)
            for s, i, a, f in zip(df["set"], df["init"], adapt, df["fraction"])]
    order = sorted(range(len(df)), key=keys.__getitem__)
    return df.iloc[order].reset_index(drop=True)
