"""IDRiD sub-challenge B (disease grading): DR grade 0-4 and risk of macular edema 0-2."""

from __future__ import annotations

import re
from pathlib import Path

from fundusfm.data.adapters.base import (Adapter, Context, Opt, find_column, int_or_raw, read_table,
                                         require_columns, rows)

MAPPING = {**{f"Retinopathy grade={k}": {"dr_grade": k} for k in range(5)},
           "Risk of macular edema=0": {"dme_grade": 0, "dme": 0},
           "Risk of macular edema=1": {"dme_grade": 1, "dme": 1},
           "Risk of macular edema=2": {"dme_grade": 2, "dme": 1}}


def _grading_dir(ctx: Context, labels: Path) -> str:
    """The ``B. Disease Grading`` folder (relative to the root) that holds ``labels``.

    Unpacked whole, IDRiD puts ``A. Segmentation``, ``B. Disease Grading`` and
    ``C. Localization`` side by side, and part C reuses the grading images' names
    (``IDRiD_001.jpg``), so lookups stay inside the grading part: the folder above
    ``2. Groundtruths``.
    """
    rel = labels.relative_to(ctx.root) if labels.is_relative_to(ctx.root) else Path(labels.name)
    parts = rel.parts[:-1]
    for i in range(len(parts) - 1, -1, -1):
        if "groundtruth" in parts[i].lower():
            return "/".join(parts[:i])
    return "/".join(parts[:-1]) if len(parts) > 1 else ""


def read(ctx: Context):
    """Training and testing label CSVs; ids get a split prefix because both sets reuse ``IDRiD_001``..."""
    records = []
    sources = [("train", ctx.label_file("labels_file", r"Training[ _]Labels\.csv$", "IDRiD training labels CSV")),
               ("test", ctx.label_file("test_labels_file", r"Testing[ _]Labels\.csv$", "IDRiD testing labels CSV",
                                       required=False))]
    for split, path in sources:
        if path is None:
            continue
        base = _grading_dir(ctx, path)
        hint = ("^" + re.escape(base) + "/" if base else "^") + rf".*{split}"
        df = read_table(path, ctx.name)  # strips 'Risk of macular edema ' and drops the empty trailing columns
        name_col = find_column(df, "Image name", "Image")
        dr_col = find_column(df, "Retinopathy grade")
        dme_col = find_column(df, "Risk of macular edema", "Risk of DME")
        require_columns(df, [c or w for c, w in [(name_col, "Image name"), (dr_col, "Retinopathy grade"),
                                                  (dme_col, "Risk of macular edema")]], path, ctx.name)
        for r in df.to_dict("records"):
            name = r[name_col]
            risk = int_or_raw(r[dme_col])
            expected = f"{base + '/' if base else ''}1. Original Images/{split}/{name}.jpg"
            records.append({
                "image_id": f"{split}-{name}",
                "path": ctx.locate(name, hint, expected, path, r["_row"]),
                "patient_id": f"{split}-{name}", "eye": "U", "split": split,
                "dr_grade": int_or_raw(r[dr_col]), "dme_grade": risk,
                "dme": (1 if risk > 0 else 0) if isinstance(risk, int) else None,
                "source_label": f"Retinopathy grade={r[dr_col]}; Risk of macular edema={r[dme_col]}",
                "_file": r["_file"], "_row": r["_row"],
            })
    return rows(records, {"dr_grade": "Retinopathy grade", "dme_grade": "Risk of macular edema", "dme": "Risk of macular edema"})


ADAPTER = Adapter(
    name="idrid",
    read=read,
    summary="IDRiD disease grading (sub-challenge B): DR grade 0-4, DME risk 0-2",
    layout="`B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv` and "
           "`b. IDRiD_Disease Grading_Testing Labels.csv` (`Image name`, `Retinopathy grade`, "
           "`Risk of macular edema ` with a trailing space, then empty unnamed columns); images "
           "`1. Original Images/a. Training Set/IDRiD_001.jpg`, `b. Testing Set/...`. Training and testing "
           "reuse the names `IDRiD_001`..., so `image_id` is `train-IDRiD_001` / `test-IDRiD_001`; images are "
           "looked up inside the grading part (the folder above `2. Groundtruths`, i.e. `B. Disease Grading`) in a folder "
           "whose name contains `train` / `test`, so the whole download (parts `A. Segmentation`, `B. Disease Grading`, "
           "`C. Localization`, whose images reuse the same names) can be the root. No patient ids (patient = image).",
    mapping=MAPPING,
    labelled_dirs=r"(^|/)B\. Disease Grading/(.*/)?[^/]*(training|testing) set/|^1\. Original Images/[^/]*(training|testing) set/",
    options={"labels_file": Opt("path", "the training labels CSV (default: `*Training Labels.csv` under the root)"),
             "test_labels_file": Opt("path", "the testing labels CSV (default: `*Testing Labels.csv`)")},
)
