"""Study-level glue: the runs of one task (metrics JSONs) and their predictions files.

A metrics JSON records the path of the predictions it was computed from
(``"predictions"``, as given to ``fundusfm evaluate``), so tables and figures can go back
to the predictions for paired tests and curves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fundusfm.evaluate.aggregate import clip_to_range
from fundusfm.evaluate.compare import delong_test, metric_getter, paired_bootstrap_runs, patient_draws
from fundusfm.evaluate.io import (DEFAULT_ADAPTATION, adaptation_of, align_predictions, arm_label, patient_groups,
                                  read_metrics_json, to_arrays)
from fundusfm.evaluate.io import check_recorded_split
from fundusfm.evaluate.metrics import Undefined
from fundusfm.task import TaskSpec, read_predictions

log = logging.getLogger(__name__)


def load_records(paths: Sequence[str | Path], task: str | None = None) -> list[dict]:
    """Read metrics JSONs; with ``task``, refuse files of another task."""
    recs = [read_metrics_json(p) for p in paths]
    if task is not None:
        other = [r["_path"] for r in recs if r["task"] != task]
        if other:
            raise ValueError(f"metrics file(s) of another task than {task!r}: {other[:3]}")
    return recs


def predictions_path(rec: dict, root: str | Path | None = None) -> Path | None:
    """Where a run's predictions file is: ``root / rec['predictions']`` when ``root`` is
    given, else the recorded path itself (relative to the working directory)."""
    p = rec.get("predictions")
    if not p:
        return None
    p = Path(p)
    if root is not None and not p.is_absolute():
        p = Path(root) / p
    return p


def load_predictions(rec: dict, spec: TaskSpec, root=None) -> pd.DataFrame | None:
    p = predictions_path(rec, root)
    if p is None or not p.is_file():
        return None
    df = read_predictions(p, spec)
    check_recorded_split(df, rec, spec, p)  # still the images of its split (fundusfm.evaluate.io)
    return df


# columns of the paired comparisons (pooled over runs, and per matched pair of runs);
# ``reference`` names the reference arm as the table's column does (an init, or
# ``finetune`` for a linear probe against its own init's fine-tune)
POOLED_COLUMNS = ["set", "init", "adaptation", "fraction", "metric", "reference", "reference_init",
                  "reference_adaptation", "diff", "diff_lo", "diff_hi", "p_value", "n_runs"]
PER_RUN_COLUMNS = ["set", "init", "adaptation", "fraction", "fold", "seed", "reference", "reference_init",
                   "reference_adaptation", "metric", "diff", "delong_z", "delong_p", "skipped"]


def _run_key(rec: dict) -> tuple:
    # (set, fraction, fold, seed, init, adaptation): one run on one evaluated set
    return (rec["set"], float(rec["fraction"]), rec["fold"], rec["seed"], rec["init"], adaptation_of(rec))


def _paired_comparisons(records, spec: TaskSpec, reference_of, label: str, metric: str, n_boot: int, seed: int,
                        root) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every run whose ``reference_of(key)`` is a run key is compared with that run, on
    the same images; pooled per (set, init, adaptation, fraction). ``label``: the
    ``reference`` column's value."""
    by_key = {_run_key(r): r for r in records}
    fn = metric_getter(spec, metric)
    pooled_rows, run_rows = [], []
    groups: dict[tuple, tuple[tuple, list]] = {}
    for key, rec in sorted(by_key.items(), key=lambda kv: str(kv[0])):
        ref_key = reference_of(key)
        if ref_key is None:
            continue
        s, frac, fold, sd, init, adapt = key
        ref_init, ref_adapt = ref_key[4], ref_key[5]
        row = {"set": s, "init": init, "adaptation": adapt, "fraction": frac, "fold": fold, "seed": sd,
               "reference": label, "reference_init": ref_init, "reference_adaptation": ref_adapt, "metric": metric}
        runs = groups.setdefault((s, init, adapt, frac), ((ref_init, ref_adapt), []))[1]
        ref = by_key.get(ref_key)
        if ref is None:
            run_rows.append({**row, "skipped": f"no {arm_label(ref_init, ref_adapt)} run with the same "
                                               "set/fraction/fold/seed"})
            continue
        pa, pb = load_predictions(rec, spec, root), load_predictions(ref, spec, root)
        if pa is None or pb is None:
            missing = predictions_path(rec, root) if pa is None else predictions_path(ref, root)
            run_rows.append({**row, "skipped": f"predictions not found: {missing}"})
            log.warning("paired comparison %s vs %s skipped: predictions not found: %s", arm_label(init, adapt),
                        arm_label(ref_init, ref_adapt), missing)
            continue
        a, b = align_predictions(pa, pb, spec, names=(rec["_path"], ref["_path"]))
        y, P_a = to_arrays(a, spec)
        _, P_b = to_arrays(b, spec)
        runs.append((y, P_a, P_b, patient_groups(a)))
        if spec.type == "binary" and metric == "auroc":
            try:
                d = delong_test(y, P_a[:, 1], P_b[:, 1])
                row.update(diff=d["diff"], delong_z=d["z"], delong_p=d["p_value"])
            except Undefined as e:
                row.update(skipped=f"DeLong undefined: {e}")
        else:
            a_v, b_v = fn(y, P_a), fn(y, P_b)
            row.update(diff=None if a_v is None or b_v is None else a_v - b_v)
        run_rows.append(row)
    for (s, init, adapt, frac), ((ref_init, ref_adapt), runs) in groups.items():
        base = {"set": s, "init": init, "adaptation": adapt, "fraction": frac, "metric": metric, "reference": label,
                "reference_init": ref_init, "reference_adaptation": ref_adapt}
        if not runs:
            pooled_rows.append({**base, "diff": None, "diff_lo": None, "diff_hi": None, "p_value": None, "n_runs": 0})
            continue
        res = paired_bootstrap_runs(runs, fn, n_boot=n_boot, seed=seed)
        ci = res["ci"] or [None, None]
        pooled_rows.append({**base, "diff": res["diff"], "diff_lo": ci[0], "diff_hi": ci[1],
                            "p_value": res["p_value"], "n_runs": res["n_runs"]})
    return pd.DataFrame(pooled_rows, columns=POOLED_COLUMNS), pd.DataFrame(run_rows, columns=PER_RUN_COLUMNS)


def compare_inits(
    records: Sequence[dict],
    spec: TaskSpec,
    reference: str,
    metric: str = "auroc",
    n_boot: int = 1000,
    seed: int = 0,
    root=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired comparisons of every arm (init x adaptation) against the ``reference`` init
    *in the same adaptation*, on the same images.

    A run is matched with the reference's run of the same adaptation, set, fraction, fold
    and seed: a linear probe is compared with the reference's linear probe, a fine-tune
    with its fine-tune, never across. Returns ``(pooled, per_run)``: ``pooled`` has one row
    per (set, init, adaptation, fraction) with the paired patient bootstrap of the mean
    difference over matched runs (``diff, diff_lo, diff_hi, p_value, n_runs``);
    ``per_run`` lists each matched pair with DeLong's test (binary AUROC) and why a pair
    was skipped, if it was (columns :data:`POOLED_COLUMNS`, :data:`PER_RUN_COLUMNS`).
    """
    def reference_of(key):
        return None if key[4] == reference else (*key[:4], reference, key[5])

    return _paired_comparisons(records, spec, reference_of, reference, metric, n_boot, seed, root)


def compare_adaptations(
    records: Sequence[dict],
    spec: TaskSpec,
    metric: str = "auroc",
    n_boot: int = 1000,
    seed: int = 0,
    root=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired comparisons of each linear probe against the fine-tune *of the same init*
    (same set, fraction, fold and seed, the same images): what fine-tuning the whole
    network adds over a linear read-out of the frozen features. Same frames as
    :func:`compare_inits`, ``reference`` = ``finetune``."""
    def reference_of(key):
        return None if key[5] == DEFAULT_ADAPTATION else (*key[:5], DEFAULT_ADAPTATION)

    return _paired_comparisons(records, spec, reference_of, DEFAULT_ADAPTATION, metric, n_boot, seed, root)


def runs_and_patients_interval(
    runs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    metric_fn,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Two-level bootstrap of the across-run mean of a metric: the headline interval.

    ``runs``: ``(y, P, groups)`` per run (folds x seeds) on one evaluated set. Each
    resample draws the runs with replacement (run-to-run variation: seeds, fold
    models) and, within them, the patients with replacement (sampling of the evaluated
    patients; a patient seen by several runs is drawn the same number of times in each,
    as in the paired comparisons), then averages the metric over the drawn runs. The
    percentile interval of those means covers both sources of uncertainty, for internal
    and external sets alike. Runs whose metric is undefined are left out beforehand.
    Returns ``{"lo", "hi", "n_runs", "n_boot", "n_valid"}`` (``lo``/``hi`` None when
    undefined in every resample).
    """
    out = {"lo": None, "hi": None, "n_runs": len(runs), "n_boot": int(n_boot), "n_valid": 0}
    if not runs or n_boot < 1:
        return out
    rng = np.random.default_rng(seed)
    codes, counts = patient_draws([r[2] for r in runs], n_boot, rng)
    run_draw = rng.integers(0, len(runs), size=(n_boot, len(runs)))
    resampled = getattr(metric_fn, "resampled", None)
    M = np.full((len(runs), n_boot), np.nan)
    for r, ((y, P, _), c) in enumerate(zip(runs, codes)):
        if resampled is not None:
            M[r] = resampled(y, P, counts[:, c])
        else:
            for b in range(n_boot):
                idx = np.repeat(np.arange(len(c)), counts[b][c])
                v = metric_fn(y[idx], P[idx])
                M[r, b] = np.nan if v is None else v
    vals = M[run_draw, np.arange(n_boot)[:, None]]  # (n_boot, n_runs): the drawn runs' values
    ok = ~np.isnan(vals).any(axis=1)  # a resample where a drawn run is undefined is left out
    if not ok.any():
        return out
    means = vals[ok].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return {**out, "lo": float(lo), "hi": float(hi), "n_valid": int(ok.sum())}


def headline_intervals(
    records: Sequence[dict],
    spec: TaskSpec,
    metric: str = "auroc",
    n_boot: int = 1000,
    seed: int = 0,
    root=None,
) -> pd.DataFrame:
    """Per (set, init, adaptation, fraction): the runs-and-patients interval of ``metric``
    (:func:`runs_and_patients_interval`), cut to the metric's range.

    Columns ``set, init, adaptation, fraction, metric, hl_lo, hl_hi, hl_n_runs, hl_n_boot``. Runs
    without predictions or with the metric undefined are not used (counted elsewhere).
    """
    fn = metric_getter(spec, metric)
    groups: dict[tuple, list] = {}
    for rec in sorted(records, key=lambda r: str(r.get("_path"))):
        key = (rec["set"], rec["init"], adaptation_of(rec), float(rec["fraction"]))
        groups.setdefault(key, [])
        if rec["metrics"].get(metric) is None:
            continue
        pred = load_predictions(rec, spec, root)
        if pred is None:
            log.warning("headline interval: predictions of %s not found; run left out", rec.get("_path"))
            continue
        y, P = to_arrays(pred, spec)
        groups[key].append((y, P, patient_groups(pred)))
    rows = []
    for (s, init, adapt, frac), runs in groups.items():
        res = runs_and_patients_interval(runs, fn, n_boot=n_boot, seed=seed)
        lo, hi = (res["lo"], res["hi"]) if res["lo"] is not None else (None, None)
        if lo is not None:
            lo, hi = clip_to_range(lo, hi, metric)
        rows.append({"set": s, "init": init, "adaptation": adapt, "fraction": frac, "metric": metric, "hl_lo": lo,
                     "hl_hi": hi, "hl_n_runs": res["n_runs"], "hl_n_boot": res["n_boot"]})
    return pd.DataFrame(rows, columns=["set", "init", "adaptation", "fraction", "metric", "hl_lo", "hl_hi",
                                       "hl_n_runs", "hl_n_boot"])


def best_run_on_validation(records: Sequence[dict], spec: TaskSpec, metric: str = "auroc",
                           root=None) -> tuple[dict, float | None]:
    """The fine-tune whose *validation* predictions (``predictions_val.csv`` beside the
    test predictions) score best on ``metric``: a model chosen without looking at the test
    set. Linear probes are left out (logged): they have no network weights of their own,
    so no activation maps. Ties and undefined values as in :func:`best_run`. Returns
    ``(record, value)``; raises ValueError when no fine-tune was evaluated on 'test'."""
    runs = [r for r in records if r.get("set") == "test"]
    if not runs:
        raise ValueError("no run was evaluated on set 'test'")
    probes = [r for r in runs if adaptation_of(r) != DEFAULT_ADAPTATION]
    runs = [r for r in runs if adaptation_of(r) == DEFAULT_ADAPTATION]
    if probes:
        log.info("model choice: %d linear-probe run(s) left out (a linear probe has no network weights of its "
                 "own; activation maps need a fine-tuned model)", len(probes))
    if not runs:
        raise ValueError(f"no fine-tune among the {len(probes)} run(s) evaluated on 'test' (all linear probes, e.g. "
                         f"{probes[0].get('_path', '?')}): activation maps need a fine-tuned network; give the "
                         "fine-tunes' metrics files")
    fn = metric_getter(spec, metric)
    scored = []
    for r in runs:
        p = predictions_path(r, root)
        val = None
        if p is not None and (p.parent / "predictions_val.csv").is_file():
            y, P = to_arrays(read_predictions(p.parent / "predictions_val.csv", spec), spec)
            try:
                val = fn(y, P) if len(y) else None
            except Undefined:
                val = None
        scored.append((val is None, -(val or 0.0), str(r["_path"]), r, val))
    best = min(scored, key=lambda t: t[:3])
    if best[4] is None:
        log.warning("validation %s is undefined for every run; using %s", metric, best[3]["_path"])
    return best[3], best[4]


def best_run(records: Sequence[dict], metric: str = "auroc", set_name: str = "test") -> dict:
    """The run with the highest ``metric`` on ``set_name`` (ties: first in sorted path
    order, so the choice is deterministic). Runs where the metric is undefined rank last;
    raises ValueError when no run was evaluated on ``set_name``."""
    runs = [r for r in records if r.get("set") == set_name]
    if not runs:
        raise ValueError(f"no run was evaluated on set {set_name!r}")

    def rank(r):
        v = r["metrics"].get(metric)
        return (v is None, -float(v) if v is not None else 0.0, str(r["_path"]))

    best = min(runs, key=rank)
    if best["metrics"].get(metric) is None:
        log.warning("%s is undefined for every run on %s; using %s", metric, set_name, best["_path"])
    return best
