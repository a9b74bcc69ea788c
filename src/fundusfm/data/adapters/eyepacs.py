"""EyePACS / Kaggle Diabetic Retinopathy Detection (2015) and EyeQ (quality grades over EyePACS images)."""

from __future__ import annotations

import re

from fundusfm.data.adapters.base import Adapter, Context, Opt, int_or_raw, read_table, require_columns, rows

NAME_RE = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$", re.I)
MAPPING = {f"level={k}": {"dr_grade": k} for k in range(5)}
QUALITY = {"0": "good", "1": "usable", "2": "reject"}
EYEQ_MAPPING = {**{f"quality={k}": {"quality": v} for k, v in QUALITY.items()},
                **{f"DR_grade={k}": {"dr_grade": k} for k in range(5)}}


def patient_eye(image: str) -> tuple[str, str]:
    """``10_left`` -> (``10``, ``L``); names not following the pattern keep the name as patient, eye U."""
    m = NAME_RE.match(image)
    if not m:
        return image, "U"
    return m["patient"], "L" if m["eye"].lower() == "left" else "R"


def read_eyepacs(ctx: Context):
    """``trainLabels.csv`` -> split train; ``retinopathy_solution.csv`` (if present) -> split test."""
    records = []
    sources = [("train", ctx.label_file("labels_file", r"(^|/)trainLabels\.csv$", "EyePACS trainLabels.csv"))]
    test = ctx.label_file("test_labels_file", r"(^|/)retinopathy_solution\.csv$", "EyePACS retinopathy_solution.csv",
                          required=False)
    if test is not None:
        sources.append(("test", test))
    for split, path in sources:
        df = read_table(path, ctx.name)
        require_columns(df, ["image", "level"], path, ctx.name)
        for r in df.to_dict("records"):
            iid = r["image"]
            patient, eye = patient_eye(iid)
            usage = f"; Usage={r['Usage']}" if r.get("Usage") else ""
            records.append({
                "image_id": iid,
                "path": ctx.locate(iid, rf"(^|/){split}", f"{split}/{iid}.jpeg", path, r["_row"], anywhere=True),
                "patient_id": patient, "eye": eye, "split": split, "dr_grade": int_or_raw(r["level"]),
                "source_label": f"level={r['level']}{usage}", "_file": r["_file"], "_row": r["_row"],
            })
    return rows(records, {"dr_grade": "level"})


def read_eyeq(ctx: Context):
    """``Label_EyeQ_train.csv`` / ``Label_EyeQ_test.csv`` (image, quality, DR_grade); images found by name under root."""
    records = []
    sources = [("train", ctx.label_file("labels_file", r"(^|/)Label_EyeQ_train\.csv$", "EyeQ Label_EyeQ_train.csv")),
               ("test", ctx.label_file("test_labels_file", r"(^|/)Label_EyeQ_test\.csv$", "EyeQ Label_EyeQ_test.csv",
                                       required=False))]
    for split, path in sources:
        if path is None:
            continue
        df = read_table(path, ctx.name)
        require_columns(df, ["image", "quality"], path, ctx.name)
        for r in df.to_dict("records"):
            iid = re.sub(r"\.(jpe?g|png|tiff?)$", "", r["image"], flags=re.I)
            patient, eye = patient_eye(iid)
            q = r["quality"].split(".")[0] if re.fullmatch(r"\d+(\.0+)?", r["quality"]) else r["quality"]
            quality = QUALITY.get(q)
            if quality is None and q != "":
                ctx.report.error(path, r["_row"], "quality", r["quality"], "EyeQ quality must be 0 (good), 1 (usable) or 2 (reject)")
            records.append({
                "image_id": iid,
                "path": ctx.locate(r["image"], rf"(^|/){split}", f"{split}/{r['image']}", path, r["_row"], anywhere=True),
                "patient_id": patient, "eye": eye, "split": split, "quality": quality,
                "dr_grade": int_or_raw(r.get("DR_grade", "")),
                "source_label": f"quality={r['quality']}; DR_grade={r.get('DR_grade', '')}",
                "_file": r["_file"], "_row": r["_row"],
            })
    return rows(records, {"dr_grade": "DR_grade", "quality": "quality"})


ADAPTER = Adapter(
    name="eyepacs",
    read=read_eyepacs,
    summary="EyePACS / Kaggle DR Detection 2015, DR grade 0-4, patient and eye from the file name",
    layout="`trainLabels.csv` (`image`, `level`) with `train/<image>.jpeg`; optional `retinopathy_solution.csv` "
           "(`image`, `level`, `Usage` Public/Private) with `test/<image>.jpeg` -> split `test`. "
           "`10_left` gives patient `10`, eye `L`. Images found by name (any extension case) when not in those folders.",
    mapping=MAPPING,
    labelled_dirs=r"(^|/)train/",
    options={"labels_file": Opt("path", "the training labels (default: `trainLabels.csv` under the root)"),
             "test_labels_file": Opt("path", "the test labels (default: `retinopathy_solution.csv`, optional)")},
)

EYEQ = Adapter(
    name="eyeq",
    read=read_eyeq,
    summary="EyeQ image-quality grades (Good/Usable/Reject) over EyePACS images",
    layout="`Label_EyeQ_train.csv` / `Label_EyeQ_test.csv` (unnamed index, `image`, `quality` 0/1/2, `DR_grade`); "
           "`root:` is the folder holding the EyePACS images (`train/`, `test/`, or EyeQ's own copies); the label "
           "files may live elsewhere (`labels_file:`, `test_labels_file:`). EyeQ reuses EyePACS images: run "
           "`fundusfm overlap` before combining the two.",
    mapping=EYEQ_MAPPING,
    options={"labels_file": Opt("path", "the EyeQ training grades (default: `Label_EyeQ_train.csv` under the root)"),
             "test_labels_file": Opt("path", "the EyeQ test grades (default: `Label_EyeQ_test.csv`, optional)")},
)
