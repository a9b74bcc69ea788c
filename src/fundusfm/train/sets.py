"""The rows and targets of one run, without torch: the task table, its fold's roles, the
label-fraction selection and the encoded targets.

Fine-tuning (:mod:`fundusfm.train.engine`) and the linear probe (:mod:`fundusfm.train.linear`)
both select their train / val / test rows here, so a fine-tune and a probe of the same
fold, fraction and seed see exactly the same images: the paired comparison of the two
adaptations rests on it. Nothing here imports torch, so the probe starts in about a second.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fundusfm.task import TaskSpec

log = logging.getLogger("fundusfm.train")

ROLES = ("train", "val", "test", "external", "excluded")
# seed salts of a run's random draws (mix_seed(seed, salt)): the validation subset under a
# label fraction (the training subset uses the run's seed itself), and the random
# initialisation of its model (a fine-tune and `fundusfm embed` of init random draw the same)
VAL_FRACTION_SALT = 0x7A1
MODEL_INIT_SALT = 0xC0FFEE


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix-style), stable across processes."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def file_row(label) -> int:
    """Row number in the CSV file (as a spreadsheet shows it: the header is row 1) of the
    table row with index label ``label``. Task tables are read with pandas' default index,
    kept through every selection, so label ``i`` is data row ``i``, file row ``i + 2``."""
    return int(label) + 2


def _row_name(df: pd.DataFrame, r: int) -> str:
    row = df.iloc[r]
    return f"{row.get('dataset', '?')}/{row.get('image_id', '?')}"


def read_task_table(path: str, fold: int) -> tuple[pd.DataFrame, str]:
    """The task table and its fold column name; errors name the file and the key."""
    df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str, "dataset": str, "eye": str},
                     keep_default_na=True)
    col = f"fold{fold}"
    need = ["dataset", "image_id", "patient_id", "image", col]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} missing (have {list(df.columns)})")
    bad = ~df[col].isin(ROLES)
    if bad.any():
        r = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}: row {file_row(r)} column {col!r}: role {df[col].iloc[r]!r} not in {sorted(ROLES)}")
    if "eye" not in df.columns:
        df["eye"] = "U"
    return df, col


def encode_targets(df: pd.DataFrame, task: TaskSpec, table: str = "task table") -> np.ndarray:
    """Targets per row: int class indices (single-label) or float 0/1/NaN (multilabel).

    Single-label rows must be labelled; an unknown or out-of-range label raises naming
    the table, row and column (the split stage marks unlabelled images ``excluded``).
    A multilabel row may leave a label unknown (NaN): training masks it out of the loss,
    the probe out of that label's fit.
    """
    missing = [c for c in task.columns if c not in df.columns]
    if missing:
        raise ValueError(f"{table}: label column(s) {missing} not found (columns: {list(df.columns)})")
    if task.multilabel:
        vals = df[list(task.columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
        bad = ~np.isnan(vals) & ~np.isin(vals, (0.0, 1.0))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"{table}: row {file_row(df.index[r])} ({_row_name(df, r)}) column {task.columns[c]!r}: "
                             f"multilabel values must be 0/1, got {vals[r, c]}")
        return vals
    col = task.columns[0]
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(vals) | (vals != np.round(vals)) | (vals < 0) | (vals >= task.num_outputs)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{table}: row {file_row(df.index[r])} ({_row_name(df, r)}) column {col!r}: label {df[col].iloc[r]!r} is "
            f"not a class index 0..{task.num_outputs - 1} ({bad.sum()} such rows); unlabelled rows must be "
            "'excluded' in the fold column"
        )
    return vals.astype(np.int64)


def select_sets(df: pd.DataFrame, col: str, *, table: str, task: TaskSpec, fraction: float, seed: int,
                hparams: dict, external: Sequence[str] = (), check_files: bool = True) -> dict[str, pd.DataFrame]:
    """train / val / test / external_<ds> rows of the table (column ``col`` holds the roles).

    A label fraction applies to the labelled development data, train *and* validation
    alike (a label-scarce user has no full validation set either): each keeps about
    ``fraction`` of its patients (split groups), stratified and nested across fractions.
    Validation keeps at least ``hparams.val_min_patients`` patients per stratum (or all
    of a smaller stratum) so that early stopping and the threshold still see every class.
    ``hparams.val_labels: full`` keeps the whole validation set instead (named in
    ``train_config.json`` and in the study table's protocol card).

    The selection depends on the table, ``fraction``, ``seed`` and those two hparams
    only; ``check_files`` (image files must exist) does not change it: the linear probe
    reads cached features instead of images and passes False.
    """
    from fundusfm.data.splits import label_fraction_mask, stratum

    sets: dict[str, pd.DataFrame] = {}
    train = df[df[col] == "train"]
    val = df[df[col] == "val"]
    if fraction < 1:
        task_d = task.as_dict()
        keep = label_fraction_mask(train, fraction, seed, stratum(train, task_d))
        log.info("label fraction %.3g: %d of %d training images", fraction, keep.sum(), len(train))
        train = train[keep]
        if hparams.get("val_labels", "fraction") == "fraction" and len(val):
            floor = int(hparams.get("val_min_patients", 2))
            vkeep = label_fraction_mask(val, fraction, mix_seed(seed, VAL_FRACTION_SALT), stratum(val, task_d),
                                        min_per_stratum=floor)
            log.info("label fraction %.3g: %d of %d validation images (floor %s patients per stratum)",
                     fraction, vkeep.sum(), len(val), floor)
            val = val[vkeep]
    sets["train"] = train
    sets["val"] = val
    sets["test"] = df[df[col] == "test"]
    ext = df[df[col] == "external"]
    for ds in external:
        rows = ext[ext["dataset"] == ds]
        if rows.empty:
            raise ValueError(f"{table}: no rows of external dataset {ds!r} in {col} "
                             f"(external datasets there: {sorted(ext['dataset'].unique())})")
        sets[f"external_{ds}"] = rows
    if sets["train"].empty:
        raise ValueError(f"{table}: no 'train' rows in {col}")
    if check_files:
        for name, rows in sets.items():
            absent = [p for p in rows["image"] if not Path(p).is_file()]
            if absent:
                r = file_row(rows.index[rows["image"] == absent[0]][0])
                raise FileNotFoundError(f"{table}: row {r} ({name}) image {absent[0]!r} not found "
                                        f"({len(absent)} missing in {name}; paths are relative to {os.getcwd()})")
    return sets
