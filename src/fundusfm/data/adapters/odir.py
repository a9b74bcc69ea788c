"""ODIR-5K (Ocular Disease Intelligent Recognition): per-eye labels derived from the diagnostic keywords.

The patient-level flags N D G C A H M O describe both eyes together, so they cannot label an
eye; each eye's ``Left-/Right-Diagnostic Keywords`` can. Every keyword is looked up in
:data:`KEYWORDS`; an unknown keyword is reported and leaves ``other`` unknown for that eye.
The flags are only used as a cross-check (mismatches are reported as warnings).
"""

from __future__ import annotations

import re

from fundusfm.data.adapters.base import Adapter, Context, Opt, find_column, read_table, require_columns, rows

# Every diagnostic keyword of the real annotation file (data.xlsx / ODIR-5K_Training_Annotations),
# normalised: lower case, '-' -> ' ', spaces collapsed, 'non proliferative' -> 'nonproliferative'.
# The vocabulary is the one public ODIR loaders list from the real file (a keyword -> N/D/G/C/A/H/M/O
# table of all ~100 keywords, e.g. the `get_disease()` table found by the code search for
# 'suspected moderate non proliferative retinopathy'), checked against issue 13's list of keywords
# the previous table missed. keyword -> (ODIR flag letter, harmonised labels); None marks a label as
# explicitly unknown ("suspected ..."), a disease not mentioned is 0 (ODIR lists every finding).
_DR = {"mild nonproliferative retinopathy": 1, "moderate nonproliferative retinopathy": 2,
       "severe nonproliferative retinopathy": 3, "proliferative diabetic retinopathy": 4,
       "severe proliferative diabetic retinopathy": 4}
_RVO = {"branch retinal vein occlusion": ("O", {"rvo": 1, "brvo": 1}),
        "old branch retinal vein occlusion": ("O", {"rvo": 1, "brvo": 1}),
        "central retinal vein occlusion": ("O", {"rvo": 1, "crvo": 1}),
        "old central retinal vein occlusion": ("O", {"rvo": 1, "crvo": 1})}
_OTHER = [
    "abnormal pigment", "arteriosclerosis", "asteroid hyalosis", "atrophic change", "atrophy",
    "branch retinal artery occlusion", "central retinal artery occlusion", "central serous chorioretinopathy",
    "chorioretinal atrophy", "chorioretinal atrophy with pigmentation proliferation", "choroidal nevus",
    "congenital choroidal coloboma", "depigmentation of the retinal pigment epithelium", "diffuse chorioretinal atrophy",
    "diffuse retinal atrophy", "epiretinal membrane", "epiretinal membrane over the macula",
    "fundus laser photocoagulation spots", "glial remnants anterior to the optic disc",
    "idiopathic choroidal neovascularization", "intraretinal hemorrhage", "laser spot", "macular coloboma",
    "macular epiretinal membrane", "macular hole", "macular pigmentation disorder", "maculopathy",
    "morning glory syndrome", "myelinated nerve fibers", "old chorioretinopathy", "old choroiditis", "optic disc edema",
    "optic discitis", "optic disk epiretinal membrane", "optic nerve atrophy", "oval yellow white atrophy",
    "peripapillary atrophy", "pigment epithelium proliferation", "pigmentation disorder", "post laser photocoagulation",
    "post retinal laser surgery", "punctate inner choroidopathy", "refractive media opacity", "retina fold",
    "retinal artery macroaneurysm", "retinal detachment", "retinal pigment epithelial hypertrophy",
    "retinal pigment epithelium atrophy", "retinal pigmentation", "retinal vascular sheathing", "retinitis pigmentosa",
    "retinochoroidal coloboma", "rhegmatogenous retinal detachment", "silicone oil eye", "spotted membranous change",
    "tessellated fundus", "vascular loops", "vessel tortuosity", "vitreous degeneration", "vitreous opacity",
    "wedge white line change", "wedge shaped change", "white vessel",
]
# "suspected <other finding>": nothing definite, so `other` stays unknown for that eye
_SUSPECTED_OTHER = ["suspected abnormal color of optic disc", "suspected macular epimacular membrane",
                    "suspected retinal vascular sheathing", "suspected retinitis pigmentosa"]
KEYWORDS: dict[str, tuple[str, dict]] = {
    "normal fundus": ("N", {"normal": 1}),
    **{k: ("D", {"dr_grade": g}) for k, g in _DR.items()},
    "diabetic retinopathy": ("D", {"dr_grade": None, "abnormal": 1}),  # DR of unstated grade
    # suspected DR: neither a grade nor "no DR"
    "suspected diabetic retinopathy": ("D", {"dr_grade": None}),
    "suspicious diabetic retinopathy": ("D", {"dr_grade": None}),
    "suspected moderate nonproliferative retinopathy": ("D", {"dr_grade": None}),
    # a DR lesion: some DR, grade not stated
    "intraretinal microvascular abnormality": ("O", {"other": 1, "dr_grade": None}),
    "suspected microvascular anomalies": ("O", {"other": None, "dr_grade": None}),
    "glaucoma": ("G", {"glaucoma": 1}),
    "suspected glaucoma": ("G", {"glaucoma_suspect": 1, "glaucoma": None}),
    "cataract": ("C", {"cataract": 1}),
    "suspected cataract": ("C", {"cataract": None}),
    "dry age related macular degeneration": ("A", {"amd": 1}),
    "wet age related macular degeneration": ("A", {"amd": 1}),
    "age related macular degeneration": ("A", {"amd": 1}),
    "drusen": ("O", {"other": 1, "amd": None}),  # drusen may be early AMD: AMD left unknown
    "hypertensive retinopathy": ("H", {"hypertensive": 1}),
    "pathological myopia": ("M", {"myopia": 1}),
    "myopia retinopathy": ("M", {"myopia": 1}),
    "myopic retinopathy": ("M", {"myopia": 1}),
    "myopic maculopathy": ("M", {"myopia": 1}),
    "suspected pathological myopia": ("M", {"myopia": None}),
    **_RVO,
    **{k: ("O", {"other": 1}) for k in _OTHER},
    **{k: ("O", {"other": None}) for k in _SUSPECTED_OTHER},
    # image-quality remarks: no diagnostic content
    **{k: ("", {}) for k in ["lens dust", "low image quality", "image offset", "optic disk photographically invisible"]},
    # not a fundus photograph at all
    **{k: ("", {"quality": "reject"}) for k in ["no fundus image", "anterior segment image"]},
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
    """Harmonised labels of one eye from its keywords, and the ODIR flag letters they imply.

    A keyword missing from :data:`KEYWORDS` is reported and makes every label of the eye
    that no known keyword set to 1 unknown (it might be any disease), never 0.
    """
    found: dict = {}
    letters: set[str] = set()
    diagnostic = False
    unknown: list[str] = []
    for k in keywords:
        if k not in KEYWORDS:
            unknown.append(k)
            continue
        letter, labels = KEYWORDS[k]
        if letter:
            letters.add(letter)
        if any(c != "quality" for c in labels):
            diagnostic = True
        for col, val in labels.items():
            if val is None:
                if not found.get(col):
                    found[col] = None  # "suspected ...": unknown unless another keyword is positive
                continue
            if col == "dr_grade" and isinstance(found.get(col), int):
                val = max(val, found[col])  # two DR keywords: keep the worse grade
            found[col] = val
    quality = {"quality": found["quality"]} if "quality" in found else {}
    if not diagnostic and not unknown:
        return quality, letters  # only quality remarks: nothing is known about disease
    disease_found = any(found.get(c) for c in EYE_COLUMNS) or found.get("abnormal") == 1
    if found.get("normal") == 1 and (disease_found or unknown):
        report.warnings.append(f"{file} row {row} {column}: 'normal fundus' together with other keywords; normal left unknown")
        found.pop("normal")
    if unknown:
        # an unknown keyword may be any disease: only what a known keyword says positively is kept
        out = {c: (found[c] if found.get(c) else None) for c in EYE_COLUMNS}
        out["normal"] = None
        out["abnormal"] = found.get("abnormal") if found.get("abnormal") == 1 else None
        blanked = [c for c in EYE_COLUMNS + ("normal", "abnormal") if out.get(c) is None]
        for k in unknown:
            report.unmapped_label(file, row, column, k, "keyword not in the ODIR table; every label of this eye "
                                  "not set by another keyword left unknown", labels=blanked)
        return {**out, **quality}, letters
    # the keywords list every finding, so a disease not mentioned is absent (0)
    out = {c: found.get(c, 0) for c in EYE_COLUMNS}
    out["normal"] = found.get("normal")
    out["abnormal"] = found.get("abnormal")
    return {**out, **quality}, letters


def _label_file(ctx: Context):
    """data.xlsx (original release and the Kaggle copy's ODIR-5K/ODIR-5K/), else the Kaggle full_df.csv."""
    sheet = ctx.label_file("labels_file", r"(^|/)(data|ODIR-5K_Training_Annotations[^/]*)\.xlsx?$",
                           "ODIR annotation spreadsheet", required=False)
    if sheet is not None:
        return sheet, ("full_df" if sheet.suffix.lower() == ".csv" else "xlsx")
    return ctx.label_file("labels_file", r"(^|/)full_df\.csv$", "ODIR annotation spreadsheet (data.xlsx) or "
                          "the Kaggle full_df.csv"), "full_df"


def read(ctx: Context):
    """Two manifest rows (left, right) per spreadsheet row (per patient in full_df.csv)."""
    path, kind = _label_file(ctx)
    df = read_table(path, ctx.name, sheet=ctx.option("sheet", 0))
    cols = {k: find_column(df, k) for k in ["ID", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
                                              "Right-Diagnostic Keywords"]}
    require_columns(df, [v or k for k, v in cols.items()], path, ctx.name)
    listed = None
    if kind == "full_df":
        # the Kaggle full_df.csv has one row per image (a patient's row repeated, some eyes left out):
        # one row per patient here, and only the eyes it lists
        fcol = find_column(df, "filename")
        listed = set(df[fcol]) if fcol else None
        df = df.drop_duplicates(subset=[cols["ID"]], keep="first")
    # The Kaggle download holds the same file names in ODIR-5K/ODIR-5K/Training Images/ and in
    # preprocessed_images/: look in "Training Images" first (the originals), elsewhere only when unique.
    folder = ctx.option("images_dir")
    hint = (re.escape(folder.strip("/")) + "$") if folder else (
        r"(^|/)Training Images$" if kind == "xlsx" else r"(^|/)preprocessed_images$")
    records = []
    for r in df.to_dict("records"):
        pid = r[cols["ID"]].split(".")[0] if re.fullmatch(r"\d+\.0", r[cols["ID"]]) else r[cols["ID"]]
        letters: set[str] = set()
        for side, eye in (("Left", "L"), ("Right", "R")):
            fname = r[cols[f"{side}-Fundus"]]
            if listed is not None and fname not in listed:
                continue
            kcol = cols[f"{side}-Diagnostic Keywords"]
            labels, eye_letters = eye_labels(split_keywords(r[kcol]), ctx.report, path, r["_row"], kcol)
            letters |= eye_letters
            stem = fname.rsplit(".", 1)[0]
            records.append({
                "image_id": stem,
                "path": ctx.locate(fname, hint, f"Training Images/{fname}", path, r["_row"], anywhere=folder is None),
                "patient_id": pid, "eye": eye, "split": ctx.option("split", "train"),
                **labels, "source_label": r[kcol], "_file": r["_file"], "_row": r["_row"],
            })
        for letter in FLAG_CHECK:
            col = find_column(df, letter)
            if col is not None and r.get(col, "") in {"0", "1"} and (r[col] == "1") != (letter in letters):
                ctx.report.warnings.append(
                    f"{path} row {r['_row']}: patient flag {letter}={r[col]} disagrees with the eyes' keywords")
    out = rows(records, {c: "Left-/Right-Diagnostic Keywords" for c in EYE_COLUMNS + ("normal", "abnormal", "quality")})
    if "quality" in out and out["quality"].isna().all():
        out = out.drop(columns="quality")
    return out


ADAPTER = Adapter(
    name="odir5k",
    read=read,
    summary="ODIR-5K: per-eye multi-disease labels from the diagnostic keywords",
    layout="`data.xlsx` (or `ODIR-5K_Training_Annotations(Updated)_V2.xlsx`) with `ID`, `Patient Age`, `Patient Sex`, "
           "`Left-Fundus`, `Right-Fundus`, `Left-Diagnostic Keywords`, `Right-Diagnostic Keywords`, flags `N D G C A H M O`; "
           "images `Training Images/<ID>_left.jpg`. The usual Kaggle download (andrewmvd/ocular-disease-recognition-odir5k) "
           "is read from its own root as unpacked: `ODIR-5K/ODIR-5K/{data.xlsx, Training Images/, Testing Images/}` beside "
           "`preprocessed_images/` (the same file names, resized) and `full_df.csv`; images are taken from "
           "`Training Images/` (elsewhere only when the name is unique; `images_dir:` picks a folder, e.g. "
           "`preprocessed_images`). With only `full_df.csv` (one row per image) it is read instead, only the eyes it lists, "
           "images from `preprocessed_images/`. Keywords are separated by the full-width comma `，` (or `,`). The "
           "patient-level flags cover both eyes, so labels come from each eye's keywords: a disease not mentioned is 0 "
           "(ODIR lists every finding); `suspected ...` leaves that disease unknown; an eye with only quality remarks "
           "('lens dust', 'low image quality') gets no labels, 'no fundus image' / 'anterior segment image' get "
           "`quality=reject`; a keyword missing from the table below is reported and leaves every label of that eye "
           "not set positive by another keyword unknown, never 0. Split `train` (the off-site test labels were never "
           "released). Patient = `ID` (both eyes share it).",
    mapping=MAPPING,
    exhaustive=True,
    labelled_dirs=r"(^|/)Training Images/",
    options={"labels_file": Opt("path", "the annotation spreadsheet (default: the one `data.xlsx` under the root, else "
                                        "`full_df.csv`)"),
             "sheet": Opt("sheet", "sheet name or 0-based index in the spreadsheet (default 0)"),
             "split": Opt("choice", "split given to every image (default `train`)", ("train", "val", "test", "")),
             "images_dir": Opt("path", "folder (relative to the root) to take the images from, e.g. "
                                       "`preprocessed_images` or `ODIR-5K/ODIR-5K/Training Images`")},
)
