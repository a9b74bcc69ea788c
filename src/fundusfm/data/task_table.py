"""A task's image table (``fundusfm split``): manifests joined with QC tables, with
patient-grouped, leak-checked fold roles (contract in docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fundusfm.data.splits import SplitSpec, assign_roles
from fundusfm.task import TaskSpec


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


def build_task_table(task: dict, manifests: dict, qcs: dict, preprocessed: dict, exclude: pd.DataFrame | None = None) -> pd.DataFrame:
    """Join manifests with QC tables and assign fold roles (see docs/architecture.md)."""
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
    table = assign_roles(df, task, SplitSpec.from_dict(task.get("split")))
    keep = ["dataset", "image_id", "patient_id", "eye", "image", "qc_status", *TaskSpec.from_dict(task).columns, "exclude_reason"]
    return table[keep + [c for c in table.columns if c.startswith("fold") and c[4:].isdigit()]]
