"""DeepDRiD regular fundus images: per-eye DR columns and Windows image paths."""

from __future__ import annotations

import re

from fundusfm.data.adapters.base import Adapter, Context, Opt, int_or_raw, read_table, require_columns, rows

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
    for split, key, folder in (("train", "labels_file", "regular-fundus-training"),
                               ("val", "val_labels_file", "regular-fundus-validation")):
        path = ctx.label_file(key, rf"{folder}\.csv$", f"DeepDRiD {split} CSV", required=split == "train")
        if path is None:
            continue
        df = read_table(path, ctx.name)
        require_columns(df, ["patient_id", "image_id", "image_path", "left_eye_DR_Level", "right_eye_DR_Level"],
                        path, ctx.name)
        # the ultra-widefield images (ultra-widefield_images/...) reuse these names (1_r1.jpg...):
        # look only in the regular-fundus folder of this split
        hint = rf"(^|/){folder}(/|$)"
        for r in df.to_dict("records"):
            iid = r["image_id"]
            m = re.search(r"_([lr])\d*$", iid, re.I)
            cols = {"L": "left_eye_DR_Level", "R": "right_eye_DR_Level"}
            filled = [e for e, c in cols.items() if r[c] != ""]
            if m:
                eye = m[1].upper()
            else:  # fall back on which per-eye column is filled
                eye = filled[0] if len(filled) == 1 else "U"
            col = cols.get(eye)
            if col is None:
                ctx.report.error(path, r["_row"], "image_id", iid, "cannot tell the eye (expected '<patient>_l1' / '_r2')")
            elif r[col] == "" and len(filled) == 1:
                # a few real rows (56_r3, 56_l3) hold the grade in the other eye's column: the row's only
                # grade is this image's grade; the name gives the eye
                other = cols[filled[0]]
                ctx.report.warnings.append(f"{path} row {r['_row']}: {iid} has its grade in {other!r} "
                                           f"(the other eye's column); read as this image's grade")
                col = other
            level = int_or_raw(r[col]) if col else None
            quality = None
            if level == 5:
                level, quality = None, "reject"
            rel = resolve_windows_path(ctx, r["image_path"])
            escapes = rel is not None and ".." in rel.split("/")  # kept as given: validation names the escape
            if not escapes and (rel is None or not re.search(hint, rel.rsplit("/", 1)[0] if "/" in rel else "")):
                rel = ctx.locate(iid, hint, "/".join(
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
    layout="The repository github.com/deepdrdoc/DeepDRiD cloned or unpacked whole (its root holds "
           "`regular_fundus_images/` and `ultra-widefield_images/`): `regular_fundus_images/regular-fundus-training/"
           "regular-fundus-training.csv` and `regular-fundus-validation/regular-fundus-validation.csv` (`patient_id`, "
           "`image_id` like `1_l1`, `image_path` like `\\regular-fundus-training\\1\\1_l1.jpg`, `Overall quality`, "
           "`left_eye_DR_Level`, `right_eye_DR_Level`, `patient_DR_Level`, ...), images "
           "`regular-fundus-training/Images/1/1_l1.jpg`. The ultra-widefield images reuse the same names, so images are "
           "looked up only under the split's `regular-fundus-*` folder. Eye from `_l`/`_r` in `image_id` (else from "
           "which eye column is filled); the grade is that eye's column, or, in the few rows that hold it in the other "
           "eye's column (`56_r3`, `56_l3`), the only grade of the row (reported as a warning). Assumed: level 5 = "
           "ungradable (`quality=reject`, grade unknown). Patient = `patient_id`.",
    mapping=MAPPING,
    labelled_dirs=r"(^|/)regular-fundus-(training|validation)/Images/",
    options={"labels_file": Opt("path", "the training CSV (default: `regular-fundus-training.csv` under the root)"),
             "val_labels_file": Opt("path", "the validation CSV (default: `regular-fundus-validation.csv`)")},
)
