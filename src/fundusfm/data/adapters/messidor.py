"""Messidor-2 with the adjudicated grades of Krause et al. (``messidor_data.csv``), as ADCIS and
Google Brain distribute them or as the widely used Kaggle re-packaging ships them."""

from __future__ import annotations

from pathlib import Path

from fundusfm.data.adapters.base import Adapter, Context, Opt, find_column, int_or_raw, read_table, require_columns, rows

MAPPING = {**{f"adjudicated_dr_grade={k}": {"dr_grade": k} for k in range(5)},
           "adjudicated_dme=0": {"dme": 0}, "adjudicated_dme=1": {"dme": 1},
           "adjudicated_gradable=0": {"quality": "reject", "dr_grade": None, "dme": None},
           "adjudicated_gradable=1": {}}
# column names: Google Brain's messidor_data.csv / the Kaggle "messidor2preprocess" copy
ID_COLUMNS = ("image_id", "id_code")
DR_COLUMNS = ("adjudicated_dr_grade", "diagnosis")


def _stem(name: str) -> str:
    name = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def _pairs(ctx: Context) -> dict[str, tuple[str, str]]:
    """image stem -> (patient id, eye) from the exam-pairs file (one exam = one row, left and right).

    ADCIS's ``messidor-2.csv`` is ``;``-separated with the header ``left;right `` (trailing
    space); read_table detects the separator and strips the header.
    """
    path = ctx.label_file("pairs_file", r"(^|/)messidor-2\.(csv|xlsx?)$", "Messidor-2 pairs file", required=False)
    if path is None:
        return {}
    df = read_table(path, ctx.name)
    left, right = find_column(df, "left"), find_column(df, "right")
    cols = [c for c in df.columns if not c.startswith("_")]
    if left is None or right is None:
        if len(cols) < 2:
            ctx.report.error(path, 1, "left/right", ",".join(cols),
                             "the pairs file needs two image columns (`left;right`); is it split on the right separator?")
            return {}
        left, right = cols[:2]
    out = {}
    for i, r in enumerate(df.to_dict("records")):
        patient = f"exam{i + 1:04d}"
        for col, eye in ((left, "L"), (right, "R")):
            if r.get(col):
                out[_stem(r[col]).lower()] = (patient, eye)
    return out


def read(ctx: Context):
    """Every row of messidor_data.csv; ungradable rows keep empty grades and ``quality=reject``."""
    path = ctx.label_file("labels_file", r"(^|/)messidor_data\.csv$", "messidor_data.csv")
    df = read_table(path, ctx.name)
    id_col, dr_col = find_column(df, *ID_COLUMNS), find_column(df, *DR_COLUMNS)
    require_columns(df, [id_col or "image_id", dr_col or "adjudicated_dr_grade", "adjudicated_dme",
                         "adjudicated_gradable"], path, ctx.name)
    pairs = _pairs(ctx)
    if not pairs:
        ctx.report.warnings.append("no Messidor-2 pairs file (messidor-2.csv): patient_id = image, the two eyes of an "
                                   "exam are not grouped")
    records = []
    for r in df.to_dict("records"):
        name = r[id_col]
        stem = _stem(name)
        gradable = int_or_raw(r["adjudicated_gradable"])
        if gradable not in (0, 1):
            ctx.report.error(path, r["_row"], "adjudicated_gradable", r["adjudicated_gradable"], "must be 0 or 1")
        ok = gradable == 1
        patient, eye = pairs.get(stem.lower(), (stem, "U"))
        records.append({
            "image_id": stem,
            # found by name anywhere under the root (IMAGES/, messidor-2/messidor-2/preprocess/...),
            # ignoring extension case
            "path": ctx.locate(name, None, name, path, r["_row"]),
            "patient_id": patient, "eye": eye, "split": "",
            "dr_grade": int_or_raw(r[dr_col]) if ok else None,
            "dme": int_or_raw(r["adjudicated_dme"]) if ok else None,
            "quality": None if ok else "reject",
            "source_label": f"dr={r[dr_col]}; dme={r['adjudicated_dme']}; gradable={r['adjudicated_gradable']}",
            "_file": r["_file"], "_row": r["_row"],
        })
    return rows(records, {"dr_grade": dr_col, "dme": "adjudicated_dme", "quality": "adjudicated_gradable"})


ADAPTER = Adapter(
    name="messidor2",
    read=read,
    summary="Messidor-2 with adjudicated DR grade 0-4 and DME (Krause et al. 2018), exams grouped by patient",
    layout="Labels: `messidor_data.csv`, either Google Brain's (Kaggle google-brain/messidor2-dr-grades: `image_id` "
           "with extension, `adjudicated_dr_grade`, `adjudicated_dme`, `adjudicated_gradable`) or the Kaggle "
           "re-packaging mariaherrerot/messidor2preprocess (`id_code`, `diagnosis`, `adjudicated_dme`, "
           "`adjudicated_gradable`, images under `messidor-2/messidor-2/preprocess/`). Images are found by name anywhere "
           "under the root (ADCIS `IMAGES/`, or `preprocess/`), ignoring extension case: Messidor-Original names "
           "`20051020_43808_0100_PP.png`, Brest extension names `IM000012.JPG`-style. Ungradable rows stay in the "
           "manifest with empty grades and `quality=reject`. Patients: ADCIS's exam list `messidor-2.csv` "
           "(`;`-separated, header `left;right `, one exam per row) gives both images of an exam one patient id "
           "(`exam0001`...) and the eye; without it patient = image (reported as a warning).",
    mapping=MAPPING,
    labelled_dirs=r".",  # every image under the root should be in messidor_data.csv
    options={"labels_file": Opt("path", "the grades CSV (default: `messidor_data.csv` under the root)"),
             "pairs_file": Opt("path", "the exam list pairing left and right images (default: `messidor-2.csv`)")},
)
