"""RFMiD (Retinal Fundus Multi-disease Image Dataset): Disease_Risk + 45 disease columns."""

from __future__ import annotations

from fundusfm.data.adapters.base import Adapter, Context, Opt, find_column, int_or_raw, read_table, require_columns, rows

DISEASES = ["DR", "ARMD", "MH", "DN", "MYA", "BRVO", "TSLN", "ERM", "LS", "MS", "CSR", "ODC", "CRVO", "TV", "AH",
            "ODP", "ODE", "ST", "AION", "PT", "RT", "RS", "CRS", "EDN", "RPEC", "MHL", "RP", "CWS", "CB", "ODPM",
            "PRH", "MNF", "HR", "CRAO", "TD", "CME", "PTCR", "CF", "VH", "MCA", "VS", "BRAO", "PLQ", "HPED", "CL"]
# The 45 disease columns of the real label CSVs, in file order (header of RFMiD_Training_Labels.csv as
# committed in github.com/MakMohanK/retinal-diseases; names per github.com/pth1993/Ophthalmology-Data RFMiD.md).
# HR is *Hemorrhagic* Retinopathy, not hypertensive retinopathy, and CRAO (central retinal artery
# occlusion) is spelt with the O: both feed `other`.
# RFMiD column -> harmonised column; every other disease column feeds `other`
DIRECT = {"ARMD": "amd", "MYA": "myopia", "BRVO": "brvo", "CRVO": "crvo"}
MAPPING = {
    "Disease_Risk=0/1": {"abnormal": "0/1"},
    "DR=0": {"dr_grade": 0}, "DR=1": {"dr_grade": None, "note": "DR present, grade not given"},
    **{f"{k}=0/1": {v: "0/1"} for k, v in DIRECT.items()},
    "BRVO or CRVO": {"rvo": "1 if either is 1, 0 if both 0"},
    "any of " + " ".join(d for d in DISEASES if d not in DIRECT and d != "DR"): {"other": "1 if any is 1, 0 if all 0"},
}
SPLITS = [("train", "labels_file", r"Training_Labels\.csv$", r"(^|/)Training$|Training_Set|Training"),
          ("val", "val_labels_file", r"Validation_Labels\.csv$", r"(^|/)Validation$|Evaluation|Validation"),
          ("test", "test_labels_file", r"Test(ing)?_Labels\.csv$", r"(^|/)Test$|Test_Set|Test")]


def read(ctx: Context):
    """Training / Validation / Test CSVs; ids are reused across sets, so image_id is ``<split>-<ID>``."""
    records = []
    for split, key, pattern, hint in SPLITS:
        path = ctx.label_file(key, pattern, f"RFMiD {split} labels CSV", required=split == "train")
        if path is None:
            continue
        df = read_table(path, ctx.name)
        id_col = find_column(df, "ID")
        require_columns(df, [id_col or "ID", "Disease_Risk"] + DISEASES, path, ctx.name)
        for r in df.to_dict("records"):
            v = {d: int_or_raw(r[d]) for d in DISEASES + ["Disease_Risk"]}
            for d, x in v.items():
                if x not in (0, 1):
                    ctx.report.error(path, r["_row"], d, r[d], "RFMiD disease columns must be 0 or 1")
            other_cols = [d for d in DISEASES if d not in DIRECT and d != "DR"]
            others = [v[d] for d in other_cols]
            rid = r[id_col].split(".")[0]
            positive = [d for d in DISEASES if v[d] == 1]
            records.append({
                "image_id": f"{split}-{rid}",
                "path": ctx.locate(rid, hint, f"{split}/{rid}.png", path, r["_row"]),
                "patient_id": f"{split}-{rid}", "eye": "U", "split": split,
                "abnormal": v["Disease_Risk"],
                "dr_grade": 0 if v["DR"] == 0 else None,
                **{h: v[d] for d, h in DIRECT.items()},
                "rvo": 1 if 1 in (v["BRVO"], v["CRVO"]) else (0 if (v["BRVO"], v["CRVO"]) == (0, 0) else None),
                "other": 1 if 1 in others else (0 if all(x == 0 for x in others) else None),
                "source_label": ";".join(positive) if positive else ("Disease_Risk=1" if v["Disease_Risk"] == 1 else "normal"),
                "_file": r["_file"], "_row": r["_row"],
            })
    return rows(records, {"abnormal": "Disease_Risk", "dr_grade": "DR", **{h: d for d, h in DIRECT.items()}})


ADAPTER = Adapter(
    name="rfmid",
    read=read,
    summary="RFMiD: Disease_Risk (abnormal) + 45 diseases, official train/val/test",
    layout="`Training_Set/.../RFMiD_Training_Labels.csv` + `Training/<ID>.png`, "
           "`Evaluation_Set/.../RFMiD_Validation_Labels.csv` + `Validation/<ID>.png`, "
           "`Test_Set/.../RFMiD_Testing_Labels.csv` + `Test/<ID>.png`; columns `ID`, `Disease_Risk` and the 45 "
           "disease columns (`HR` is haemorrhagic retinopathy, `CRAO` central retinal artery occlusion: both feed `other`). IDs restart at 1 in each set, so `image_id` is `train-1`, `val-1`, `test-1`; images "
           "are looked up in a folder named like the set. `DR` has no grade: DR=0 gives `dr_grade` 0, DR=1 leaves the "
           "grade unknown (abnormal stays 1 through Disease_Risk). No patient ids.",
    mapping=MAPPING,
    exhaustive=True,
    labelled_dirs=r"(^|/)(Training|Validation|Test)/",
    options={"labels_file": Opt("path", "the training labels CSV (default: the one `*Training_Labels.csv` under the root)"),
             "val_labels_file": Opt("path", "the validation labels CSV (default: `*Validation_Labels.csv`)"),
             "test_labels_file": Opt("path", "the test labels CSV (default: `*Testing_Labels.csv`)")},
)
