"""Aggregation of per-run metrics over folds and seeds.

Per (set, init, fraction) and metric: mean, sample standard deviation (ddof=1), number
of runs, and RETFound's interval mean +/- 1.96 * sd / sqrt(n). Runs whose metric is
undefined are excluded from that metric and counted (``n_undefined``). With a single
run, sd and the across-run interval do not exist; the run's own bootstrap interval is
carried instead (``boot_lo`` / ``boot_hi``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

Z95 = 1.96
GROUP_KEYS = ("set", "init", "fraction")
AGG_COLUMNS = ["n", "n_undefined", "mean", "sd", "half_width", "ci_lo", "ci_hi", "boot_lo", "boot_hi"]
# preferred display order of inits; others follow alphabetically
INIT_ORDER = ("random", "imagenet", "fundus", "imagenet+fundus")


def aggregate_values(values: Sequence[float | None]) -> dict:
    """Mean, sd (ddof=1), n and the 1.96 * sd / sqrt(n) interval of the defined values."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(len(vals))
    out = {"n": n, "n_undefined": int(len(values) - n), "mean": None, "sd": None,
           "half_width": None, "ci_lo": None, "ci_hi": None}
    if n == 0:
        return out
    mean = float(vals.mean())
    out["mean"] = mean
    if n >= 2:
        sd = float(vals.std(ddof=1))
        h = Z95 * sd / math.sqrt(n)
        out.update(sd=sd, half_width=h, ci_lo=mean - h, ci_hi=mean + h)
    return out


def check_unique_runs(records: Iterable[dict]) -> None:
    """Raise if two metrics JSONs describe the same run (task, set, init, fraction, fold, seed)."""
    seen: dict[tuple, str] = {}
    for r in records:
        key = tuple(r.get(k) for k in ("task", "set", "init", "fraction", "fold", "seed"))
        if key in seen:
            raise ValueError(f"two metrics files for the same run {key}: {seen[key]} and {r.get('_path', '?')}")
        seen[key] = r.get("_path", "?")


def aggregate_records(records: Sequence[dict], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table: one row per (set, init, fraction, metric) with :data:`AGG_COLUMNS`.

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
        groups.setdefault((r["set"], r["init"], float(r["fraction"])), []).append(r)
    rows = []
    for (s, init, frac), recs in groups.items():
        for m in metrics:
            vals = [r["metrics"].get(m) for r in recs]
            agg = aggregate_values(vals)
            agg["boot_lo"] = agg["boot_hi"] = None
            if agg["n"] == 1:
                r1 = next(r for r in recs if r["metrics"].get(m) is not None)
                ci = (r1.get("ci") or {}).get(m)
                if ci:
                    agg["boot_lo"], agg["boot_hi"] = ci
            rows.append({"set": s, "init": init, "fraction": frac, "metric": m, **agg})
    df = pd.DataFrame(rows, columns=[*GROUP_KEYS, "metric", *AGG_COLUMNS])
    return sort_runs(df)


def init_rank(init: str, order: Sequence[str] | None = None) -> tuple:
    order = list(order or INIT_ORDER)
    return (order.index(init), "") if init in order else (len(order), init)


def set_rank(name: str) -> tuple:
    # internal test first, then validation, then external sets alphabetically
    first = {"test": 0, "val": 1}
    return (first.get(name, 2), name)


def sort_runs(df: pd.DataFrame, init_order: Sequence[str] | None = None) -> pd.DataFrame:
    """Order rows: set (test, val, externals), init (display order), fraction ascending."""
    if df.empty:
        return df.reset_index(drop=True)
    keys = [(set_rank(s), init_rank(i, init_order), f) for s, i, f in zip(df["set"], df["init"], df["fraction"])]
    order = sorted(range(len(df)), key=keys.__getitem__)
    return df.iloc[order].reset_index(drop=True)
