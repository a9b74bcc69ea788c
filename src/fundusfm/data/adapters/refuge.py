"""REFUGE (glaucoma): training labels from the Glaucoma / Non-Glaucoma folders, validation and test from xlsx."""

from __future__ import annotations

from fundusfm.data.adapters.base import Adapter, Context, Opt, find_column, int_or_raw, read_table, require_columns, rows
from fundusfm.data.adapters.folders import folder_records

TRAIN_CLASSES = {"Glaucoma": {"glaucoma": 1}, "Non-Glaucoma": {"glaucoma": 0}}
MAPPING = {"folder Glaucoma (training)": {"glaucoma": 1}, "folder Non-Glaucoma (training)": {"glaucoma": 0},
           "xlsx label 1 (validation/test)": {"glaucoma": 1}, "xlsx label 0 (validation/test)": {"glaucoma": 0}}
# the folder part of a photograph's path, never a mask / GT folder
PHOTO_HINT = r"^(?!.*(mask|annotation|-gt|_gt|groundtruth)).*{}"


def read(ctx: Context):
    records = folder_records(ctx, TRAIN_CLASSES, split_layout=False, split="train", under=r"train")
    for split, key, pattern, hint in (("val", "val_labels_file", r"valid[^/]*/[^/]*\.xlsx$", "valid"),
                                      ("test", "test_labels_file", r"test[^/]*/[^/]*\.xlsx$", "test")):
        path = ctx.label_file(key, pattern, f"REFUGE {split} label spreadsheet", required=False)
        if path is None:
            ctx.report.warnings.append(f"no REFUGE {split} label spreadsheet found; {split} images not listed")
            continue
        df = read_table(path, ctx.name)
        name_col = find_column(df, "ImgName", "Image Name", "Image", "Filename")
        label_col = next((c for c in df.columns if "glaucoma" in c.lower() or c.lower().startswith("label")), None)
        require_columns(df, [name_col or "ImgName"], path, ctx.name)
        if label_col is None:
            # a fovea-only sheet (some releases of the validation GT): the images stay unlabelled, reported
            ctx.report.warnings.append(f"{path}: no glaucoma label column (has {[c for c in df.columns if not c.startswith('_')]}); "
                                       f"REFUGE {split} images not labelled")
            continue
        for r in df.to_dict("records"):
            name = r[name_col]
            records.append({
                "image_id": name.rsplit(".", 1)[0], "patient_id": "", "eye": "U", "split": split,
                "path": ctx.locate(name, PHOTO_HINT.format(hint), name, path, r["_row"]),
                "glaucoma": int_or_raw(r[label_col]), "source_label": f"{label_col}={r[label_col]}",
                "_file": r["_file"], "_row": r["_row"],
            })
    return rows(records, {"glaucoma": "Glaucoma Label / Label(Glaucoma=1)"})


ADAPTER = Adapter(
    name="refuge",
    read=read,
    summary="REFUGE challenge: glaucoma 0/1 with official train/val/test",
    layout="Training: `REFUGE-Training400/Training400/Glaucoma/g0001.jpg` and `Non-Glaucoma/n0001.jpg` (folders under a "
           "path containing `train`). Validation: images `REFUGE-Validation400/REFUGE-Validation400/V0001.jpg` (any "
           "depth), labels in an xlsx under a folder whose name contains `valid` (`REFUGE-Validation400-GT/"
           "Fovea_locations.xlsx`: `ImgName` and a column named like `Glaucoma Label` / `Label(Glaucoma=1)`; a sheet "
           "without one leaves the split unlabelled, with a warning). Test: `Test400/T0001.jpg`, labels in an xlsx "
           "under a `test` folder (`REFUGE-Test-GT/Glaucoma_label_and_Fovea_location.xlsx`: `ID`, `ImgName`, "
           "`Fovea_X`, `Fovea_Y`, `Label(Glaucoma=1)`). Mask / annotation folders (same stems, `.bmp`) are ignored. "
           "No patient ids.",
    mapping=MAPPING,
    options={"val_labels_file": Opt("path", "the validation label spreadsheet (default: the xlsx under a `valid*` folder)"),
             "test_labels_file": Opt("path", "the test label spreadsheet (default: the xlsx under a `test*` folder)")},
    labelled_dirs=r"^(?!.*(mask|annotation|-gt/|_gt/)).*(train|valid|test)[^/]*/",
)
