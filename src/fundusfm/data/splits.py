"""Patient-level, leakage-free splits of a task and nested label fractions.

Pure functions over pandas DataFrames (one row per image). A *patient key* is
``dataset/patient_id``: two datasets never share a patient unless they share ids on
purpose, in which case they must be given the same ``patient_group`` upstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from fundusfm.task import TaskSpec

ROLES = ("train", "val", "test", "external", "excluded")


class LeakageError(RuntimeError):
    """A patient (or image) appears in more than one of train / val / test."""


@dataclass(frozen=True)
class SplitSpec:
    """How a task's development data are split.

    strategy: ``kfold`` (patient-grouped stratified k-fold; fold k is the test set and
    fold k+1 the validation set), ``official`` (the dataset's own train/val/test column;
    a validation set is carved from train patients when the dataset has none) or
    ``holdout`` (one grouped, stratified train/val/test split).
    """

    strategy: str = "kfold"
    folds: int = 5
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict | None) -> "SplitSpec":
        d = dict(d or {})
        return cls(**{k: d[k] for k in ("strategy", "folds", "val_fraction", "test_fraction", "seed") if k in d})

    @property
    def n_folds(self) -> int:
        """Number of fold columns the task table carries."""
        return self.folds if self.strategy == "kfold" else 1


def patient_key(df: pd.DataFrame) -> pd.Series:
    """``dataset/patient_id`` for each row (patients never cross datasets by accident)."""
    return df["dataset"].astype(str) + "/" + df["patient_id"].astype(str)


def stratum(df: pd.DataFrame, task: dict) -> pd.Series:
    """One stratification key per row: the class for single-label tasks, the first
    positive finding (or ``none``) for multilabel tasks, so rare label combinations do
    not each become a stratum of their own."""
    cols = list(TaskSpec.from_dict(task).columns)
    if task["type"] != "multilabel":
        return df[cols[0]].astype("Int64").astype(str)
    flags = df[cols].fillna(0).astype(int).to_numpy()
    first = np.where(flags.any(axis=1), flags.argmax(axis=1), -1)
    names = np.array(cols + ["none"], dtype=object)
    return pd.Series(names[first], index=df.index)


def _patient_strata(keys: pd.Series, strata: pd.Series) -> pd.Series:
    """Stratum per patient: the most frequent non-'none' stratum among its images
    (ties broken by name, so the result does not depend on row order)."""
    tab = pd.DataFrame({"key": keys.to_numpy(), "s": strata.astype(str).to_numpy()})
    tab["pri"] = (tab["s"] == "none") | (tab["s"] == "0")
    tab = tab.sort_values(["key", "pri", "s"])
    return tab.groupby("key", sort=True)["s"].agg(lambda s: s.value_counts(sort=True).index[0])


def grouped_kfold(df: pd.DataFrame, task: dict, n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) per row; patients grouped, strata balanced.

    Raises ValueError with the counts when there are fewer patients than folds.
    """
    keys = patient_key(df)
    n_patients = keys.nunique()
    if n_patients < n_folds:
        raise ValueError(f"task has {n_patients} patients, fewer than the {n_folds} folds asked for")
    # Shuffle patients deterministically first so StratifiedGroupKFold's tie-breaking
    # does not depend on the input row order.
    order = np.argsort(keys.to_numpy(), kind="stable")
    sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(df), -1, dtype=int)
    y = stratum(df, task).to_numpy()[order]
    g = keys.to_numpy()[order]
    for k, (_, test_idx) in enumerate(sgkf.split(np.zeros(len(order)), y, g)):
        folds[order[test_idx]] = k
    return folds


def _stratified_patients(keys: pd.Series, strata: pd.Series, fraction: float, seed: int) -> set[str]:
    """A stratified random subset of patients: about ``fraction`` of each stratum.

    One permutation per stratum, independent of ``fraction``: taking a prefix of it
    makes the subsets nested across fractions for the same seed. At least one patient
    per stratum is chosen.
    """
    pstrata = _patient_strata(keys, strata)
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for _, group in sorted(pstrata.groupby(pstrata), key=lambda kv: kv[0]):
        ids = np.array(sorted(group.index))
        perm = ids[rng.permutation(len(ids))]
        chosen.update(perm[: max(1, math.ceil(fraction * len(ids) - 1e-9))].tolist())
    return chosen


def label_fraction_mask(df: pd.DataFrame, fraction: float, seed: int, strata: pd.Series | None = None) -> np.ndarray:
    """Boolean mask of the rows kept when training with ``fraction`` of the labels.

    Sampling is by patient (both eyes stay together), stratified by ``strata`` (one
    key per row; default: no stratification) and *nested*: for one seed the patients
    kept at 10% are a subset of those kept at 50%, which are a subset of 100%.
    At least one patient per stratum is kept whenever ``fraction > 0``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction == 1 or len(df) == 0:
        return np.ones(len(df), dtype=bool)
    keys = patient_key(df)
    strata = pd.Series("all", index=df.index) if strata is None else strata.astype(str)
    return keys.isin(_stratified_patients(keys, strata, fraction, seed)).to_numpy()


def assign_roles(df: pd.DataFrame, task: dict, spec: SplitSpec) -> pd.DataFrame:
    """Add ``fold<k>`` role columns (and ``exclude_reason``) to a task's image table.

    ``df`` holds development and external images (column ``dataset``), labels, and
    ``qc_status``. External datasets (``task['external']``) are ``external`` in every
    fold; images failing QC or without a label are ``excluded`` with a reason.
    """
    df = df.copy()
    external = set(task.get("external", []))
    label_cols = list(TaskSpec.from_dict(task).columns)
    reason = pd.Series("", index=df.index, dtype=object)
    if "qc_status" in df:
        bad_qc = df["qc_status"].fillna("missing").astype(str) != "ok"
        reason[bad_qc] = "qc:" + df.loc[bad_qc, "qc_status"].fillna("missing").astype(str)
    unlabelled = df[label_cols].isna().any(axis=1) & (reason == "")
    reason[unlabelled] = "label missing"
    if "exclude_reason" in df:
        pre = df["exclude_reason"].fillna("").astype(str)
        reason[(pre != "") & (reason == "")] = pre
    df["exclude_reason"] = reason
    is_ext = df["dataset"].isin(external)
    dev = (~is_ext) & (reason == "")
    dev_df = df[dev]
    fold_cols = [f"fold{k}" for k in range(spec.n_folds)]
    for c in fold_cols:
        df[c] = "excluded"
        df.loc[is_ext & (reason == ""), c] = "external"
    if task.get("datasets", None) == []:
        return df  # an external-only table: every usable image is 'external'
    if dev_df.empty:
        raise ValueError(f"task {task.get('name', '?')!r} has no usable development images")

    keys = patient_key(dev_df)
    strata = stratum(dev_df, task)
    if spec.strategy == "kfold":
        fold = grouped_kfold(dev_df, task, spec.folds, spec.seed)
        for k, c in enumerate(fold_cols):
            role = np.where(fold == k, "test", np.where(fold == (k + 1) % spec.folds, "val", "train"))
            df.loc[dev_df.index, c] = role
    elif spec.strategy == "official":
        split = dev_df.get("split", pd.Series("", index=dev_df.index)).fillna("").astype(str).str.lower()
        bad = ~split.isin(["train", "val", "test"])
        if bad.any():
            rows = dev_df[bad]
            raise ValueError(
                f"strategy 'official' needs a split of train/val/test for every image; "
                f"{int(bad.sum())} rows have none, e.g. {rows['dataset'].iloc[0]}/{rows['image_id'].iloc[0]} "
                f"(split={split[bad].iloc[0]!r}). Use strategy 'kfold' or 'holdout' for this task."
            )
        role = split.copy()
        if not (split == "val").any():
            train = split == "train"
            val_keys = _stratified_patients(keys[train], strata[train], spec.val_fraction, spec.seed)
            role[train & keys.isin(val_keys)] = "val"
        df.loc[dev_df.index, fold_cols[0]] = role.to_numpy()
    elif spec.strategy == "holdout":
        test_keys = _stratified_patients(keys, strata, spec.test_fraction, spec.seed)
        rest = ~keys.isin(test_keys)
        val_keys = _stratified_patients(
            keys[rest], strata[rest], spec.val_fraction / (1 - spec.test_fraction), spec.seed + 1
        )
        role = np.where(keys.isin(test_keys), "test", np.where(keys.isin(val_keys), "val", "train"))
        df.loc[dev_df.index, fold_cols[0]] = role
    else:
        raise ValueError(f"unknown split strategy {spec.strategy!r}; use kfold, official or holdout")
    check_leakage(df, fold_cols)
    return df


def check_leakage(df: pd.DataFrame, fold_cols: list[str] | None = None) -> None:
    """Raise LeakageError naming the patients (and images) that cross train/val/test
    in any fold, or an image id listed twice in one dataset."""
    fold_cols = fold_cols or [c for c in df.columns if c.startswith("fold") and c[4:].isdigit()]
    dup = df.duplicated(subset=["dataset", "image_id"], keep=False)
    if dup.any():
        ids = sorted(set(df.loc[dup, "dataset"] + "/" + df.loc[dup, "image_id"].astype(str)))
        raise LeakageError(f"image ids listed more than once: {', '.join(ids[:10])}")
    keys = patient_key(df)
    for c in fold_cols:
        roles = df[c].where(df[c].isin(["train", "val", "test"]))
        per_patient = roles.groupby(keys).nunique()
        leaked = per_patient[per_patient > 1]
        if len(leaked):
            detail = []
            for key in leaked.index[:10]:
                rows = df[(keys == key) & roles.notna()]
                detail.append(f"{key} ({', '.join(f'{i}:{r}' for i, r in zip(rows['image_id'], rows[c]))})")
            raise LeakageError(
                f"{len(leaked)} patient(s) appear in more than one of train/val/test in {c}: " + "; ".join(detail)
            )
