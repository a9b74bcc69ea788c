"""Study-level glue: the runs of one task (metrics JSONs) and their predictions files.

A metrics JSON records the path of the predictions it was computed from
(``"predictions"``, as given to ``fundusfm evaluate``), so tables and figures can go back
to the predictions for paired tests and curves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fundusfm.evaluate.compare import delong_test, metric_getter, paired_bootstrap_runs
from fundusfm.evaluate.io import align_predictions, patient_groups, read_metrics_json, to_arrays
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
    return read_predictions(p, spec)


def compare_inits(
    records: Sequence[dict],
    spec: TaskSpec,
    reference: str,
    metric: str = "auroc",
    n_boot: int = 1000,
    seed: int = 0,
    root=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired comparisons of every init against ``reference`` on the same images.

    Runs are matched on (set, fraction, fold, seed). Returns
    ``(pooled, per_run)``: ``pooled`` has one row per (set, init, fraction) with the
    paired patient bootstrap of the mean difference over matched runs
    (``diff, diff_lo, diff_hi, p_value, n_runs``); ``per_run`` lists each matched pair
    with DeLong's test (binary AUROC) and why a pair was skipped, if it was.
    """
    by_key = {(r["set"], float(r["fraction"]), r["fold"], r["seed"], r["init"]): r for r in records}
    fn = metric_getter(spec, metric)
    pooled_rows, run_rows = [], []
    groups: dict[tuple, list[tuple]] = {}
    for (s, frac, fold, sd, init), rec in sorted(by_key.items(), key=lambda kv: str(kv[0])):
        if init == reference:
            continue
        row = {"set": s, "init": init, "fraction": frac, "fold": fold, "seed": sd, "reference": reference,
               "metric": metric}
        ref = by_key.get((s, frac, fold, sd, reference))
        groups.setdefault((s, init, frac), [])
        if ref is None:
            run_rows.append({**row, "skipped": f"no {reference} run with the same set/fraction/fold/seed"})
            continue
        pa, pb = load_predictions(rec, spec, root), load_predictions(ref, spec, root)
        if pa is None or pb is None:
            missing = predictions_path(rec, root) if pa is None else predictions_path(ref, root)
            run_rows.append({**row, "skipped": f"predictions not found: {missing}"})
            log.warning("paired comparison %s vs %s skipped: predictions not found: %s", init, reference, missing)
            continue
        a, b = align_predictions(pa, pb, spec, names=(rec["_path"], ref["_path"]))
        y, P_a = to_arrays(a, spec)
        _, P_b = to_arrays(b, spec)
        g = patient_groups(a)
        groups[(s, init, frac)].append((y, P_a, P_b, g))
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
    for (s, init, frac), runs in groups.items():
        base = {"set": s, "init": init, "fraction": frac, "metric": metric, "reference": reference}
        if not runs:
            pooled_rows.append({**base, "diff": None, "diff_lo": None, "diff_hi": None, "p_value": None, "n_runs": 0})
            continue
        res = paired_bootstrap_runs(runs, fn, n_boot=n_boot, seed=seed)
        ci = res["ci"] or [None, None]
        pooled_rows.append({**base, "diff": res["diff"], "diff_lo": ci[0], "diff_hi": ci[1],
                            "p_value": res["p_value"], "n_runs": res["n_runs"]})
    pooled = pd.DataFrame(pooled_rows, columns=["set", "init", "fraction", "metric", "reference",
                                                "diff", "diff_lo", "diff_hi", "p_value", "n_runs"])
    per_run = pd.DataFrame(run_rows, columns=["set", "init", "fraction", "fold", "seed", "reference", "metric",
                                              "diff", "delong_z", "delong_p", "skipped"])
    return pooled, per_run


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
