"""Datasets labelled by folder: JSIEC, Glaucoma Fundus, the RETFound benchmark layout, generic ``imagefolder``."""

from __future__ import annotations

import re

from fundusfm.data.adapters.base import Adapter, Context, Opt, rows
from fundusfm.data.manifest import ManifestError

SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# masks and annotation folders hold images that are not photographs
NOT_PHOTOS = re.compile(r"(mask|annotation|groundtruth|ground_truth|segmentation)", re.I)


def norm_class(name: str) -> str:
    """Folder names compared ignoring case, spaces, '_' and '-'."""
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def _drop_identical_copies(ctx: Context, records: list[dict]) -> list[dict]:
    """Keep one of several byte-identical files with the same class folder and name (the shallowest).

    Some downloads nest a second copy of the whole tree (Kaggle JSIEC: ``1000images/1000images/``);
    read twice, every photograph would count twice in an external evaluation. The copies left
    out are listed in the report's ``excluded`` with the path they duplicate.
    """
    import hashlib

    def digest(rel: str) -> str:
        return hashlib.sha256((ctx.root / rel).read_bytes()).hexdigest()

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["source_label"], r["path"].rsplit("/", 1)[-1]), []).append(r)
    drop: set[str] = set()
    for group in groups.values():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda r: (r["path"].count("/"), r["path"]))
        kept = group[0]
        for other in group[1:]:
            if (ctx.root / other["path"]).stat().st_size == (ctx.root / kept["path"]).stat().st_size \
                    and digest(other["path"]) == digest(kept["path"]):
                drop.add(other["path"])
                ctx.report.excluded.append({"image_id": other["image_id"], "path": other["path"],
                                            "reason": f"identical copy of {kept['path']}", "file": other["_file"],
                                            "row": other["_row"]})
    if drop:
        ctx.report.warnings.append(f"{len(drop)} byte-identical copies of images (a nested copy of the tree?) "
                                   "left out; listed in `excluded`")
    return [r for r in records if r["path"] not in drop]


def folder_records(ctx: Context, class_map: dict, split_layout: bool, split: str = "", under: str | None = None,
                   drop_copies: bool = False) -> list[dict]:
    """One record per photograph, labelled by its parent folder through ``class_map``.

    Folders missing from ``class_map`` are reported as unmapped labels (images kept, labels unknown).
    ``drop_copies``: leave out byte-identical copies of an image in the same class folder name.
    """
    cmap = {norm_class(k): (k, v) for k, v in class_map.items()}
    out = []
    for rel in ctx.index.images:
        if NOT_PHOTOS.search(rel) or (under and not re.search(under, rel, re.I)):
            continue
        parts = rel.split("/")
        if len(parts) < 2:
            ctx.report.warnings.append(f"{rel}: image directly under the root has no class folder; ignored")
            ctx.report.unlabelled_images.append(rel)
            continue
        folder = parts[-2]
        this_split = split
        if split_layout:
            s = next((SPLIT_DIRS[p.lower()] for p in parts[:-2] if p.lower() in SPLIT_DIRS), None)
            if s is None:
                ctx.report.unlabelled_images.append(rel)
                continue
            this_split = s
        hit = cmap.get(norm_class(folder))
        if hit is None:
            ctx.report.unmapped_label(ctx.root / "/".join(parts[:-1]), "", "class folder", folder)
            labels = {}
        else:
            labels = {k: v for k, v in hit[1].items() if k != "note"}
        out.append({"image_id": parts[-1].rsplit(".", 1)[0], "path": rel, "patient_id": "", "eye": "U",
                    "split": this_split, **labels, "source_label": folder, "_file": str(ctx.root / "/".join(parts[:-1])),
                    "_row": parts[-1]})
    if drop_copies:
        out = _drop_identical_copies(ctx, out)
    stems = [r["image_id"] for r in out]
    if len(set(stems)) < len(stems):
        # the same file name in several folders (e.g. train/a/1.jpg and val/a/1.jpg): ids from the whole path
        ctx.report.warnings.append("file names repeat across folders: image_id is the path with '/' -> '__'")
        for r in out:
            r["image_id"] = r["path"].rsplit(".", 1)[0].replace("/", "__")
    return out


# ---- JSIEC (1000 fundus images, 39 classes) --------------------------------------------------
JSIEC_CLASSES: dict[str, dict] = {
    "0.0.Normal": {"normal": 1, "abnormal": 0},
    "0.1.Tessellated fundus": {"note": "normal variant: no harmonised label"},
    "0.2.Large optic cup": {"glaucoma_suspect": 1},
    "0.3.DR1": {"dr_grade": 1},
    "1.0.DR2": {"dr_grade": 2},
    "1.1.DR3": {"abnormal": 1, "note": "severe NPDR or PDR (grade 3 or 4): grade left unknown"},
    "2.0.BRVO": {"rvo": 1, "brvo": 1},
    "2.1.CRVO": {"rvo": 1, "crvo": 1},
    "3.RAO": {"other": 1},
    "4.Rhegmatogenous RD": {"other": 1},
    "5.0.CSCR": {"other": 1},
    "5.1.VKH disease": {"other": 1},
    "6.Maculopathy": {"other": 1},
    "7.ERM": {"other": 1},
    "8.MH": {"other": 1},
    "9.Pathological myopia": {"myopia": 1},
    "10.0.Possible glaucoma": {"glaucoma_suspect": 1},
    "10.1.Optic atrophy": {"other": 1},
    "11.Severe hypertensive retinopathy": {"hypertensive": 1},
    "12.Disc swelling and elevation": {"other": 1},
    "13.Dragged Disc": {"other": 1},
    "14.Congenital disc abnormality": {"other": 1},
    "15.0.Retinitis pigmentosa": {"other": 1},
    "15.1.Bietti crystalline dystrophy": {"other": 1},
    "16.Peripheral retinal degeneration and break": {"other": 1},
    "17.Myelinated nerve fiber": {"other": 1},
    "18.Vitreous particles": {"other": 1},
    "19.Fundus neoplasm": {"other": 1},
    "20.Massive hard exudates": {"other": 1},
    "21.Yellow-white spots-flecks": {"other": 1},
    "22.Cotton-wool spots": {"other": 1},
    "23.Vessel tortuosity": {"other": 1},
    "24.Chorioretinal atrophy-coloboma": {"other": 1},
    "25.Preretinal hemorrhage": {"other": 1},
    "26.Fibrosis": {"other": 1},
    "27.Laser Spots": {"other": 1},
    "28.Silicon oil in eye": {"other": 1},
    "29.0.Blur fundus without PDR": {"other": 1, "note": "media opacity"},
    "29.1.Blur fundus with suspected PDR": {"abnormal": 1, "note": "media opacity, suspected PDR"},
}


def read_jsiec(ctx: Context):
    records = folder_records(ctx, ctx.option("class_map", JSIEC_CLASSES), split_layout=False, drop_copies=True)
    return rows(records)


# ---- Glaucoma Fundus (Kim et al., Harvard Dataverse) -------------------------------------------
GLAUCOMA_FUNDUS_CLASSES = {"normal_control": {"glaucoma": 0}, "early_glaucoma": {"glaucoma": 1},
                           "advanced_glaucoma": {"glaucoma": 1}}


def read_glaucoma_fundus(ctx: Context):
    return rows(folder_records(ctx, ctx.option("class_map", GLAUCOMA_FUNDUS_CLASSES), split_layout=False))


# ---- RETFound benchmark layout train/val/test/<class> -----------------------------------------
# The class folders of RETFound's benchmark copies (letters prefixed so ImageFolder sorts them by
# grade), per benchmark dataset, as RETFound-style loaders list them (`RETFoundDataset`:
# PAPILA anormal/bsuspectglaucoma/cglaucoma, Glaucoma_fundus anormal_control/bearly_glaucoma/
# cadvanced_glaucoma, Retina anormal/bcataract/cglaucoma/ddretina_disease, JSIEC's 39 folders,
# IDRiD anoDR..eproDR, APTOS/MESSIDOR2 anodr..eproliferativedr). The same folder name means
# different things per dataset: PAPILA's `anormal` is "not glaucomatous" (glaucoma = 0), Retina's
# `anormal` is a normal fundus. So the benchmark is told (`benchmark:`) or recognised from its
# folder set (and, like RETFound's loader, from the root's name).
_DR_FOLDERS = {"anoDR": {"dr_grade": 0}, "bmildDR": {"dr_grade": 1}, "cmoderateDR": {"dr_grade": 2},
               "dsevereDR": {"dr_grade": 3}, "eproDR": {"dr_grade": 4}, "eproliferativeDR": {"dr_grade": 4}}
RETFOUND_BENCHMARKS: dict[str, dict[str, dict]] = {
    "dr": _DR_FOLDERS,  # APTOS2019, MESSIDOR2, IDRiD_data
    "papila": {"anormal": {"glaucoma": 0, "glaucoma_suspect": 0, "note": "PAPILA: not glaucomatous"},
               "bsuspectglaucoma": {"glaucoma_suspect": 1, "note": "suspect: glaucoma unknown"},
               "cglaucoma": {"glaucoma": 1, "glaucoma_suspect": 0}},
    "glaucoma_fundus": {"anormal_control": {"glaucoma": 0}, "bearly_glaucoma": {"glaucoma": 1},
                        "cadvanced_glaucoma": {"glaucoma": 1}},
    "retina": {"anormal": {"normal": 1, "abnormal": 0}, "bcataract": {"cataract": 1}, "cglaucoma": {"glaucoma": 1},
               "ddretina_disease": {"abnormal": 1, "note": "Retina dataset: retinal disease, unspecified"}},
    "jsiec": JSIEC_CLASSES,
}
# root-name hints, as RETFound's own loader picks the folder list ('PAPILA' in root ...)
_ROOT_HINTS = {"papila": "papila", "glaucoma_fundus": "glaucoma_fundus", "retina": "retina", "jsiec": "jsiec",
               "dr": ("aptos", "messidor", "idrid")}
RETFOUND_CLASSES = {f"{name}: {folder}": labels for name, m in RETFOUND_BENCHMARKS.items() for folder, labels in m.items()}


def _retfound_benchmark(ctx: Context) -> str:
    """Which benchmark copy the root holds: ``benchmark:``, else the one whose folders cover the root's."""
    given = ctx.option("benchmark")
    if given:
        return given
    # class folders: the parents of images below a split folder (at any depth: copies are often
    # unpacked as PAPILA/PAPILA/train/...)
    folders = {norm_class(r.split("/")[-2]) for r in ctx.index.images
               if any(p.lower() in SPLIT_DIRS for p in r.split("/")[:-2]) and not NOT_PHOTOS.search(r)}
    known = {b: {norm_class(f) for f in m} for b, m in RETFOUND_BENCHMARKS.items()}
    score = {b: len(folders & k) for b, k in known.items()}
    best = max(score.values(), default=0)
    cands = [b for b, v in score.items() if v == best and v > 0]
    if len(cands) > 1:
        root = str(ctx.root).lower()
        named = [b for b in cands if any(h in root for h in ((_ROOT_HINTS[b],) if isinstance(_ROOT_HINTS[b], str)
                                                              else _ROOT_HINTS[b]))]
        cands = named if len(named) == 1 else cands
    if len(cands) != 1:
        raise ManifestError(ctx.name, [{"file": str(ctx.root), "row": "", "column": "benchmark", "value": "",
                                        "message": "cannot tell which RETFound benchmark copy this is from its class "
                                                   f"folders {sorted(folders)} (candidates: {cands or sorted(known)}); "
                                                   f"set `benchmark:` to one of {', '.join(sorted(known))}"}])
    return cands[0]


def read_retfound(ctx: Context):
    cmap = ctx.option("class_map")
    if cmap is None:
        bench = _retfound_benchmark(ctx)
        cmap = RETFOUND_BENCHMARKS[bench]
        ctx.report.warnings.append(f"RETFound benchmark copy read with the `{bench}` class folders")
    return rows(folder_records(ctx, cmap, split_layout=True))


# ---- generic imagefolder --------------------------------------------------------------------
def read_imagefolder(ctx: Context):
    """``<root>/<class>/*`` or ``<root>/<split>/<class>/*``; ``class_map: {folder: {label: value}}`` is required."""
    cmap = ctx.option("class_map")
    if not isinstance(cmap, dict) or not cmap:
        raise ManifestError(ctx.name, [{"file": "config", "row": "", "column": "class_map", "value": str(cmap),
                                        "message": "imagefolder needs `class_map: {folder: {label: value}}`"}])
    tops = {r.split("/", 1)[0].lower() for r in ctx.index.images if "/" in r}
    split_layout = ctx.option("split_dirs", bool(tops) and tops <= set(SPLIT_DIRS))
    return rows(folder_records(ctx, cmap, split_layout=split_layout))


CLASS_MAP_OPT = Opt("class_map", "`{folder: {label: value}}` replacing the built-in folder table")
JSIEC = Adapter(
    name="jsiec", read=read_jsiec,
    summary="JSIEC 1000 fundus images, 39 class folders",
    layout="`<root>/<class>/*.jpg` with the 39 folders `0.0.Normal` ... `29.1.Blur fundus with suspected PDR` (any "
           "depth, e.g. the Kaggle copy's `1000images/`; the class is the image's parent folder, matched ignoring case, "
           "spaces, `_` and `-`). Some Kaggle downloads nest a second copy (`1000images/1000images/<class>/`): "
           "byte-identical copies are left out (listed in the report's `excluded`). No patient ids. Override or "
           "extend with `class_map:`.",
    mapping=JSIEC_CLASSES, labelled_dirs=None, options={"class_map": CLASS_MAP_OPT},
)
GLAUCOMA_FUNDUS = Adapter(
    name="glaucoma_fundus", read=read_glaucoma_fundus,
    summary="Glaucoma Fundus (Kim et al.): normal control / early / advanced glaucoma folders",
    layout="`<root>/normal_control/`, `early_glaucoma/`, `advanced_glaucoma/` (any depth). The file numbering restarts "
           "in each class folder, so when names repeat `image_id` is the path with `/` -> `__`. The stage stays in "
           "`source_label`. No patient ids.",
    mapping=GLAUCOMA_FUNDUS_CLASSES, options={"class_map": CLASS_MAP_OPT},
)
RETFOUND = Adapter(
    name="retfound", read=read_retfound,
    summary="RETFound benchmark copy of a dataset: train/val/test/<class>",
    layout="`<root>/{train,val,test}/<class>/*` (or one level deeper, `<Name>/{train,...}`) as in RETFound_MAE's "
           "BENCHMARK.md data splits. The class folders "
           "differ per benchmark and mean different things (PAPILA `anormal` = not glaucomatous, Retina `anormal` = "
           "normal fundus), so the table used is the benchmark's: `benchmark:` (`dr` for APTOS2019 / MESSIDOR2 / "
           "IDRiD_data, `papila`, `glaucoma_fundus`, `retina`, `jsiec`), else the one whose folders match the root's "
           "(ties broken by the root's name, as RETFound's loader does). `class_map:` replaces the table. No patient "
           "ids (the benchmark copies dropped them: prefer the original dataset's adapter for patient-grouped splits).",
    mapping=RETFOUND_CLASSES,
    options={"class_map": CLASS_MAP_OPT,
             "benchmark": Opt("choice", "which benchmark copy the root holds (default: recognised from its folders)",
                              tuple(RETFOUND_BENCHMARKS))},
)
IMAGEFOLDER = Adapter(
    name="imagefolder", read=read_imagefolder,
    summary="generic class folders, optionally under train/val/test",
    layout="`<root>/<class>/*` or `<root>/<split>/<class>/*` (detected when every top folder is a split name, or "
           "`split_dirs: true`); `class_map: {folder: {label: value}}` required; unmapped folders are reported.",
    mapping={"<folder>": {"<label>": "<value> from class_map"}},
    options={"class_map": Opt("class_map", "`{folder: {label: value}}` (required)"),
             "split_dirs": Opt("bool", "true: the top folders are train/val/test (default: detected)")},
)
