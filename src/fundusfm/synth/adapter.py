"""Turn a synthetic dataset folder (``labels.csv`` + ``images/``) into a manifest.

The manifest follows docs/architecture.md: ``image_id, path, patient_id, eye, split,
dataset`` then the harmonised label columns this dataset has (``normal, abnormal,
dr_grade, glaucoma, amd, myopia, rvo``) and ``source_label`` for audit. Non-fundus
images keep their rows with empty labels (the QC stage rejects them; nothing is dropped).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

MANIFEST_LABELS = ["normal", "abnormal", "dr_grade", "glaucoma", "amd", "myopia", "rvo"]
_REQUIRED = ["image_id", "file", "patient_id", "eye", "defect", *MANIFEST_LABELS]
_BINARY = ["normal", "abnormal", "glaucoma", "amd", "myopia", "rvo"]


def _source_label(row: pd.Series) -> str:
    if row["defect"] == "non_fundus":
        return "non_fundus"
    parts = [f"dr_grade={int(row['dr_grade'])}"] if pd.notna(row["dr_grade"]) else []
    parts += [c for c in ("glaucoma", "amd", "myopia", "rvo") if pd.notna(row[c]) and int(row[c]) == 1]
    if row["defect"] != "none":
        parts.append(f"defect={row['defect']}")
    return ";".join(parts)


def read_manifest(root: str | os.PathLike, dataset_name: str) -> pd.DataFrame:
    """Read ``root/labels.csv`` of a dataset written by :func:`fundusfm.synth.dataset.make_dataset`.

    Raises:
        FileNotFoundError: no labels.csv, or image files missing (rows named).
        ValueError: missing columns, duplicate image ids, paths escaping ``root``,
            or label values outside their vocabulary (file, row and column named).
    """
    root = Path(root)
    csv = root / "labels.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: not found; is {root} a dataset written by `fundusfm synth`?")
    df = pd.read_csv(csv, dtype={"image_id": str, "file": str, "patient_id": str, "eye": str,
                                 "defect": str}, keep_default_na=True)
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{csv}: missing column(s) {missing}")
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{csv}: duplicate image_id(s) {sorted(set(dup))[:5]}")
    root_res = root.resolve()
    absent = []
    for i, (iid, rel) in enumerate(zip(df["image_id"], df["file"])):
        line = i + 2  # header is line 1
        if not isinstance(rel, str) or not rel or os.path.isabs(rel):
            raise ValueError(f"{csv}: line {line} (image_id {iid}): column 'file' must be a relative path, got {rel!r}")
        full = (root / rel).resolve()
        if root_res not in full.parents:
            raise ValueError(f"{csv}: line {line} (image_id {iid}): path {rel!r} escapes the dataset root {root}")
        if not full.is_file():
            absent.append(f"line {line} ({iid}): {rel}")
    if absent:
        raise FileNotFoundError(f"{csv}: {len(absent)} image file(s) missing: " + "; ".join(absent[:5]))
    for col in MANIFEST_LABELS:
        allowed = {0, 1, 2, 3, 4} if col == "dr_grade" else {0, 1}
        values = pd.to_numeric(df[col], errors="coerce")
        bad = df.index[(df[col].notna() & values.isna()) | (values.notna() & ~values.isin(allowed))]
        if len(bad):
            i = bad[0]
            raise ValueError(f"{csv}: line {i + 2} (image_id {df.at[i, 'image_id']}): column {col!r} "
                             f"has {df.at[i, col]!r}, expected one of {sorted(allowed)} or empty")
        df[col] = values.astype("Int64")
    bad_eye = df.index[~df["eye"].isin(["L", "R", "U"])]
    if len(bad_eye):
        i = bad_eye[0]
        raise ValueError(f"{csv}: line {i + 2} (image_id {df.at[i, 'image_id']}): eye {df.at[i, 'eye']!r} not in L/R/U")
    out = pd.DataFrame({
        "image_id": df["image_id"],
        "path": df["file"],
        "patient_id": df["patient_id"].fillna(df["image_id"]),
        "eye": df["eye"],
        "split": "",
        "dataset": dataset_name,
    })
    for col in MANIFEST_LABELS:
        out[col] = df[col]
    out["source_label"] = df.apply(_source_label, axis=1)
    return out
