"""The evaluation stage's inputs as arrays, and its metrics JSONs (contracts in
docs/architecture.md; the task and the predictions CSV are :mod:`fundusfm.task`).

Everything downstream works on plain arrays: ``y`` (class index per image, or a 0/1
matrix for multilabel tasks), ``P`` (probability matrix, one column per class / label)
and ``groups`` (patient key per image, ``dataset/patient_id``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from fundusfm.layout import ADAPTATIONS
from fundusfm.task import PredictionsError, TaskSpec

# a metrics JSON without ``adaptation`` (written before the grid had one) is a fine-tune
DEFAULT_ADAPTATION = "finetune"


def patient_groups(df: pd.DataFrame) -> np.ndarray:
    """Patient key ``dataset/patient_id`` per row (the resampling unit of the bootstrap)."""
    return (df["dataset"].astype(str) + "/" + df["patient_id"].astype(str)).to_numpy()


def to_arrays(df: pd.DataFrame, task: dict | TaskSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(y, P)`` from a validated predictions table."""
    spec = TaskSpec.from_dict(task)
    P = df[spec.prob_columns()].to_numpy(dtype=float)
    if spec.multilabel:
        y = df[spec.label_columns()].to_numpy(dtype=int)
    else:
        y = df["label"].to_numpy(dtype=int)
    return y, P


def align_predictions(a: pd.DataFrame, b: pd.DataFrame, task: dict | TaskSpec, names=("a", "b")):
    """Pair two prediction tables on the same images (``dataset``, ``image_id``).

    Raises if the image sets differ or if an image's truth differs between the files
    (a paired comparison on different data would be meaningless).
    """
    spec = TaskSpec.from_dict(task)
    key = ["dataset", "image_id"]
    ka = set(map(tuple, a[key].to_numpy()))
    kb = set(map(tuple, b[key].to_numpy()))
    if ka != kb:
        only_a, only_b = sorted(ka - kb)[:3], sorted(kb - ka)[:3]
        raise PredictionsError(
            f"paired comparison needs the same images in {names[0]} and {names[1]}: "
            f"{len(ka - kb)} only in {names[0]} (e.g. {only_a}), {len(kb - ka)} only in {names[1]} (e.g. {only_b})"
        )
    b = b.set_index(key).loc[a.set_index(key).index].reset_index()
    a = a.reset_index(drop=True)
    for c in spec.label_columns():
        diff = a[c].to_numpy() != b[c].to_numpy()
        if diff.any():
            i = int(np.flatnonzero(diff)[0])
            raise PredictionsError(
                f"image {a.loc[i, 'dataset']}/{a.loc[i, 'image_id']}: {c!r} is {a.loc[i, c]} in {names[0]} "
                f"but {b.loc[i, c]} in {names[1]}"
            )
    return a, b


def clean_number(x) -> float | None:
    """JSON-safe float: NaN/inf -> None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def adaptation_of(rec: dict) -> str:
    """How a record's run adapted its init (:data:`fundusfm.layout.ADAPTATIONS`); a record
    without the key is a fine-tune (:data:`DEFAULT_ADAPTATION`)."""
    return rec.get("adaptation") or DEFAULT_ADAPTATION


def arm_label(init: str, adaptation: str) -> str:
    """How figures and logs name one model: the init, with ``(linear)`` for a linear probe
    (so the two adaptations of one init are never merged under one name)."""
    return init if adaptation == DEFAULT_ADAPTATION else f"{init} ({adaptation})"


def read_metrics_json(path: str | Path) -> dict:
    """Read one metrics JSON and check the keys the table/figure steps rely on; a file
    without ``adaptation`` (older results) reads as a fine-tune."""
    path = Path(path)
    rec = json.loads(path.read_text())
    for k in ("task", "init", "fold", "fraction", "seed", "set", "metrics"):
        if k not in rec:
            raise ValueError(f"{path}: metrics JSON lacks key {k!r} (see docs/architecture.md)")
    rec["adaptation"] = adaptation_of(rec)
    if rec["adaptation"] not in ADAPTATIONS:
        raise ValueError(f"{path}: key 'adaptation' is {rec['adaptation']!r}, not one of {list(ADAPTATIONS)}")
    rec["_path"] = str(path)
    return rec
