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


# ----------------------------------------------------------------------------- completeness
#
# Every prediction set is checked against the split it belongs to before anything is
# computed from it: exactly the split's images (none missing, none extra, none twice),
# the task's classes and the split's truth. The evaluate verb checks each file against
# its split table; the metrics JSON records that split (``split``) so that the paired
# comparison checks the files it reads again (:func:`check_recorded_split`).

KEY = ["dataset", "image_id"]
_tables: dict[tuple, pd.DataFrame] = {}


def split_rows(table: str | Path, fold: int, evalset: str) -> pd.DataFrame:
    """The rows a prediction set must hold: of the task table (``test`` / ``val``: rows
    with that role in ``fold<k>``) or an external split table (``external_<ds>``: rows of
    dataset ``ds`` with role ``external``). Read once per process and table."""
    table = Path(table)
    st = table.stat()
    key = (str(table.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _tables:
        _tables[key] = pd.read_csv(table, dtype={"image_id": str, "dataset": str, "patient_id": str},
                                   keep_default_na=False)
    df = _tables[key]
    col = f"fold{int(fold)}"
    if col not in df.columns or "dataset" not in df.columns or "image_id" not in df.columns:
        raise PredictionsError(f"{table}: no column {col!r} (or dataset / image_id): not the split table of this run")
    if evalset.startswith("external_"):
        return df[(df[col] == "external") & (df["dataset"] == evalset[len("external_"):])]
    return df[df[col] == evalset]


def ids_digest(keys) -> str:
    """Digest of a set of ``(dataset, image_id)`` keys (order-free), recorded per metrics JSON."""
    import hashlib

    text = "\n".join(sorted(f"{d}/{i}" for d, i in keys))
    return hashlib.sha256(text.encode()).hexdigest()


def check_complete(df: pd.DataFrame, split: pd.DataFrame, task: dict | TaskSpec, source, split_source: str,
                   subset: bool = False) -> None:
    """Refuse a predictions table that is not exactly its split: a missing, extra or
    repeated image, probability columns other than the task's classes, or a truth that
    differs from the split table's. Raises :class:`PredictionsError`, one line naming the
    file, the first missing (or extra) id and what to do. ``subset``: the set may hold
    part of the split (validation under a label fraction), but nothing outside it."""
    spec = TaskSpec.from_dict(task)
    redo = "rerun the job that wrote it (delete the file; snakemake then remakes it)"
    have_probs = sorted(c for c in df.columns if str(c).startswith("prob_"))
    if have_probs != sorted(spec.prob_columns()):
        raise PredictionsError(f"{source}: probability columns {have_probs} are not the task's classes "
                               f"{spec.prob_columns()}; {redo}")
    keys = list(zip(df["dataset"].astype(str), df["image_id"].astype(str)))
    seen: set = set()
    for k in keys:
        if k in seen:
            raise PredictionsError(f"{source}: image {k[0]}/{k[1]} appears twice; {redo}")
        seen.add(k)
    want = list(zip(split["dataset"].astype(str), split["image_id"].astype(str)))
    want_set = set(want)
    missing = [k for k in want if k not in seen]
    extra = [k for k in keys if k not in want_set]
    if extra:
        raise PredictionsError(f"{source}: {len(extra)} image(s) not in {split_source} (first: {extra[0][0]}/"
                               f"{extra[0][1]}); {redo}")
    if missing and not subset:
        raise PredictionsError(f"{source}: {len(missing)} of the {len(want)} images of {split_source} missing "
                               f"(first missing: {missing[0][0]}/{missing[0][1]}); {redo}")
    if not keys:
        raise PredictionsError(f"{source}: no rows ({split_source} has {len(want)}); {redo}")
    truth = split.set_index(KEY)
    rows = df.set_index(KEY)
    for pred_col, table_col in zip(spec.label_columns(), spec.columns):
        if table_col not in truth.columns:
            continue
        t = pd.to_numeric(truth.loc[rows.index, table_col], errors="coerce").to_numpy()
        v = pd.to_numeric(rows[pred_col], errors="coerce").to_numpy()
        bad = np.isfinite(t) & (t != v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            d, img = rows.index[i]
            raise PredictionsError(f"{source}: image {d}/{img} has {pred_col}={v[i]:g} but {split_source} says "
                                   f"{table_col}={t[i]:g}; {redo}")


def split_record(table: str | Path, fold: int, evalset: str, split: pd.DataFrame) -> dict:
    """The ``split`` entry of a metrics JSON: the split table, fold, set, and the count and
    digest of its images."""
    keys = list(zip(split["dataset"].astype(str), split["image_id"].astype(str)))
    return {"table": str(table), "fold": int(fold), "set": evalset, "n_images": len(keys), "ids_sha256": ids_digest(keys)}


def check_recorded_split(df: pd.DataFrame, rec: dict, task: dict | TaskSpec, source) -> None:
    """The completeness check of a predictions file read through its metrics record (the
    paired comparison): against the split the record names, when it names one."""
    split = rec.get("split") if isinstance(rec, dict) else None
    if not isinstance(split, dict) or not split.get("table"):
        return
    keys = list(zip(df["dataset"].astype(str), df["image_id"].astype(str)))
    if len(keys) == split.get("n_images") and ids_digest(keys) == split.get("ids_sha256"):
        return  # the images the split had when evaluated: nothing to re-read
    table = Path(split["table"])
    where = f"{table} fold{split['fold']} {split['set']}"
    if not table.is_file():
        raise PredictionsError(f"{source}: holds other images than {where} had when {rec.get('_path', 'its metrics')} "
                               f"was computed, and {table} is gone; rerun the study (snakemake)")
    check_complete(df, split_rows(table, split["fold"], split["set"]), task, source, where)
    raise PredictionsError(f"{source}: {where} changed since {rec.get('_path', 'its metrics')} was computed; rerun "
                           "the study (snakemake) so its metrics follow the new split")


def align_predictions(a: pd.DataFrame, b: pd.DataFrame, task: dict | TaskSpec, names=("a", "b")):
    """Pair two prediction tables on the same images (``dataset``, ``image_id``).

    Raises if the image sets differ or if an image's truth differs between the files
    (a paired comparison on different data would be meaningless), naming the first image
    one of them lacks (:func:`check_complete` of each against the other).
    """
    spec = TaskSpec.from_dict(task)
    key = ["dataset", "image_id"]
    ka = set(map(tuple, a[key].to_numpy()))
    kb = set(map(tuple, b[key].to_numpy()))
    if ka != kb:
        pairs = [(b, names[1], a, names[0]), (a, names[0], b, names[1])]
        # the smaller file first: a truncated one is named with its first missing image
        for df, name, other, other_name in sorted(pairs, key=lambda t: len(t[0])):
            check_complete(df, other, spec, f"paired comparison needs the same images: the predictions of {name}",
                           f"the predictions of {other_name}")
        raise PredictionsError(f"paired comparison needs the same images in {names[0]} and {names[1]}")
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
