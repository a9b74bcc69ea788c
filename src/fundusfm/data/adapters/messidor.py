"""Messidor-2 with the adjudicated grades of Krause et al. (``messidor_data.csv``)."""

from __future__ import annotations

from fundusfm.data.adapters.base import Adapter, Context, int_or_raw, read_table, require_columns, rows

MAPPING = {**{f"adjudicated_dr_grade={k}": {"dr_grade": k} for k in range(5)},
           "adjudicated_dme=0": {"dme": 0}, "adjudicated_dme=1": {"dme": 1},
           "adjudicated_gradable=0": {"quality": "reject", "dr_grade": None, "dme": None},
           "adjudicated_gradable=1": {}}


def _pairs(ctx: Context) -> dict[str, str]:
    """image stem -> patient id from the optional pairs file (one exam = two images per row)."""
    path = ctx.label_file("pairs_file", r"(^|/)messidor-2\.(csv|xlsx?)$", "Messidor-2 pairs file", required=False)
    if path is None:
        return {}
    df = read_table(path, ctx.name)
    cols = [c for c in df.columns if not c.startswith("_")]
    img_cols = [c for c in cols if "image" in c.lower() or "left" in c.lower() or "right" in c.lower()] or cols[:2]
    out = {}
    for i, r in enumerate(df.to_dict("records")):
        stems = [str(r[c]).rsplit(".", 1)[0] for c in img_cols if r.get(c)]
        patient = f"exam{i + 1:04d}"
        for s in stems:
            out[s.lower()] = patient
    return out


def read(ctx: Context):
    """Every row of messidor_data.csv; ungradable rows keep empty grades and ``quality=reject``."""
    path = ctx.label_file("labels_file", r"(^|/)messidor_data\.csv$", "messidor_data.csv")
    df = read_table(path, ctx.name)
    require_columns(df, ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"], path, ctx.name)
    pairs = _pairs(ctx)
    if not pairs:
        ctx.report.warnings.append("no Messidor-2 pairs file: patient_id = image (the two eyes of an exam are not grouped)")
    records = []
    for r in df.to_dict("records"):
        name = r["image_id"]
        stem = name.rsplit(".", 1)[0] if "." in name else name
        gradable = int_or_raw(r["adjudicated_gradable"])
        if gradable not in (0, 1):
            ctx.report.error(path, r["_row"], "adjudicated_gradable", r["adjudicated_gradable"], "must be 0 or 1")
        ok = gradable == 1
        records.append({
            "image_id": stem,
            # the CSV says IMG0001.jpg where the file is IMG0001.JPG: lookup ignores extension case
            "path": ctx.locate(name, None, name, path, r["_row"]),
            "patient_id": pairs.get(stem.lower(), stem), "eye": "U", "split": "",
            "dr_grade": int_or_raw(r["adjudicated_dr_grade"]) if ok else None,
            "dme": int_or_raw(r["adjudicated_dme"]) if ok else None,
            "quality": None if ok else "reject",
            "source_label": f"dr={r['adjudicated_dr_grade']}; dme={r['adjudicated_dme']}; gradable={r['adjudicated_gradable']}",
            "_file": r["_file"], "_row": r["_row"],
        })
    return rows(records, {"dr_grade": "adjudicated_dr_grade", "dme": "adjudicated_dme", "quality": "adjudicated_gradable"})


ADAPTER = Adapter(
    name="messidor2",
    read=read,
    summary="Messidor-2 with adjudicated DR grade 0-4 and DME (Krause et al. 2018)",
    layout="`messidor_data.csv` (`image_id` with extension, `adjudicated_dr_grade`, `adjudicated_dme`, "
           "`adjudicated_gradable`) and the images anywhere under the root (`IMAGES/`, `preprocess/`...). The CSV "
           "writes `IMG0001.jpg` for files named `IMG0001.JPG`: images are matched by name ignoring extension case. "
           "Ungradable rows (4 in the real file) stay in the manifest with empty grades and `quality=reject`. "
           "Optional pairs file `messidor-2.csv`/`.xls` (two image columns per exam) gives patient ids; without it "
           "patient = image (reported as a warning).",
    mapping=MAPPING,
    labelled_dirs=r".",  # every image under the root should be in messidor_data.csv
)
