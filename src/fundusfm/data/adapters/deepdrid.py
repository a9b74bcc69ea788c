"""DeepDRiD regular fundus images: per-eye DR columns and Windows image paths."""

from __future__ import annotations

import re

from fundusfm.data.adapters.base import Adapter, Context, int_or_raw, read_table, require_columns, rows

MAPPING = {**{f"<eye>_eye_DR_Level={k}": {"dr_grade": k} for k in range(5)},
           "<eye>_eye_DR_Level=5": {"dr_grade": None, "quality": "reject", "note": "assumed: 5 = ungradable"}}


def resolve_windows_path(ctx: Context, raw: str) -> str | None:
    """``\\regular-fundus-training\\Images\\1\\1_l1.jpg`` (or ``E:\\...``) -> an existing path under the root.

    The CSV paths are relative to wherever the authors unpacked the data, so the longest
    suffix of the path that exists under the root wins. Paths with ``..`` are returned as
    given so validation reports them as escaping the root.
    """
    parts = [p for p in re.split(r"[\\/]+", raw.strip()) if p and not re.fullmatch(r"[A-Za-z]:", p)]
    if ".." in parts:
        return "/".join(parts)
    for k in range(len(parts)):
        cand = "/".join(parts[k:])
        if (ctx.root / cand).is_file():
            return cand
    return None


def read(ctx: Context):
    records = []
    for split, key, pattern in (("train", "labels_file", r"regular-fundus-training\.csv$"),
                                ("val", "val_labels_file", r"regular-fundus-validation\.csv$")):
        path = ctx.label_file(key, pattern, f"DeepDRiD {split} CSV", required=split == "train")
        if path is None:
            continue
        df = read_table(path, ctx.name)
        require_columns(df, ["patient_id", "image_id", "image_path", "left_eye_DR_Level", "right_eye_DR_Level"],
                        path, ctx.name)
        for r in df.to_dict("records"):
            iid = r["image_id"]
            m = re.search(r"_([lr])\d*$", iid, re.I)
            if m:
                eye = m[1].upper()
            else:  # fall back on which per-eye column is filled
                eye = "L" if r["left_eye_DR_Level"] and not r["right_eye_DR_Level"] else (
                    "R" if r["right_eye_DR_Level"] and not r["left_eye_DR_Level"] else "U")
            col = {"L": "left_eye_DR_Level", "R": "right_eye_DR_Level"}.get(eye)
            level = int_or_raw(r[col]) if col else None
            if col is None:
                ctx.report.error(path, r["_row"], "image_id", iid, "cannot tell the eye (expected '<patient>_l1' / '_r2')")
            quality = None
            if level == 5:
                level, quality = None, "reject"
            rel = resolve_windows_path(ctx, r["image_path"])
            if rel is None:
                rel = ctx.locate(iid, split if split != "val" else "valid", "/".join(
                    p for p in re.split(r"[\\/]+", r["image_path"]) if p and not p.endswith(":")), path, r["_row"])
            records.append({
                "image_id": iid, "path": rel, "patient_id": r["patient_id"], "eye": eye, "split": split,
                "dr_grade": level, "quality": quality,
                "source_label": f"{col}={r[col]}" if col else "", "_file": r["_file"], "_row": r["_row"],
            })
    df = rows(records, {"dr_grade": "left_eye_DR_Level/right_eye_DR_Level"})
    if "quality" in df and df["quality"].isna().all():
        df = df.drop(columns="quality")
    return df


ADAPTER = Adapter(
    name="deepdrid",
    read=read,
    summary="DeepDRiD regular fundus: per-eye DR grade, patient ids, official train/val",
    layout="`regular_fundus_images/regular-fundus-training/regular-fundus-training.csv` and "
           "`regular-fundus-validation/regular-fundus-validation.csv` (`patient_id`, `image_id` like `1_l1`, "
           "`image_path` with backslashes such as `\\regular_fundus_images\\regular-fundus-training\\Images\\1\\1_l1.jpg`, "
           "`left_eye_DR_Level`, `right_eye_DR_Level`, `patient_DR_Level`). The path is resolved by the longest suffix "
           "that exists under the root (drive letters dropped), else by image name. Eye from `_l`/`_r` in `image_id` "
           "(else from which eye column is filled); the grade is that eye's column. Assumed: level 5 = ungradable "
           "(`quality=reject`, grade unknown).",
    mapping=MAPPING,
    labelled_dirs=r"(^|/)Images/",
)
