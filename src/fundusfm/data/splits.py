"""Patient-level, leakage-free splits of a task and nested label fractions.

Pure functions over pandas DataFrames (one row per image). A *patient key* is
``dataset/patient_id``: two datasets never share a patient unless they share ids on
purpose. The unit every split, label fraction and leak check works on is the *split
group* (column ``split_group`` when the table has one, else the patient key): patients
merged with their near-duplicate photographs (:func:`merge_groups`), so the same photo
under two ids -- or, in a dataset without patient ids, two photos of one eye -- never
lands on both sides of a split.
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


def group_key(df: pd.DataFrame) -> pd.Series:
    """The split group of each row: ``split_group`` when present, else the patient key."""
    if "split_group" in df.columns:
        return df["split_group"].astype(str)
    return patient_key(df)


def has_patient_ids(df: pd.DataFrame) -> bool:
    """Whether a dataset's manifest carries patient ids (adapters fall back to one patient
    per image, ``patient_id == image_id``, when the dataset has none)."""
    return bool(len(df)) and not (df["patient_id"].astype(str) == df["image_id"].astype(str)).all()


def merge_groups(df: pd.DataFrame, pairs: list[tuple[int, int]]) -> pd.DataFrame:
    """Split groups: patient keys joined through near-duplicate image pairs.

    ``pairs``: row positions ``(i, j)`` of near-duplicate images. Returns a frame with the
    index of ``df`` and columns ``split_group`` (the smallest patient key of the connected
    component, so the name does not depend on row order) and ``group_source``:
    ``patient_id`` (the dataset's own id), ``image`` (no patient id in the dataset: one
    image, image-level), ``near-duplicate cluster`` (several keys joined by near-duplicates;
    ``+ patient_id`` when the dataset has ids).
    """
    keys = patient_key(df).to_numpy()
    uniq, codes = np.unique(keys, return_inverse=True)
    parent = list(range(len(uniq)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in pairs:
        a, b = find(codes[i]), find(codes[j])
        if a != b:
            parent[max(a, b)] = min(a, b)  # uniq is sorted: the root is the smallest key
    roots = np.array([find(c) for c in range(len(uniq))])
    size = np.bincount(roots, minlength=len(uniq))
    row_root = roots[codes]
    with_ids = {ds: has_patient_ids(g) for ds, g in df.groupby("dataset")}
    own = np.array(["patient_id" if with_ids[d] else "image" for d in df["dataset"]], dtype=object)
    merged = size[row_root] > 1
    source = np.where(merged, np.where(own == "patient_id", "near-duplicate cluster + patient_id",
                                       "near-duplicate cluster"), own)
    return pd.DataFrame({"split_group": uniq[row_root], "group_source": source}, index=df.index)


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


NEGATIVE_STRATA = ("none", "0")


def _patient_strata(keys: pd.Series, strata: pd.Series) -> pd.Series:
    """Stratum per group: the most frequent stratum among its images other than the
    negative ones (``none``, ``0``: no finding / the first class), and a negative one only
    when all its images are negative; ties broken by name, so the result does not depend
    on row order."""
    tab = pd.DataFrame({"key": keys.to_numpy(), "s": strata.astype(str).to_numpy()})
    tab["neg"] = tab["s"].isin(NEGATIVE_STRATA)
    counts = tab.groupby(["key", "neg", "s"], sort=False).size().reset_index(name="n")
    counts = counts.sort_values(["key", "neg", "n", "s"], ascending=[True, True, False, True], kind="stable")
    return counts.drop_duplicates("key").set_index("key")["s"].sort_index()


def grouped_kfold(df: pd.DataFrame, task: dict, n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) per row; patients grouped, strata balanced.

    Raises ValueError with the counts when there are fewer patients than folds.
    """
    keys = group_key(df)
    n_patients = keys.nunique()
    if n_patients < n_folds:
        raise ValueError(f"task has {n_patients} split groups (patients), fewer than the {n_folds} folds asked for")
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


def _stratified_patients(keys: pd.Series, strata: pd.Series, fraction: float, seed: int,
                         min_per_stratum: int = 1) -> set[str]:
    """A stratified random subset of patients (split groups): about ``fraction`` of each stratum.

    One permutation per stratum, independent of ``fraction``: taking a prefix of it
    makes the subsets nested across fractions for the same seed. At least
    ``min_per_stratum`` patients per stratum are chosen (all of them in a smaller stratum).
    """
    pstrata = _patient_strata(keys, strata)
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for _, group in sorted(pstrata.groupby(pstrata), key=lambda kv: kv[0]):
        ids = np.array(sorted(group.index))
        perm = ids[rng.permutation(len(ids))]
        chosen.update(perm[: max(min_per_stratum, 1, math.ceil(fraction * len(ids) - 1e-9))].tolist())
    return chosen


def label_fraction_mask(df: pd.DataFrame, fraction: float, seed: int, strata: pd.Series | None = None,
                        min_per_stratum: int = 1) -> np.ndarray:
    """Boolean mask of the rows kept when training with ``fraction`` of the labels.

    Sampling is by split group (a patient with both eyes, merged with near-duplicates),
    stratified by ``strata`` (one key per row; default: no stratification) and *nested*:
    for one seed the patients kept at 10% are a subset of those kept at 50%, which are a
    subset of 100%. At least ``min_per_stratum`` patients per stratum are kept (the floor
    that keeps a shrunk validation set usable; 1 by default).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction == 1 or len(df) == 0:
        return np.ones(len(df), dtype=bool)
    keys = group_key(df)
    strata = pd.Series("all", index=df.index) if strata is None else strata.astype(str)
    return keys.isin(_stratified_patients(keys, strata, fraction, seed, min_per_stratum)).to_numpy()


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

    keys = group_key(dev_df)
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
        # a split group (near-duplicates under several ids) that the official split puts on
        # two sides keeps its training images; its other images are excluded, with a reason
        g = keys.to_numpy()
        crossing = pd.Series(role.to_numpy()).groupby(g).nunique()
        for grp in crossing[crossing > 1].index:
            rows = (keys == grp).to_numpy()
            sides = set(role[rows])
            keep = "train" if "train" in sides else "val"
            drop = rows & (role != keep).to_numpy()
            idx = dev_df.index[drop]
            df.loc[idx, "exclude_reason"] = f"near-duplicate of a {keep} image of split group {grp} (official split)"
            role[drop] = "excluded"
        if not (split == "val").any():
            train = role == "train"
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
    """Raise LeakageError naming the patients / split groups (and images) that cross
    train/val/test in any fold, or an image id listed twice in one dataset."""
    fold_cols = fold_cols or [c for c in df.columns if c.startswith("fold") and c[4:].isdigit()]
    dup = df.duplicated(subset=["dataset", "image_id"], keep=False)
    if dup.any():
        ids = sorted(set(df.loc[dup, "dataset"] + "/" + df.loc[dup, "image_id"].astype(str)))
        raise LeakageError(f"image ids listed more than once: {', '.join(ids[:10])}")
    keys = group_key(df)
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
                f"{len(leaked)} patient(s) / split group(s) appear in more than one of train/val/test in {c}: "
                + "; ".join(detail)
            )
