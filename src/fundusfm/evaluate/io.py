"""Reading and validating the evaluation stage's inputs: task definitions, predictions
CSVs and metrics JSONs (contracts in docs/architecture.md).

Everything downstream works on plain arrays: ``y`` (class index per image, or a 0/1
matrix for multilabel tasks), ``P`` (probability matrix, one column per class / label)
and ``groups`` (patient key per image, ``dataset/patient_id``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fundusfm.jsonargs import load_json_arg  # noqa: F401  (re-exported: evaluate's CLI reads it here)

TASK_TYPES = ("binary", "multiclass", "ordinal", "multilabel")
ID_COLUMNS = ("image_id", "dataset", "patient_id", "eye")
# rows of a single-label prediction file must sum to 1 within this tolerance
SUM_TOLERANCE = 1e-3


class PredictionsError(ValueError):
    """A predictions CSV does not follow the contract (names file, row and column)."""


@dataclass(frozen=True)
class TaskSpec:
    """The parts of a task definition the evaluation needs.

    kind: ``binary`` | ``multiclass`` | ``ordinal`` | ``multilabel``;
    names: class names (single-label; class i <-> label value i) or label names (multilabel).
    """

    name: str
    kind: str
    names: tuple[str, ...]

    @property
    def multilabel(self) -> bool:
        return self.kind == "multilabel"

    @property
    def n_outputs(self) -> int:
        return len(self.names)


def task_spec(task: dict | TaskSpec, name: str | None = None) -> TaskSpec:
    """Normalise a task definition (config ``tasks.<name>``) into a :class:`TaskSpec`."""
    if isinstance(task, TaskSpec):
        return task
    kind = task.get("type")
    if kind not in TASK_TYPES:
        raise ValueError(f"task {name or task.get('name', '?')}: 'type' must be one of {TASK_TYPES}, got {kind!r}")
    if kind == "multilabel":
        names = task.get("labels")
        key = "labels"
    else:
        names = task.get("classes")
        key = "classes"
    if not names or len(names) < 2 and kind != "multilabel":
        raise ValueError(f"task {name or task.get('name', '?')}: '{key}' must list the {key} (got {names!r})")
    if kind == "binary" and len(names) != 2:
        raise ValueError(f"binary task needs exactly 2 classes [negative, positive], got {names!r}")
    names = tuple(str(n) for n in names)
    if len(set(names)) != len(names):
        raise ValueError(f"task {name or task.get('name', '?')}: duplicate names in '{key}': {names!r}")
    return TaskSpec(name=str(name or task.get("name", "")), kind=kind, names=names)


def prob_columns(spec: TaskSpec) -> list[str]:
    return [f"prob_{n}" for n in spec.names]


def label_columns(spec: TaskSpec) -> list[str]:
    return [f"label_{n}" for n in spec.names] if spec.multilabel else ["label"]


def validate_predictions(df: pd.DataFrame, task: dict | TaskSpec, source: str = "<predictions>") -> pd.DataFrame:
    """Check a predictions table against the contract; return it with clean dtypes.

    Raises :class:`PredictionsError` naming ``source``, the (1-based CSV) row and column.
    """
    spec = task_spec(task)
    need = ["image_id", "dataset", "patient_id"] + label_columns(spec) + prob_columns(spec)
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise PredictionsError(
            f"{source}: missing column(s) {missing} for {spec.kind} task with "
            f"{'labels' if spec.multilabel else 'classes'} {list(spec.names)}; columns are {list(df.columns)}"
        )
    if len(df) == 0:
        raise PredictionsError(f"{source}: no rows")
    df = df.copy()
    for c in ("image_id", "dataset", "patient_id"):
        bad = df[c].isna() | (df[c].astype(str).str.strip() == "")
        if bad.any():
            raise PredictionsError(f"{source}: row {_row(df, bad)}: empty {c!r}")
        df[c] = df[c].astype(str)
    dup = df.duplicated(["dataset", "image_id"])
    if dup.any():
        raise PredictionsError(f"{source}: row {_row(df, dup)}: duplicate image {df.loc[dup].iloc[0]['image_id']!r}")
    for c in prob_columns(spec):
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() | (v < 0) | (v > 1)
        if bad.any():
            raise PredictionsError(
                f"{source}: row {_row(df, bad)}: column {c!r} must be a probability in [0, 1], "
                f"got {df.loc[bad, c].iloc[0]!r}"
            )
        df[c] = v.astype(float)
    k = spec.n_outputs
    allowed = (0, 1) if spec.multilabel else tuple(range(k))
    for c in label_columns(spec):
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() | ~v.isin(allowed)
        if bad.any():
            raise PredictionsError(
                f"{source}: row {_row(df, bad)}: column {c!r} must be an integer in {list(allowed)}, "
                f"got {df.loc[bad, c].iloc[0]!r}"
            )
        df[c] = v.astype(int)
    if not spec.multilabel:
        s = df[prob_columns(spec)].sum(axis=1)
        bad = (s - 1).abs() > SUM_TOLERANCE
        if bad.any():
            raise PredictionsError(
                f"{source}: row {_row(df, bad)}: class probabilities sum to {s[bad].iloc[0]:.4f}, expected 1"
            )
    return df


def _row(df: pd.DataFrame, mask: pd.Series) -> int:
    # 1-based data row number as seen in the CSV (header is line 1, first data row is row 1)
    return int(np.flatnonzero(mask.to_numpy())[0]) + 1


def read_predictions(path: str | Path, task: dict | TaskSpec) -> pd.DataFrame:
    """Read and validate a predictions CSV (ids are read as strings, never as numbers)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    df = pd.read_csv(path, dtype={c: str for c in ID_COLUMNS}, keep_default_na=False, na_values=[""])
    return validate_predictions(df, task, source=str(path))


def patient_groups(df: pd.DataFrame) -> np.ndarray:
    """Patient key ``dataset/patient_id`` per row (the resampling unit of the bootstrap)."""
    return (df["dataset"].astype(str) + "/" + df["patient_id"].astype(str)).to_numpy()


def to_arrays(df: pd.DataFrame, task: dict | TaskSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(y, P)`` from a validated predictions table."""
    spec = task_spec(task)
    P = df[prob_columns(spec)].to_numpy(dtype=float)
    if spec.multilabel:
        y = df[label_columns(spec)].to_numpy(dtype=int)
    else:
        y = df["label"].to_numpy(dtype=int)
    return y, P


def align_predictions(a: pd.DataFrame, b: pd.DataFrame, task: dict | TaskSpec, names=("a", "b")):
    """Pair two prediction tables on the same images (``dataset``, ``image_id``).

    Raises if the image sets differ or if an image's truth differs between the files
    (a paired comparison on different data would be meaningless).
    """
    spec = task_spec(task)
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
    for c in label_columns(spec):
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


def read_metrics_json(path: str | Path) -> dict:
    """Read one metrics JSON and check the keys the table/figure steps rely on."""
    path = Path(path)
    rec = json.loads(path.read_text())
    for k in ("task", "init", "fold", "fraction", "seed", "set", "metrics"):
        if k not in rec:
            raise ValueError(f"{path}: metrics JSON lacks key {k!r} (see docs/architecture.md)")
    rec["_path"] = str(path)
    return rec
