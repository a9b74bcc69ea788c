"""The metrics-JSON record of one run on one evaluated set (contract in
docs/architecture.md): metrics with patient-bootstrap CIs, from its predictions file."""

from __future__ import annotations

from pathlib import Path

from fundusfm.evaluate.bootstrap import patient_bootstrap
from fundusfm.evaluate.io import clean_number, patient_groups
from fundusfm.evaluate.metrics import compute_metrics
from fundusfm.task import TaskSpec, read_predictions

# what identifies a record: the run (layout) and the evaluated set
META_KEYS = ("task", "init", "fold", "fraction", "seed", "set")


def evaluate_run(predictions: str | Path, task: dict, meta: dict, val_predictions: str | Path | None = None,
                 n_boot: int = 1000, seed: int = 0) -> dict:
    """The metrics-JSON record of one predictions file (see docs/architecture.md)."""
    spec = TaskSpec.from_dict(task, meta.get("task"))
    df = read_predictions(predictions, spec)
    val = read_predictions(val_predictions, spec) if val_predictions else None
    res = compute_metrics(df, spec, val_df=val)
    undefined = dict(res["undefined"])
    if val is None and spec.type in ("binary", "multilabel"):
        for m in ("threshold_val", "sensitivity_val_threshold", "specificity_val_threshold"):
            res["metrics"][m] = None
            undefined[m] = "no validation predictions given (--val-predictions)"
    boot = patient_bootstrap(df, spec, n_boot=n_boot, seed=seed, thresholds=res["thresholds"] if val is not None else None)
    ci = {}
    for m, v in res["metrics"].items():
        c = boot["ci"].get(m)
        ci[m] = None if v is None or c is None else [clean_number(c[0]), clean_number(c[1])]
    return {
        **{k: meta[k] for k in META_KEYS},
        "task_type": spec.type,
        "classes": list(spec.names),
        "n_images": int(len(df)),
        "n_patients": int(len(set(patient_groups(df)))),
        "metrics": {k: clean_number(v) for k, v in res["metrics"].items()},
        "ci": ci,
        "undefined": undefined,
        "thresholds": {k: (clean_number(v) if not isinstance(v, str) else None)
                       for k, v in res["thresholds"].items()},
        "bootstrap": {"n_boot": boot["n_boot"], "seed": seed, "level": boot["level"], "unit": "patient",
                      "method": "percentile",
                      "n_undefined": {k: v for k, v in boot["n_undefined"].items() if v}},
        "predictions": str(predictions),
        "val_predictions": str(val_predictions) if val_predictions else None,
    }
