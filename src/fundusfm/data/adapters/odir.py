"""ODIR-5K (Ocular Disease Intelligent Recognition): per-eye labels derived from the diagnostic keywords.

The patient-level flags N D G C A H M O describe both eyes together, so they cannot label an
eye; each eye's ``Left-/Right-Diagnostic Keywords`` can. Every keyword is looked up in
:data:`KEYWORDS`; an unknown keyword is reported and leaves ``other`` unknown for that eye.
The flags are only used as a cross-check (mismatches are reported as warnings).
"""

from __future__ import annotations

import re

from fundusfm.data.adapters.base import Adapter, Context, find_column, read_table, require_columns, rows

# keyword (normalised: lower case, '-' -> ' ', 'non proliferative' -> 'nonproliferative')
#   -> (ODIR flag letter, harmonised labels); None marks a label as explicitly unknown
_RVO = {"branch retinal vein occlusion": ("O", {"rvo": 1, "brvo": 1}),
        "old branch retinal vein occlusion": ("O", {"rvo": 1, "brvo": 1}),
        "central retinal vein occlusion": ("O", {"rvo": 1, "crvo": 1}),
        "retinal vein occlusion": ("O", {"rvo": 1, "brvo": None, "crvo": None})}
_OTHER = [
    "epiretinal membrane", "macular epiretinal membrane", "epiretinal membrane over the macula", "epimacular membrane",
    "drusen", "laser spot", "myelinated nerve fibers", "vitreous degeneration", "refractive media opacity",
    "spotted membranous change", "tessellated fundus", "chorioretinal atrophy", "retinitis pigmentosa",
    "maculopathy", "post retinal photocoagulation", "post laser photocoagulation", "retinal pigmentation",
    "rhegmatogenous retinal detachment", "retinal detachment", "macular hole", "optic disc edema", "atrophic change",
    "glial remnants anterior to the optic disc", "wedge white line change", "wedge shaped change", "white vessel",
    "retinochoroidal coloboma", "congenital choroidal coloboma", "macular coloboma", "old chorioretinopathy",
    "optic nerve atrophy", "retinal vascular sheathing", "vessel tortuosity", "arteriosclerosis",
    "depigmentation of the retinal pigment epithelium", "peripapillary atrophy", "central serous chorioretinopathy",
    "idiopathic choroidal neovascularization", "intraretinal hemorrhage", "silicone oil eye", "abnormal pigment",
    "punctate inner choroidopathy", "morning glory syndrome", "asteroid hyalosis", "vitreous opacity",
    "pigment epithelium proliferation", "retinal artery macroaneurysm", "oval yellow white atrophy", "optic discitis",
    "diffuse retinal atrophy", "choroidal nevus", "chorioretinal atrophy with pigmentation proliferation",
    "macular pigmentation disorder", "branch retinal artery occlusion", "central retinal artery occlusion",
    "retinal artery occlusion", "diffuse chorioretinal atrophy", "optic disk epiretinal membrane",
]
KEYWORDS: dict[str, tuple[str, dict]] = {
    "normal fundus": ("N", {"normal": 1}),
    "mild nonproliferative retinopathy": ("D", {"dr_grade": 1}),
    "moderate nonproliferative retinopathy": ("D", {"dr_grade": 2}),
    "severe nonproliferative retinopathy": ("D", {"dr_grade": 3}),
    "proliferative diabetic retinopathy": ("D", {"dr_grade": 4}),
    "severe proliferative diabetic retinopathy": ("D", {"dr_grade": 4}),
    "diabetic retinopathy": ("D", {"dr_grade": None, "abnormal": 1}),  # DR of unstated grade
    "suspicious diabetic retinopathy": ("", {"dr_grade": None}),
    "glaucoma": ("G", {"glaucoma": 1}),
    "suspected glaucoma": ("G", {"glaucoma_suspect": 1, "glaucoma": None}),
    "cataract": ("C", {"cataract": 1}),
    "suspected cataract": ("", {"cataract": None}),
    "dry age related macular degeneration": ("A", {"amd": 1}),
    "wet age related macular degeneration": ("A", {"amd": 1}),
    "age related macular degeneration": ("A", {"amd": 1}),
    "hypertensive retinopathy": ("H", {"hypertensive": 1}),
    "pathological myopia": ("M", {"myopia": 1}),
    "myopia retinopathy": ("M", {"myopia": 1}),
    "myopic retinopathy": ("M", {"myopia": 1}),
    "myopic maculopathy": ("M", {"myopia": 1}),
    **_RVO,
    **{k: ("O", {"other": 1}) for k in _OTHER},
    # image-quality remarks: no diagnostic content
    **{k: ("", {}) for k in ["lens dust", "low image quality", "image offset", "optic disk photographically invisible",
                             "no fundus image", "anterior segment image"]},
}
EYE_COLUMNS = ("dr_grade", "glaucoma", "glaucoma_suspect", "cataract", "amd", "hypertensive", "myopia",
               "rvo", "brvo", "crvo", "other")
MAPPING = {k: v[1] for k, v in KEYWORDS.items()}
FLAG_CHECK = "DGCAHM"


def normalise_keyword(k: str) -> str:
    k = re.sub(r"[\s\-]+", " ", k.replace("\u00a0", " ").strip().lower())
    return k.replace("non proliferative", "nonproliferative")


def split_keywords(text: str) -> list[str]:
    """ODIR separates keywords with the full-width comma '，' (sometimes ',' or ';')."""
    return [k for k in (normalise_keyword(p) for p in re.split(r"[，,;、]", text or "")) if k]


def eye_labels(keywords: list[str], report, file, row, column) -> tuple[dict, set[str]]:
    """Harmonised labels of one eye from its keywords, and the ODIR flag letters they imply."""
    found: dict = {}
    letters: set[str] = set()
    diagnostic = False
    unmapped = False
    for k in keywords:
        if k not in KEYWORDS:
            report.unmapped_label(file, row, column, k)
            unmapped = True
            continue
        letter, labels = KEYWORDS[k]
        if letter:
            letters.add(letter)
        if labels:
            diagnostic = True
        for col, val in labels.items():
            if val is None:
                if not found.get(col):
                    found[col] = None  # "suspected ...": unknown unless another keyword is positive
                continue
            if col == "dr_grade" and isinstance(found.get(col), int):
                val = max(val, found[col])  # two DR keywords: keep the worse grade
            found[col] = val
    if not diagnostic:
        return {}, letters  # only quality remarks or unknown words: nothing is known about disease
    disease_found = any(found.get(c) for c in EYE_COLUMNS) or found.get("abnormal") == 1
    if found.get("normal") == 1 and disease_found:
        report.warnings.append(f"{file} row {row} {column}: 'normal fundus' together with disease keywords; normal left unknown")
        found.pop("normal")
    # the keywords list every finding, so a disease not mentioned is absent (0) ...
    out = {c: found.get(c, 0) for c in EYE_COLUMNS}
    out["normal"] = found.get("normal")
    out["abnormal"] = found.get("abnormal")
    if unmapped and not out["other"]:
        out["other"] = None  # ... unless an unknown keyword might be one
    return out, letters


def read(ctx: Context):
    """Two manifest rows (left, right) per spreadsheet row."""
    path = ctx.label_file("labels_file", r"(^|/)(data|ODIR-5K_Training_Annotations[^/]*)\.xlsx?$", "ODIR annotation spreadsheet")
    df = read_table(path, ctx.name, sheet=ctx.option("sheet", 0))
    cols = {k: find_column(df, k) for k in ["ID", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
                                              "Right-Diagnostic Keywords"]}
    require_columns(df, [v or k for k, v in cols.items()], path, ctx.name)
    records = []
    for r in df.to_dict("records"):
        pid = r[cols["ID"]].split(".")[0] if re.fullmatch(r"\d+\.0", r[cols["ID"]]) else r[cols["ID"]]
        letters: set[str] = set()
        for side, eye in (("Left", "L"), ("Right", "R")):
            fname = r[cols[f"{side}-Fundus"]]
            kcol = cols[f"{side}-Diagnostic Keywords"]
            labels, eye_letters = eye_labels(split_keywords(r[kcol]), ctx.report, path, r["_row"], kcol)
            letters |= eye_letters
            stem = fname.rsplit(".", 1)[0]
            records.append({
                "image_id": stem,
                "path": ctx.locate(fname, None, f"Training Images/{fname}", path, r["_row"]),
                "patient_id": pid, "eye": eye, "split": ctx.option("split", "train"),
                **labels, "source_label": r[kcol], "_file": r["_file"], "_row": r["_row"],
            })
        for letter in FLAG_CHECK:
            col = find_column(df, letter)
            if col is not None and r.get(col, "") in {"0", "1"} and (r[col] == "1") != (letter in letters):
                ctx.report.warnings.append(
                    f"{path} row {r['_row']}: patient flag {letter}={r[col]} disagrees with the eyes' keywords")
    return rows(records, {c: "Left-/Right-Diagnostic Keywords" for c in EYE_COLUMNS + ("normal", "abnormal")})


ADAPTER = Adapter(
    name="odir5k",
    read=read,
    summary="ODIR-5K: per-eye multi-disease labels from the diagnostic keywords",
    layout="`data.xlsx` (or `ODIR-5K_Training_Annotations(Updated)_V2.xlsx`) with `ID`, `Patient Age`, `Patient Sex`, "
           "`Left-Fundus`, `Right-Fundus`, `Left-Diagnostic Keywords`, `Right-Diagnostic Keywords`, flags `N D G C A H M O`; "
           "images `Training Images/<ID>_left.jpg` (found by name anywhere under the root). Keywords are separated by "
           "the full-width comma `，`. The patient-level flags cover both eyes, so labels come from each eye's keywords; "
           "a disease not mentioned is 0 (ODIR lists every finding), an eye with only quality remarks ('lens dust', "
           "'low image quality') gets no labels, an unknown keyword is reported and leaves `other` unknown. Split `train` "
           "(the off-site test labels were never released).",
    mapping=MAPPING,
    exhaustive=True,
    labelled_dirs=r"(^|/)Training Images/",
)
