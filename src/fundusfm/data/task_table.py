"""A task's image table (``fundusfm split``): manifests joined with QC tables, with
split-group (patient) grouped, leak-checked fold roles (contract in docs/architecture.md).

Near-duplicates are handled here, with the functions that write the study's overlap
report (:mod:`fundusfm.data.overlap`): development images within ``near_duplicate_bits``
of each other put their patients into one split group (columns ``split_group`` and
``group_source`` record how each group was formed), and an external image within that
distance of a development image (``dedup_against`` gives the development datasets) is
excluded from the external set with the matching image named.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fundusfm.data.overlap import NEAR_DUPLICATE_BITS, hash_images, hash_qc_table, task_overlaps
from fundusfm.data.splits import SplitSpec, assign_roles, merge_groups
from fundusfm.task import TaskSpec

log = logging.getLogger(__name__)

# Labels a task may ask for that are derived from another manifest column.
DERIVED = {"dr": ("dr_grade", lambda s: (s >= 1).astype("Int64"))}


def parse_pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"fundusfm split: {flag} expects DATASET=PATH, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _usable_hashes(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["qc_status"] == "ok") & (df["image"] != "")]
    names = (ok["dataset"] + "/" + ok["image_id"]).tolist()
    return pd.DataFrame({"dataset": ok["dataset"].to_numpy(), "image_id": ok["image_id"].to_numpy(),
                         "hash": hash_images(ok["image"].tolist(), names)})


def near_duplicate_handling(df: pd.DataFrame, task: dict, bits: int | None,
                            dedup_against: dict | None = None) -> pd.DataFrame:
    """Split groups from near-duplicates within the development data, and exclusion of
    external images that duplicate a development image (``dedup_against``: development
    dataset -> its QC table, for an external-only table). ``bits=None``: patient ids only."""
    df = df.copy()
    dev = [d for d in task["datasets"]]
    ext = list(task.get("external", []))
    if bits is None:
        df = df.join(merge_groups(df, []))
        return df
    hashes = _usable_hashes(df)
    if dedup_against:
        hashes = pd.concat([hashes] + [hash_qc_table(d, q) for d, q in dedup_against.items() if d not in dev],
                           ignore_index=True)
        dev = dev + [d for d in dedup_against if d not in dev]
    pairs = task_overlaps(hashes, dev, ext, bits)
    pos = {k: i for i, k in enumerate(zip(df["dataset"], df["image_id"]))}
    within = pairs[pairs["kind"] == "within_development"]
    # pairs of this table's rows only (an external table sees the development data only
    # through --dedup-against: its internal pairs are the development table's business)
    edges = [(pos[(a, ia)], pos[(b, ib)]) for a, ia, b, ib in
             zip(within["dataset_a"], within["image_id_a"], within["dataset_b"], within["image_id_b"])
             if (a, ia) in pos and (b, ib) in pos]
    df = df.join(merge_groups(df, edges))
    cross = pairs[pairs["kind"] == "development_external"]
    for r in cross.itertuples():
        i = df.index[pos[(r.dataset_b, r.image_id_b)]]
        if df.at[i, "exclude_reason"] == "":
            df.at[i, "exclude_reason"] = (f"near-duplicate of development image {r.dataset_a}/{r.image_id_a} "
                                          f"(distance {r.distance})")
    if len(within) or len(cross):
        log.info("%s: %d near-duplicate development pair(s) -> split groups merged; %d external image(s) "
                 "duplicating a development image excluded", task.get("name"), len(within),
                 cross["image_id_b"].nunique() if len(cross) else 0)
    return df


def build_task_table(task: dict, manifests: dict, qcs: dict, preprocessed: dict, exclude: pd.DataFrame | None = None,
                     near_duplicate_bits: int | None = NEAR_DUPLICATE_BITS,
                     dedup_against: dict | None = None) -> pd.DataFrame:
    """Join manifests with QC tables, form split groups (patient ids merged through
    near-duplicates), and assign fold roles (see docs/architecture.md)."""
    frames = []
    for ds in list(task["datasets"]) + list(task.get("external", [])):
        if ds not in manifests:
            raise SystemExit(f"fundusfm split: no manifest given for dataset {ds!r}")
        man = pd.read_csv(manifests[ds], dtype={"image_id": str, "patient_id": str})
        qc = pd.read_csv(qcs[ds], dtype={"image_id": str}, keep_default_na=False)
        missing = set(man["image_id"]) - set(qc["image_id"])
        if missing:
            raise SystemExit(
                f"fundusfm split: {qcs[ds]} has no QC row for {len(missing)} image(s) of {manifests[ds]}, "
                f"e.g. {sorted(missing)[:5]}; re-run preprocessing"
            )
        qc = qc.set_index("image_id")
        man["qc_status"] = man["image_id"].map(qc["status"])
        rel = man["image_id"].map(qc["processed_path"]).fillna("")
        man["image"] = [str(Path(preprocessed[ds]) / r) if r else "" for r in rel]
        # the processed image's content digest, checked when training reads it (older QC tables: none)
        man["image_xxh3"] = (man["image_id"].map(qc["processed_xxh3"]).fillna("") if "processed_xxh3" in qc.columns
                             else "")
        man["dataset"] = ds
        for col, (src, fn) in DERIVED.items():
            if col in TaskSpec.from_dict(task).columns and col not in man and src in man:
                man[col] = fn(pd.to_numeric(man[src], errors="coerce").astype("Int64"))
        for col in TaskSpec.from_dict(task).columns:
            if col not in man:
                raise SystemExit(
                    f"fundusfm split: task {task['name']!r} needs label column {col!r} but manifest "
                    f"{manifests[ds]} has only {[c for c in man.columns if c not in ('image_id', 'path')]}"
                )
        frames.append(man)
    df = pd.concat(frames, ignore_index=True)
    df["exclude_reason"] = ""
    if exclude is not None and len(exclude):
        key = df["dataset"] + "/" + df["image_id"]
        ex = exclude["dataset"].astype(str) + "/" + exclude["image_id"].astype(str)
        reasons = dict(zip(ex, exclude.get("reason", pd.Series("overlap", index=exclude.index)).astype(str)))
        hit = key.isin(reasons)
        df.loc[hit, "exclude_reason"] = "excluded: " + key[hit].map(reasons)
    if task["type"] != "multilabel":
        values = pd.to_numeric(df[task["label"]], errors="coerce")
        bad = values.notna() & ~values.isin(range(len(task["classes"])))
        if bad.any():
            row = df[bad].iloc[0]
            raise SystemExit(
                f"fundusfm split: task {task['name']!r}: {row['dataset']}/{row['image_id']} has "
                f"{task['label']}={row[task['label']]}, outside classes 0..{len(task['classes']) - 1} {task['classes']}"
            )
    df = near_duplicate_handling(df, task, near_duplicate_bits, dedup_against)
    table = assign_roles(df, task, SplitSpec.from_dict(task.get("split")))
    keep = ["dataset", "image_id", "patient_id", "split_group", "group_source", "eye", "image", "image_xxh3", "qc_status",
            *TaskSpec.from_dict(task).columns, "exclude_reason"]
    return table[keep + [c for c in table.columns if c.startswith("fold") and c[4:].isdigit()]]
