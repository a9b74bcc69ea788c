"""A task: its definition (config ``tasks.<name>``) and its predictions file.

One home for what training, inference, evaluation and the release agree on:

* :class:`TaskSpec`, the checked task definition (type, label column(s), class or label
  names), built from the config's JSON with :meth:`TaskSpec.from_dict`;
* the predictions CSV (contract in docs/architecture.md): its id columns, the
  ``label``/``label_<name>`` and ``prob_<name>`` columns, the writer
  (:func:`predictions_frame`) and the reader (:func:`read_predictions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TASK_TYPES = ("binary", "multiclass", "ordinal", "multilabel")
ID_COLUMNS = ("image_id", "dataset", "patient_id", "eye")
# rows of a single-label prediction file must sum to 1 within this tolerance
SUM_TOLERANCE = 1e-3


class PredictionsError(ValueError):
    """A predictions CSV does not follow the contract (names file, row and column)."""


@dataclass(frozen=True)
class TaskSpec:
    """A checked task definition.

    type: ``binary`` | ``multiclass`` | ``ordinal`` | ``multilabel``;
    columns: label column(s) of the task table (``label`` of a single-label task, empty
    when the definition does not name it; the ``labels`` of a multilabel task);
    names: class names (single-label; class i <-> label value i; binary ``[negative,
    positive]``) or label names (multilabel).
    """

    type: str
    columns: tuple[str, ...]
    names: tuple[str, ...]
    name: str = ""

    @property
    def multilabel(self) -> bool:
        return self.type == "multilabel"

    @property
    def num_outputs(self) -> int:
        return len(self.names)

    def as_dict(self) -> dict:
        """The definition as JSON (what ``model.json`` records)."""
        if self.multilabel:
            return {"type": self.type, "labels": list(self.names)}
        return {"type": self.type, "label": self.columns[0] if self.columns else None, "classes": list(self.names)}

    def label_columns(self) -> list[str]:
        """Truth column(s) of a predictions file."""
        return [f"label_{n}" for n in self.names] if self.multilabel else ["label"]

    def prob_columns(self) -> list[str]:
        """Probability columns of a predictions file, one per class / label."""
        return [f"prob_{n}" for n in self.names]

    @classmethod
    def from_dict(cls, task: dict | TaskSpec, name: str | None = None) -> TaskSpec:
        """Check a task definition (config ``tasks.<name>``); a TaskSpec passes through.

        Raises ValueError naming the task and the key."""
        if isinstance(task, TaskSpec):
            return task
        name = str(name or task.get("name") or "")
        where = f"task {name!r}" if name else "task"
        kind = task.get("type")
        if kind not in TASK_TYPES:
            raise ValueError(f"{where}: 'type' must be one of {TASK_TYPES}, got {kind!r}")
        key = "labels" if kind == "multilabel" else "classes"
        names = task.get(key)
        if not isinstance(names, (list, tuple)) or not names or (kind != "multilabel" and len(names) < 2):
            raise ValueError(f"{where}: {kind} task needs a list {key!r} (got {names!r})")
        if kind == "binary" and len(names) != 2:
            raise ValueError(f"{where}: a binary task has exactly 2 classes [negative, positive], got {list(names)!r}")
        names = tuple(str(n) for n in names)
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: duplicate names in {key!r}: {list(names)!r}")
        if kind == "multilabel":
            return cls(kind, names, names, name)
        label = task.get("label")
        if label is not None and not isinstance(label, str):
            raise ValueError(f"{where}: 'label' must be a column name, got {label!r}")
        return cls(kind, (label,) if label else (), names, name)


# ----------------------------------------------------------------------------- predictions CSV


def predictions_frame(rows: pd.DataFrame, y: np.ndarray | None, prob: np.ndarray, task: TaskSpec) -> pd.DataFrame:
    """The predictions table of ``rows`` (ids), truth ``y`` (None: unknown) and ``prob``."""
    out = pd.DataFrame({c: rows[c].to_numpy() if c in rows else "" for c in ID_COLUMNS})
    if task.multilabel:
        for j, col in enumerate(task.label_columns()):
            truth = np.full(len(rows), np.nan) if y is None else y[:, j]
            out[col] = pd.array(np.where(np.isnan(truth), np.nan, truth), dtype="Int64")
    else:
        out["label"] = pd.array(y, dtype="Int64") if y is not None else pd.array([pd.NA] * len(rows), dtype="Int64")
    for j, col in enumerate(task.prob_columns()):
        out[col] = prob[:, j]
    return out


def validate_predictions(df: pd.DataFrame, task: dict | TaskSpec, source: str = "<predictions>") -> pd.DataFrame:
    """Check a predictions table against the contract; return it with clean dtypes.

    Raises :class:`PredictionsError` naming ``source``, the (1-based CSV) row and column.
    """
    spec = TaskSpec.from_dict(task)
    need = ["image_id", "dataset", "patient_id"] + spec.label_columns() + spec.prob_columns()
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise PredictionsError(
            f"{source}: missing column(s) {missing} for {spec.type} task with "
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
    for c in spec.prob_columns():
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() | (v < 0) | (v > 1)
        if bad.any():
            raise PredictionsError(
                f"{source}: row {_row(df, bad)}: column {c!r} must be a probability in [0, 1], "
                f"got {df.loc[bad, c].iloc[0]!r}"
            )
        df[c] = v.astype(float)
    allowed = (0, 1) if spec.multilabel else tuple(range(spec.num_outputs))
    for c in spec.label_columns():
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() | ~v.isin(allowed)
        if bad.any():
            raise PredictionsError(
                f"{source}: row {_row(df, bad)}: column {c!r} must be an integer in {list(allowed)}, "
                f"got {df.loc[bad, c].iloc[0]!r}"
            )
        df[c] = v.astype(int)
    if not spec.multilabel:
        s = df[spec.prob_columns()].sum(axis=1)
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
