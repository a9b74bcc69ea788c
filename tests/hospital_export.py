"""A hospital export as issue 13 describes the one a user added by following the docs
(issue 13, "A hospital export added by following the docs only"): per-patient and per-visit
folders ``<MRN>/<YYYY-MM-DD>/<MRN>_<YYYYMMDD>_<OD|OS>.jpg``, and an xlsx with a title row
above the header, one row per eye and visit, and no file column. The sheet is written the
way a spreadsheet program stores it: MRNs as text (leading zeros kept), visit dates as real
date cells (pandas reads them back as ``YYYY-MM-DD 00:00:00``), a grader's quality column.

This is not a public format, so there is no upstream copy to cite: the layout facts are the
issue's. ``faults`` plants the mistakes check-dataset must report.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from fundusfm.synth.draw import Disease, render_fundus

TITLE = "Glaucoma clinic - fundus photography export (generated 2024-05-02 08:14)"
HEADER = ["MRN", "Visit date", "Eye", "Diagnosis", "Image quality", "Grader"]
DIAGNOSES = {True: "Glaucoma", False: "No glaucoma"}


def make_hospital_export(root: Path, n_patients: int = 12, visits: int = 2, faults: bool = False,
                         scale: float = 0.6) -> Path:
    """Write the export under ``root`` (``root/export.xlsx`` + ``root/images/<MRN>/...``).

    ``faults``: one row's MRN typed without its leading zeros (its file is then missing, and
    the MRN near-collides with the real one), one image on disk that no row lists, one
    diagnosis the value_map does not know, and one visit entered twice (an id collision).
    """
    from openpyxl import Workbook

    rng = np.random.default_rng(5)
    sick = rng.permutation([i < n_patients // 2 for i in range(n_patients)])
    wb = Workbook()
    ws = wb.active
    ws.title = "Export"
    ws.append([TITLE])
    ws.append(HEADER)
    rows = []
    for k in range(n_patients):
        mrn = f"{4100 + 37 * k:07d}"  # 7-digit MRN with leading zeros, stored as text
        for v in range(visits):
            day = datetime(2021, 3 + v * 4, 1 + k)
            for j, side in enumerate(("OD", "OS")):
                rel = Path("images") / mrn / day.strftime("%Y-%m-%d") / f"{mrn}_{day:%Y%m%d}_{side}.jpg"
                img, _ = render_fundus((31, k, v, j), Disease(glaucoma=bool(sick[k])), eye="R" if side == "OD" else "L",
                                       scale=scale)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / rel, quality=92)
                quality = "Ungradable" if (k, v, j) == (1, 0, 1) else "Good"
                rows.append([mrn, day, side, DIAGNOSES[bool(sick[k])], quality, "JS"])
    if faults:
        rows[2][0] = rows[2][0].lstrip("0")  # MRN typed as a number: 0004174 -> 4174
        rows[5][3] = "Glaucoma suspect?"  # not in the value_map
        rows.append(list(rows[6]))  # the same visit and eye entered twice
        extra = root / "images" / "0004100" / "2022-01-15" / "0004100_20220115_OD.jpg"  # no row lists it
        extra.parent.mkdir(parents=True, exist_ok=True)
        img, _ = render_fundus((32, 0), Disease(), eye="R", scale=scale)
        Image.fromarray(img).save(extra)
    for r in rows:
        ws.append(r)
    for cell in ws["B"][2:]:
        cell.number_format = "DD.MM.YYYY"
    for cell in ws["A"][2:]:
        cell.number_format = "@"
    root.mkdir(parents=True, exist_ok=True)
    wb.save(root / "export.xlsx")
    return root
