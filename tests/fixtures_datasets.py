"""Tiny copies of public fundus datasets, with their exact layouts and quirks, built on the fly.

Each ``build_<dataset>(root) -> Path`` writes generated fundus-like images and label files the
way the dataset is distributed (file names, column names, header oddities) and returns the
dataset root. ``dataset_config(name, root)`` gives the matching config entry, so workflow tests
can point a config at these trees. Images are seeded by their file name, so EyeQ's copies of
EyePACS images are pixel-identical (the planted cross-dataset overlap).
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 96


def fundus_image(key: str, size: int = SIZE) -> Image.Image:
    """A fundus-like photograph (orange disc on black, optic disc, vessels) seeded by ``key``."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c, r = size / 2, size * 0.46
    d = np.hypot(yy - c, xx - c) / r
    theta = rng.uniform(0, 2 * np.pi)
    # illumination gradient in a random direction: makes low frequencies (what pHash sees) differ
    grad = 0.35 * ((xx - c) * np.cos(theta) + (yy - c) * np.sin(theta)) / r
    base = np.array([0.78, 0.38, 0.16]) * rng.uniform(0.7, 1.1)
    img = base * np.clip(1 - 0.45 * d ** 2 + grad, 0.1, 1.3)[..., None]
    for _ in range(3):  # large bright/dark patches
        bx, by = rng.uniform(0.2, 0.8, 2) * size
        img += rng.uniform(-0.25, 0.25) * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * (0.15 * size) ** 2))[..., None]
    a = rng.uniform(0, 2 * np.pi)
    dx, dy = c + 0.5 * r * np.cos(a), c + 0.5 * r * np.sin(a)
    img += np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * (0.07 * size) ** 2))[..., None] * np.array([0.3, 0.4, 0.3])
    img[d > 1] = 0
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(7):  # vessels leaving the disc
        ang, curv = rng.uniform(0, 2 * np.pi), rng.uniform(-0.04, 0.04)
        pts, (x, y) = [], (dx, dy)
        for _ in range(12):
            pts.append((x, y))
            ang += curv * 10
            x, y = x + np.cos(ang) * size / 16, y + np.sin(ang) * size / 16
        draw.line(pts, fill=(90, 20, 10), width=max(1, size // 48))
    mask = Image.fromarray(((d <= 1) * 255).astype(np.uint8))
    black = Image.new("RGB", pil.size)
    return Image.composite(pil.filter(ImageFilter.GaussianBlur(0.6)), black, mask)


def write_image(path: Path, key: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = fundus_image(key or path.name.rsplit(".", 1)[0])
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".bmp": "BMP"}[path.suffix.lower()]
    img.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_xlsx(path: Path, rows: list[list]) -> Path:
    """Rows written cell by cell (so headers can be as messy as the real files)."""
    from openpyxl import Workbook

    path.parent.mkdir(parents=True, exist_ok=True)
    wb = Workbook()
    ws = wb.active
    for r in rows:
        ws.append(r)
    wb.save(path)
    return path


# --- builders ----------------------------------------------------------------------------------
APTOS_TRAIN = [("000c1434d8d7", 2), ("001639a390f0", 4), ("0024cdab0c1e", 1), ("002c21358ce6", 0),
               ("005b95c28852", 0), ("0083ee8054ee", 3)]
APTOS_TEST = ["0005cfc8afb6", "003f0afdcd15"]


def build_aptos2019(root: Path) -> Path:
    write_csv(root / "train.csv", ["id_code", "diagnosis"], APTOS_TRAIN)
    write_csv(root / "test.csv", ["id_code"], [[i] for i in APTOS_TEST])
    for i, _ in APTOS_TRAIN:
        write_image(root / "train_images" / f"{i}.png", f"aptos-{i}")
    for i in APTOS_TEST:
        write_image(root / "test_images" / f"{i}.png", f"aptos-{i}")
    return root


EYEPACS_TRAIN = [("10_left", 0), ("10_right", 0), ("13_left", 0), ("13_right", 2), ("15_left", 1), ("15_right", 4)]
EYEPACS_TEST = [("1_left", 0, "Private"), ("1_right", 0, "Private"), ("3_left", 2, "Public"), ("3_right", 1, "Public")]


def build_eyepacs(root: Path) -> Path:
    write_csv(root / "trainLabels.csv", ["image", "level"], EYEPACS_TRAIN)
    write_csv(root / "retinopathy_solution.csv", ["image", "level", "Usage"], EYEPACS_TEST)
    for i, _ in EYEPACS_TRAIN:
        write_image(root / "train" / f"{i}.jpeg", f"eyepacs-{i}")
    for i, _, _ in EYEPACS_TEST:
        write_image(root / "test" / f"{i}.jpeg", f"eyepacs-{i}")
    return root


EYEQ_TRAIN = [("10_left.jpeg", 0, 0), ("10_right.jpeg", 2, 0), ("13_right.jpeg", 1, 2)]
EYEQ_TEST = [("3_left.jpeg", 0, 2)]


def build_eyeq(root: Path) -> Path:
    """EyeQ labels over EyePACS images: the images are the same pixels as build_eyepacs'."""
    write_csv(root / "Label_EyeQ_train.csv", ["", "image", "quality", "DR_grade"],
              [[i, *r] for i, r in enumerate(EYEQ_TRAIN)])
    write_csv(root / "Label_EyeQ_test.csv", ["", "image", "quality", "DR_grade"],
              [[i, *r] for i, r in enumerate(EYEQ_TEST)])
    for name, _, _ in EYEQ_TRAIN:
        write_image(root / "train" / name, f"eyepacs-{name.rsplit('.', 1)[0]}")
    for name, _, _ in EYEQ_TEST:
        write_image(root / "test" / name, f"eyepacs-{name.rsplit('.', 1)[0]}")
    return root


IDRID_TRAIN = [("IDRiD_001", 3, 2), ("IDRiD_002", 0, 0), ("IDRiD_003", 2, 1), ("IDRiD_004", 4, 2)]
IDRID_TEST = [("IDRiD_001", 4, 1), ("IDRiD_002", 0, 0)]


def build_idrid(root: Path) -> Path:
    base = root / "B. Disease Grading"
    # the real CSVs: a trailing space in 'Risk of macular edema ', empty trailing columns, a blank last line
    header = ["Image name", "Retinopathy grade", "Risk of macular edema "] + [""] * 8
    for fname, rows_ in (("a. IDRiD_Disease Grading_Training Labels.csv", IDRID_TRAIN),
                         ("b. IDRiD_Disease Grading_Testing Labels.csv", IDRID_TEST)):
        write_csv(base / "2. Groundtruths" / fname, header, [list(r) + [""] * 8 for r in rows_] + [[""] * 11])
    for name, _, _ in IDRID_TRAIN:
        write_image(base / "1. Original Images" / "a. Training Set" / f"{name}.jpg", f"idrid-train-{name}")
    for name, _, _ in IDRID_TEST:
        write_image(base / "1. Original Images" / "b. Testing Set" / f"{name}.jpg", f"idrid-test-{name}")
    return root


MESSIDOR = [("20051020_43808_0100_PP.png", 0, 0, 1), ("20051020_43832_0100_PP.png", 1, 0, 1),
            ("IMG0001.jpg", 2, 1, 1), ("IMG0002.jpg", "", "", 0), ("IMG0003.jpg", 4, 1, 1)]


def build_messidor2(root: Path) -> Path:
    write_csv(root / "messidor_data.csv", ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"],
              MESSIDOR)
    for name, *_ in MESSIDOR:
        # the CSV says .jpg, the Brest images on disk are .JPG
        on_disk = name[:-4] + ".JPG" if name.startswith("IMG") else name
        write_image(root / "IMAGES" / on_disk, f"messidor-{name}")
    return root


ODIR = [  # ID, age, sex, left keywords, right keywords, N D G C A H M O
    (0, 69, "Female", "cataract", "normal fundus", [0, 0, 0, 1, 0, 0, 0, 0]),
    (1, 57, "Male", "normal fundus", "normal fundus", [1, 0, 0, 0, 0, 0, 0, 0]),
    (2, 42, "Male", "laser spot，moderate non proliferative retinopathy", "moderate non proliferative retinopathy",
     [0, 1, 0, 0, 0, 0, 0, 1]),
    (4, 53, "Male", "macular epiretinal membrane", "lens dust，normal fundus", [0, 0, 0, 0, 0, 0, 0, 1]),
    (5, 50, "Female", "suspected glaucoma", "branch retinal vein occlusion", [0, 0, 1, 0, 0, 0, 0, 1]),
    (6, 60, "Male", "low image quality", "pathological myopia", [0, 0, 0, 0, 0, 0, 1, 0]),
    (8, 66, "Female", "dry age-related macular degeneration，suspected retinitis pigmentosa", "severe proliferative diabetic retinopathy",
     [0, 1, 0, 0, 1, 0, 0, 1]),
]


def build_odir5k(root: Path) -> Path:
    base = root / "ODIR-5K"
    rows_ = [["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
              "Right-Diagnostic Keywords", "N", "D", "G", "C", "A", "H", "M", "O"]]
    for pid, age, sex, lk, rk, flags in ODIR:
        rows_.append([pid, age, sex, f"{pid}_left.jpg", f"{pid}_right.jpg", lk, rk, *flags])
        for side in ("left", "right"):
            write_image(base / "Training Images" / f"{pid}_{side}.jpg", f"odir-{pid}_{side}")
    write_xlsx(base / "data.xlsx", rows_)
    return root


RFMID_DISEASES = ["DR", "ARMD", "MH", "DN", "MYA", "BRVO", "TSLN", "ERM", "LS", "MS", "CSR", "ODC", "CRVO", "TV", "AH",
                  "ODP", "ODE", "ST", "AION", "PT", "RT", "RS", "CRS", "EDN", "RPEC", "MHL", "RP", "CWS", "CB", "ODPM",
                  "PRH", "MNF", "HR", "CRA", "TD", "CME", "PTCR", "CF", "VH", "MCA", "VS", "BRAO", "PLQ", "HPED", "CL"]
RFMID = {"train": [(1, ["DR"]), (2, []), (3, ["ARMD", "ODC"]), (4, ["BRVO"])],
         "val": [(1, ["MYA"]), (2, [])],
         "test": [(1, ["HR"]), (2, ["CRVO", "TSLN"])]}


def build_rfmid(root: Path) -> Path:
    layout = {"train": ("Training_Set/Training_Set", "RFMiD_Training_Labels.csv", "Training"),
              "val": ("Evaluation_Set/Evaluation_Set", "RFMiD_Validation_Labels.csv", "Validation"),
              "test": ("Test_Set/Test_Set", "RFMiD_Testing_Labels.csv", "Test")}
    for split, entries in RFMID.items():
        folder, csv_name, img_dir = layout[split]
        rows_ = [[i, int(bool(pos))] + [int(d in pos) for d in RFMID_DISEASES] for i, pos in entries]
        write_csv(root / folder / csv_name, ["ID", "Disease_Risk"] + RFMID_DISEASES, rows_)
        for i, _ in entries:
            write_image(root / folder / img_dir / f"{i}.png", f"rfmid-{split}-{i}")
    return root


PAPILA = {"od": [("#002", 0), ("#004", 1), ("#005", 2)], "os": [("#002", 0), ("#004", 1), ("#005", 0)]}


def build_papila(root: Path) -> Path:
    for tag, entries in PAPILA.items():
        rows_ = [[f"PAPILA clinical data ({tag.upper()})"],  # title row above the header
                 ["ID", "Age", "Gender", "Diagnosis", "Refractive_Defect", None, None, "Phakic/Pseudophakic",
                  "IOP", None, "Pachymetry", "Axial_Length", "VF_MD"],
                 [None, None, None, None, "dioptre_1", "dioptre_2", "astigmatism", None, "Pneumatic", "Perkins"]]
        for pid, dx in entries:
            rows_.append([pid, 60, 0, dx, -1.5, -1.25, 90, 0, 14, 15, 550, 23.4, -1.2])
            write_image(root / "FundusImages" / f"RET{pid[1:]}{tag.upper()}.jpg", f"papila-{pid}{tag}")
        write_xlsx(root / "ClinicalData" / f"patient_data_{tag}.xlsx", rows_)
    # segmentation images that are not photographs (must not be reported as unlabelled)
    write_image(root / "ExpertsSegmentations" / "ImagesWithContours" / "RET002OD.jpg", "papila-contour")
    return root


JSIEC = {"0.0.Normal": 2, "1.0.DR2": 1, "1.1.DR3": 1, "2.0.BRVO": 1, "9.Pathological myopia": 1,
         "10.0.Possible glaucoma": 1, "0.1.Tessellated fundus": 1, "27.Laser Spots": 1}


def build_jsiec(root: Path) -> Path:
    k = 0
    for folder, n in JSIEC.items():
        for _ in range(n):
            k += 1
            write_image(root / "1000images" / folder / f"{k:04d}.jpg", f"jsiec-{k}")
    return root


GLAUCOMA_FUNDUS = {"normal_control": 3, "early_glaucoma": 2, "advanced_glaucoma": 1}


def build_glaucoma_fundus(root: Path) -> Path:
    for folder, n in GLAUCOMA_FUNDUS.items():
        for k in range(n):
            write_image(root / folder / f"{folder[:2].upper()}_{k + 1:03d}.png", f"gf-{folder}-{k}")
    return root


def build_refuge(root: Path) -> Path:
    tr = root / "REFUGE-Training400" / "Training400"
    for name in ("g0001", "g0002"):
        write_image(tr / "Glaucoma" / f"{name}.jpg", f"refuge-{name}")
    for name in ("n0001", "n0002", "n0003"):
        write_image(tr / "Non-Glaucoma" / f"{name}.jpg", f"refuge-{name}")
    write_image(root / "Annotation-Training400" / "Disc_Cup_Masks" / "Glaucoma" / "g0001.bmp", "mask")
    for name in ("V0001", "V0002"):
        write_image(root / "REFUGE-Validation400" / f"{name}.jpg", f"refuge-{name}")
    write_image(root / "REFUGE-Validation400-GT" / "Disc_Cup_Masks" / "V0001.bmp", "mask")
    write_xlsx(root / "REFUGE-Validation400-GT" / "Fovea_locations.xlsx",
               [["ID", "ImgName", "Fovea_X", "Fovea_Y", "Glaucoma Label"], [1, "V0001.jpg", 1057.9, 1076.6, 1],
                [2, "V0002.jpg", 1010.2, 1040.1, 0]])
    for name in ("T0001", "T0002"):
        write_image(root / "REFUGE-Test400" / "Test400" / f"{name}.jpg", f"refuge-{name}")
    write_xlsx(root / "REFUGE-Test-GT" / "Glaucoma_label_and_Fovea_location.xlsx",
               [["ID", "ImgName", "Fovea_X", "Fovea_Y", "Label(Glaucoma=1)"], [1, "T0001.jpg", 1000.0, 1000.0, 0],
                [2, "T0002.jpg", 990.0, 1020.0, 1]])
    return root


DEEPDRID = {"train": [("1", "1_l1", 2, ""), ("1", "1_l2", 2, ""), ("1", "1_r1", "", 1), ("1", "1_r2", "", 1),
                      ("2", "2_l1", 0, ""), ("2", "2_r1", "", 0)],
            "val": [("3", "3_l1", 4, ""), ("3", "3_r1", "", 3)]}


def build_deepdrid(root: Path) -> Path:
    for split, entries in DEEPDRID.items():
        folder = "regular-fundus-training" if split == "train" else "regular-fundus-validation"
        base = root / "regular_fundus_images" / folder
        rows_ = []
        for pid, iid, left, right in entries:
            rows_.append([pid, iid, f"\\regular_fundus_images\\{folder}\\Images\\{pid}\\{iid}.jpg", left, right,
                          max(x for x in (left, right, 0) if x != "")])
            write_image(base / "Images" / pid / f"{iid}.jpg", f"deepdrid-{iid}")
        write_csv(base / f"{folder}.csv", ["patient_id", "image_id", "image_path", "left_eye_DR_Level",
                                           "right_eye_DR_Level", "patient_DR_Level"], rows_)
    return root


RETFOUND = {"train": {"anoDR": 2, "bmildDR": 1, "cmoderateDR": 1}, "val": {"anoDR": 1, "dsevereDR": 1},
            "test": {"anoDR": 1, "eproDR": 1}}


def build_retfound(root: Path) -> Path:
    k = 0
    for split, classes in RETFOUND.items():
        for cls, n in classes.items():
            for _ in range(n):
                k += 1
                write_image(root / split / cls / f"img{k:03d}.jpg", f"retfound-{k}")
    return root


HOSPITAL = [("MRN001", "OD", "a1.png", "POAG", "train"), ("MRN001", "OS", "a2.png", "none", "train"),
            ("MRN002", "OD", "b1.png", "none", "test"), ("MRN003", "OS", "c1.png", "NTG", "train")]


def build_csv(root: Path) -> Path:
    """A hospital export: one CSV with its own column names and label codes."""
    write_csv(root / "export.csv", ["MRN", "Laterality", "File", "Dx", "Set"], HOSPITAL)
    for _, _, f, _, _ in HOSPITAL:
        write_image(root / "img" / f, f"hospital-{f}")
    return root


def build_imagefolder(root: Path) -> Path:
    for cls, n in {"healthy": 2, "cataract": 2}.items():
        for k in range(n):
            write_image(root / cls / f"{cls}_{k}.png", f"if-{cls}-{k}")
    return root


def build_manifest(root: Path) -> Path:
    for i in range(3):
        write_image(root / "images" / f"p{i}.png", f"manifest-{i}")
    write_csv(root / "my_manifest.csv", ["image_id", "path", "patient_id", "eye", "split", "glaucoma"],
              [["p0", "images/p0.png", "A", "L", "train", 1], ["p1", "images/p1.png", "A", "R", "train", 0],
               ["p2", "images/p2.png", "B", "L", "", 0]])
    return root


BUILDERS = {
    "aptos2019": build_aptos2019, "eyepacs": build_eyepacs, "eyeq": build_eyeq, "idrid": build_idrid,
    "messidor2": build_messidor2, "odir5k": build_odir5k, "rfmid": build_rfmid, "papila": build_papila,
    "jsiec": build_jsiec, "glaucoma_fundus": build_glaucoma_fundus, "refuge": build_refuge,
    "deepdrid": build_deepdrid, "retfound": build_retfound, "csv": build_csv, "imagefolder": build_imagefolder,
    "manifest": build_manifest,
}
EXTRA_CONFIG = {
    "csv": {"labels_file": "export.csv", "image_col": "File", "patient_col": "MRN", "eye_col": "Laterality",
            "split_col": "Set", "label_map": {"glaucoma": "Dx"}, "value_map": {"glaucoma": {"POAG": 1, "none": 0}},
            "path_template": "img/{File}"},
    "imagefolder": {"class_map": {"healthy": {"normal": 1}, "cataract": {"cataract": 1}}},
    "manifest": {"path": "my_manifest.csv"},
}


def dataset_config(name: str, root: Path) -> dict:
    """The config entry (``adapter``, ``root``, options) that reads the fixture built at ``root``."""
    return {"adapter": name, "root": str(root), **EXTRA_CONFIG.get(name, {})}


def build(name: str, root: Path) -> dict:
    """Build dataset ``name`` under ``root`` and return its config entry."""
    return dataset_config(name, BUILDERS[name](Path(root)))
