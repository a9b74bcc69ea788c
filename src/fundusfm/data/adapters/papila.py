"""PAPILA: per-eye clinical spreadsheets (two-row header) with Diagnosis 0 healthy / 1 glaucoma / 2 suspect."""

from __future__ import annotations

import re

from fundusfm.data.adapters.base import Adapter, Context, Opt, read_table, rows
from fundusfm.data.manifest import ManifestError

DIAGNOSIS = {"0": ("healthy", {"glaucoma": 0, "glaucoma_suspect": 0}),
             "1": ("glaucoma", {"glaucoma": 1, "glaucoma_suspect": 0}),
             "2": ("suspect", {"glaucoma": None, "glaucoma_suspect": 1})}
MAPPING = {f"Diagnosis={k} ({name})": labels for k, (name, labels) in DIAGNOSIS.items()}


def _header_row(path, dataset: str) -> int:
    """Row index (0-based) of the header holding ``Diagnosis``.

    The real sheets (figshare PAPILA, ``ClinicalData/patient_data_od.xlsx``) have two header
    rows: row 1 the column names (``Age``, ``Gender``, ``Diagnosis``, merged ``Refractive_Defect``
    and ``IOP``) with the first cell empty, row 2 the sub-heads under the merged cells
    (``dioptre_1``, ``Pneumatic``...), row 3 ``ID`` alone in the first cell; data from row 4.
    Flat re-exports (``ID;Age;Gender;Diagnosis;...`` on one row) have it on row 1.
    """
    import pandas as pd

    try:
        head = pd.read_excel(path, header=None, dtype=str, nrows=8)
    except Exception as e:
        raise ManifestError(dataset, [{"file": str(path), "row": "", "column": "", "value": "",
                                       "message": f"unreadable spreadsheet ({type(e).__name__}: {e})"}]) from e
    for i, row in head.iterrows():
        cells = {str(c).strip().lower() for c in row if isinstance(c, str)}
        if "diagnosis" in cells:
            return int(i)
    raise ManifestError(dataset, [{"file": str(path), "row": "1-8", "column": "Diagnosis", "value": "",
                                   "message": "no header row with 'Diagnosis' in the first 8 rows"}])


ID_RE = re.compile(r"#?\s*(\d+)(\.0)?")


def read(ctx: Context):
    """One row per eye; ``#002`` in the OD sheet is ``RET002OD.jpg``."""
    records = []
    for eye, key, tag in (("R", "od_file", "od"), ("L", "os_file", "os")):
        path = ctx.label_file(key, rf"(^|/)patient_data_{tag}\.xlsx$", f"PAPILA patient_data_{tag}.xlsx")
        df = read_table(path, ctx.name, header_row=_header_row(path, ctx.name))
        dx_col = next(c for c in df.columns if c.strip().lower() == "diagnosis")
        # the ID column: headed `ID` (flat exports) or, in the real sheets, the unnamed first column
        # whose `ID` sits alone in the cell below the sub-heads
        id_col = next((c for c in df.columns if c.strip().lower() == "id"), df.columns[0])
        started = False
        for r in df.to_dict("records"):
            m = ID_RE.fullmatch(r[id_col])
            if not m:
                if r[dx_col] == "":
                    # no diagnosis either: the sub-head / `ID` rows of the header, or a note below the data
                    if started:
                        ctx.report.warnings.append(f"{path} row {r['_row']}: not a patient row ({r[id_col]!r}); skipped")
                    continue
                ctx.report.error(path, r["_row"], id_col, r[id_col], "PAPILA ID must look like '#002'")
                continue
            started = True
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
    layout="`ClinicalData/patient_data_od.xlsx` and `patient_data_os.xlsx` as on figshare: two header rows (row 1 "
           "`Age`, `Gender`, `Diagnosis`, merged `Refractive_Defect` / `IOP`...; row 2 the sub-heads `dioptre_1`, "
           "`Pneumatic`...), `ID` alone in the first cell of row 3, data from row 4 (`#002`, ...). The header is the "
           "first row holding `Diagnosis`; the ID column is the one headed `ID`, else the first column; rows with neither "
           "an ID nor a diagnosis (the header's sub-rows, notes) are skipped, an unreadable ID next to a diagnosis is an "
           "error. Images `FundusImages/RET<ID>OD.jpg` / `RET<ID>OS.jpg`. `ID` `#002` -> patient `002` "
           "(both eyes); OD -> eye R, OS -> eye L. `healthy` means not glaucomatous, so `normal` stays unknown.",
    mapping=MAPPING,
    labelled_dirs=r"(^|/)FundusImages/",
    options={"od_file": Opt("path", "the right-eye sheet (default: `patient_data_od.xlsx` under the root)"),
             "os_file": Opt("path", "the left-eye sheet (default: `patient_data_os.xlsx` under the root)")},
)
