"""The metrics-JSON record of one run on one evaluated set (contract in
docs/architecture.md): metrics with patient-bootstrap CIs, from its predictions file."""

from __future__ import annotations

from pathlib import Path

from fundusfm.evaluate.bootstrap import patient_bootstrap
from fundusfm.evaluate.io import (DEFAULT_ADAPTATION, check_complete, clean_number, patient_groups, split_record,
                                  split_rows)
from fundusfm.evaluate.metrics import compute_metrics
from fundusfm.layout import ADAPTATIONS
from fundusfm.task import TaskSpec, read_predictions

# what identifies a record: the run (layout) and the evaluated set
META_KEYS = ("task", "init", "adaptation", "fold", "fraction", "seed", "set")
# keys a caller may leave out, and what they then mean (results from before issue 18)
META_DEFAULTS = {"adaptation": DEFAULT_ADAPTATION}


def complete_meta(meta: dict, source: str = "meta") -> dict:
    """``meta`` with :data:`META_DEFAULTS` filled in; raises ValueError naming ``source``
    and the key when a key of :data:`META_KEYS` is missing or the adaptation is unknown."""
    meta = {**META_DEFAULTS, **meta}
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        need = [k for k in META_KEYS if k not in META_DEFAULTS]
        raise ValueError(f"{source} lacks key(s) {missing}; needs {need} (optional: {sorted(META_DEFAULTS)})")
    if meta["adaptation"] not in ADAPTATIONS:
        raise ValueError(f"{source}: adaptation {meta['adaptation']!r} is not one of {list(ADAPTATIONS)}")
    return meta


def evaluate_run(predictions: str | Path, task: dict, meta: dict, val_predictions: str | Path | None = None,
                 n_boot: int = 1000, seed: int = 0, split_table: str | Path | None = None,
                 task_table: str | Path | None = None) -> dict:
    """The metrics-JSON record of one predictions file (see docs/architecture.md).

    ``meta``: the keys of :data:`META_KEYS` (``adaptation`` may be left out: a fine-tune).
    ``split_table``: the table of the evaluated set (the task table; an external set's own
    split table); the predictions must then hold exactly its images of ``meta``'s fold and
    set, and the validation predictions only images of the task table's (``task_table``,
    default ``split_table``) validation rows, all of them without a label fraction
    (:func:`fundusfm.evaluate.io.check_complete`); the record names the split (``split``)."""
    meta = complete_meta(meta)
    spec = TaskSpec.from_dict(task, meta.get("task"))
    df = read_predictions(predictions, spec)
    val = read_predictions(val_predictions, spec) if val_predictions else None
    split = None
    if split_table is not None:
        rows = split_rows(split_table, meta["fold"], meta["set"])
        check_complete(df, rows, spec, predictions, f"{split_table} fold{meta['fold']} {meta['set']}")
        split = split_record(split_table, meta["fold"], meta["set"], rows)
        if val is not None:
            vt = task_table or split_table
            check_complete(val, split_rows(vt, meta["fold"], "val"), spec, val_predictions, f"{vt} fold{meta['fold']} val",
                           subset=float(meta["fraction"]) < 1)
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
        **({"split": split} if split else {}),
    }
