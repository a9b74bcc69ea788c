"""APTOS 2019 Blindness Detection (Kaggle): ``train.csv`` (id_code, diagnosis) + ``train_images/<id_code>.png``."""

from __future__ import annotations

from fundusfm.data.adapters.base import Adapter, Context, Opt, int_or_raw, read_table, require_columns, rows

DR_GRADES = {0: "No DR", 1: "Mild", 2: "Moderate", 3: "Severe", 4: "Proliferative DR"}
MAPPING = {f"diagnosis={k} ({v})": {"dr_grade": k} for k, v in DR_GRADES.items()}


def read(ctx: Context):
    """One row per ``train.csv`` line; ``test.csv`` (no labels) only with ``include_unlabelled: true``."""
    records = []
    sources = [("train", ctx.label_file("labels_file", r"(^|/)train\.csv$", "APTOS train.csv"))]
    if ctx.option("include_unlabelled", False):
        test = ctx.label_file("test_file", r"(^|/)test\.csv$", "APTOS test.csv", required=False)
        if test is not None:
            sources.append(("test", test))
    for split, path in sources:
        df = read_table(path, ctx.name)
        require_columns(df, ["id_code"] + (["diagnosis"] if split == "train" else []), path, ctx.name)
        for r in df.to_dict("records"):
            iid = r["id_code"]
            grade = int_or_raw(r.get("diagnosis", ""))
            records.append({
                "image_id": iid,
                "path": ctx.locate(iid, rf"{split}_images", f"{split}_images/{iid}.png", path, r["_row"]),
                "patient_id": iid, "eye": "U", "split": split, "dr_grade": grade,
                "source_label": "" if grade is None else f"diagnosis={r.get('diagnosis')}",
                "_file": r["_file"], "_row": r["_row"],
            })
    return rows(records, {"dr_grade": "diagnosis"})


ADAPTER = Adapter(
    name="aptos2019",
    read=read,
    summary="APTOS 2019 Blindness Detection, DR grade 0-4, no patient ids",
    layout="Kaggle competition aptos2019-blindness-detection as downloaded: "
           "`train.csv` (`id_code`, `diagnosis`), `train_images/<id_code>.png`; optional `test.csv` + "
           "`test_images/` (no labels, read only with `include_unlabelled: true`, split `test`).",
    mapping=MAPPING,
    labelled_dirs=r"(^|/)train_images/",
    options={"labels_file": Opt("path", "the labels CSV (default: `train.csv` under the root)"),
             "include_unlabelled": Opt("bool", "also list test.csv images (no labels), default false"),
             "test_file": Opt("path", "the unlabelled test list (default: `test.csv`)")},
)
