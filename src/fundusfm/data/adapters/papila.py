"""PAPILA: per-eye clinical spreadsheets (two-row header) with Diagnosis 0 healthy / 1 glaucoma / 2 suspect."""

from __future__ import annotations

import re

from fundusfm.data.adapters.base import Adapter, Context, read_table, rows
from fundusfm.data.manifest import ManifestError

DIAGNOSIS = {"0": ("healthy", {"glaucoma": 0, "glaucoma_suspect": 0}),
             "1": ("glaucoma", {"glaucoma": 1, "glaucoma_suspect": 0}),
             "2": ("suspect", {"glaucoma": None, "glaucoma_suspect": 1})}
MAPPING = {f"Diagnosis={k} ({name})": labels for k, (name, labels) in DIAGNOSIS.items()}


def _header_row(path, dataset: str) -> int:
    """Row index (0-based) holding ``ID`` and ``Diagnosis``: the sheet has a title / merged-header block above."""
    import pandas as pd

    try:
        head = pd.read_excel(path, header=None, dtype=str, nrows=8)
    except Exception as e:
        raise ManifestError(dataset, [{"file": str(path), "row": "", "column": "", "value": "",
                                       "message": f"unreadable spreadsheet ({type(e).__name__}: {e})"}]) from e
    for i, row in head.iterrows():
        cells = {str(c).strip().lower() for c in row if isinstance(c, str)}
        if "id" in cells and "diagnosis" in cells:
            return int(i)
    raise ManifestError(dataset, [{"file": str(path), "row": "1-8", "column": "ID/Diagnosis", "value": "",
                                   "message": "no header row with 'ID' and 'Diagnosis' in the first 8 rows"}])


def read(ctx: Context):
    """One row per eye; ``#002`` in the OD sheet is ``RET002OD.jpg``."""
    records = []
    for eye, key, tag in (("R", "od_file", "od"), ("L", "os_file", "os")):
        path = ctx.label_file(key, rf"(^|/)patient_data_{tag}\.xlsx$", f"PAPILA patient_data_{tag}.xlsx")
        df = read_table(path, ctx.name, header_row=_header_row(path, ctx.name))
        id_col = next(c for c in df.columns if c.strip().lower() == "id")
        dx_col = next(c for c in df.columns if c.strip().lower() == "diagnosis")
        for r in df.to_dict("records"):
            m = re.fullmatch(r"#?\s*(\d+)(\.0)?", r[id_col])
            if not m:
                if r[dx_col] == "" and r[id_col] == "":
                    continue  # second header row (sub-headings under merged cells)
                if not r[id_col] or not re.search(r"\d", r[id_col]):
                    continue  # sub-heading row of the two-row header
                ctx.report.error(path, r["_row"], id_col, r[id_col], "PAPILA ID must look like '#002'")
                continue
            pid = f"{int(m[1]):03d}"
            dx = r[dx_col].split(".")[0] if re.fullmatch(r"\d+\.0", r[dx_col]) else r[dx_col]
            name, labels = DIAGNOSIS.get(dx, (None, None))
            if labels is None:
                ctx.report.error(path, r["_row"], dx_col, r[dx_col], "Diagnosis must be 0 (healthy), 1 (glaucoma) or 2 (suspect)")
                labels = {}
            fname = f"RET{pid}{tag.upper()}"
            records.append({
                "image_id": fname,
                "path": ctx.locate(fname, "FundusImages", f"FundusImages/{fname}.jpg", path, r["_row"], anywhere=True),
                "patient_id": pid, "eye": eye, "split": "",
                "glaucoma": labels.get("glaucoma"), "glaucoma_suspect": labels.get("glaucoma_suspect"),
                "source_label": f"Diagnosis={r[dx_col]} ({name})", "_file": r["_file"], "_row": r["_row"],
            })
    return rows(records, {"glaucoma": "Diagnosis", "glaucoma_suspect": "Diagnosis"})


ADAPTER = Adapter(
    name="papila",
    read=read,
    summary="PAPILA: glaucoma / suspect / healthy per eye, with patient ids",
    layout="`ClinicalData/patient_data_od.xlsx` and `patient_data_os.xlsx` (a title / merged-heading block above "
           "the header: the header row is the first of the first 8 rows holding both `ID` and `Diagnosis`; sub-heading "
           "rows without an ID are skipped), images `FundusImages/RET<ID>OD.jpg` / `RET<ID>OS.jpg`. `ID` `#002` -> "
           "patient `002`; OD -> eye R, OS -> eye L. `healthy` means not glaucomatous, so `normal` stays unknown.",
    mapping=MAPPING,
    labelled_dirs=r"(^|/)FundusImages/",
)
