"""Write a synthetic fundus dataset laid out like a public one.

``out_dir/images/<image_id>.jpg`` (JPEG quality 92) and ``out_dir/labels.csv`` with one
row per image (see :data:`LABEL_COLUMNS`), plus ``out_dir/synth.json`` (the parameters).

Patients have two eyes. Disease is drawn per patient (``prevalence`` = fraction of
patients with the disease), then per eye: DR is bilateral with grades differing by at
most 1 between eyes (a grade-1 patient may have one grade-0 eye), glaucoma / AMD /
myopia are mostly bilateral, vein occlusion affects one eye. Pigmentation and camera are
shared by a patient's two eyes, as in a real screening visit.

Every image is drawn from its own seed ``(seed, 1, patient_index, eye_index)``, so the
output is byte-identical for any number of ``workers``.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from fundusfm.synth.draw import DEFECTS, Camera, Disease, render_fundus, render_non_fundus, sample_camera
from fundusfm.fileio import write_csv

log = logging.getLogger(__name__)

DISEASES = ("dr", "glaucoma", "amd", "myopia", "rvo")
# Upstream-like default: about half of the patients have at least one disease.
DEFAULT_PREVALENCE: dict[str, float] = {"dr": 0.25, "glaucoma": 0.12, "amd": 0.10, "myopia": 0.10, "rvo": 0.06}
# Grade of a DR patient's worse eye: mild and moderate are most common, as in screening.
DR_GRADE_WEIGHTS = (0.35, 0.35, 0.18, 0.12)  # grades 1..4
JPEG_QUALITY = 92

LABEL_COLUMNS = [
    "image_id", "file", "patient_id", "eye", "dr_grade", "glaucoma", "amd", "myopia", "rvo",
    "normal", "abnormal", "defect", "fov_cx", "fov_cy", "fov_r",
    # extra ground truth, for the FOV detector and activation-map checks
    "fov_top", "fov_bottom", "width", "height", "disc_x", "disc_y", "fovea_x", "fovea_y",
]
_INT_COLUMNS = ["dr_grade", "glaucoma", "amd", "myopia", "rvo", "normal", "abnormal",
                "fov_top", "fov_bottom", "width", "height"]


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to draw one image (picklable, for worker processes)."""

    image_id: str
    patient_id: str
    eye: str  # L / R / U
    seed: tuple[int, ...]
    disease: Disease | None  # None for non-fundus images
    defect: str
    camera: Camera | None = None
    pigment: float | None = None
    scale: float = 1.0


def parse_prevalence(text: str | Mapping[str, float] | None) -> dict[str, float]:
    """``"dr=0.3,glaucoma=0.2"`` or a mapping -> full prevalence dict (defaults filled in).

    Raises ValueError naming the bad key or value.
    """
    prev = dict(DEFAULT_PREVALENCE)
    if text is None:
        return prev
    items = text.items() if isinstance(text, Mapping) else (
        part.split("=", 1) if "=" in part else (part, None) for part in str(text).split(",") if part.strip())
    for key, value in items:
        key = str(key).strip()
        if key not in DISEASES:
            raise ValueError(f"prevalence: unknown disease {key!r}; expected one of {', '.join(DISEASES)}")
        try:
            p = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"prevalence: value of {key!r} must be a number in [0, 1], got {value!r}") from None
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"prevalence: value of {key!r} must be in [0, 1], got {p}")
        prev[key] = p
    return prev


def plan_dataset(n_patients: int, seed: int, prevalence: Mapping[str, float] | str | None = None,
                 defect_rate: float = 0.04, n_non_fundus: int = 0, scale: float = 1.0) -> list[ImageSpec]:
    """Draw patients, eyes, labels and defects (no pixels): the list of images to render."""
    if n_patients < 0 or n_non_fundus < 0:
        raise ValueError(f"n_patients and n_non_fundus must be >= 0, got {n_patients}, {n_non_fundus}")
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate}")
    prev = parse_prevalence(prevalence)
    width = max(5, len(str(n_patients)))
    specs: list[ImageSpec] = []
    defects = [d for d in DEFECTS if d != "none"]
    for p in range(n_patients):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0, p]))
        pid = f"P{p:0{width}d}"
        camera = sample_camera(rng, scale)
        pigment = float(rng.beta(2, 2))
        u = rng.random(len(DISEASES))  # patient has the disease?
        both = rng.random(len(DISEASES))  # bilateral?
        first = rng.integers(0, 2, len(DISEASES))  # which eye when unilateral
        grade = 1 + int(rng.choice(4, p=DR_GRADE_WEIGHTS))
        other_grade = int(np.clip(grade + rng.choice([-1, 0, 0, 1]), 0, 4))
        u_defect = rng.random(2)
        kinds = rng.integers(0, len(defects), 2)
        bilateral_p = {"glaucoma": 0.75, "amd": 0.7, "myopia": 0.9, "rvo": 0.0}
        dr_first = int(rng.integers(0, 2))
        for e, eye in enumerate(("R", "L")):
            flags = {}
            for i, d in enumerate(DISEASES[1:], start=1):
                has = u[i] < prev[d]
                flags[d] = bool(has and (both[i] < bilateral_p[d] or first[i] == e))
            g = 0
            if u[0] < prev["dr"]:
                g = grade if e == dr_first else other_grade
            disease = Disease(dr_grade=g, **flags)
            defect = defects[int(kinds[e])] if u_defect[e] < defect_rate else "none"
            specs.append(ImageSpec(f"{pid}_{eye}", pid, eye, (seed, 1, p, e), disease, defect,
                                   camera, pigment, scale))
    for k in range(n_non_fundus):
        iid = f"X{k:05d}"
        specs.append(ImageSpec(iid, iid, "U", (seed, 2, k), None, "non_fundus", scale=scale))
    return specs


def render_spec(spec: ImageSpec) -> tuple[np.ndarray, dict]:
    """Draw one planned image; returns (RGB uint8 image, its labels row)."""
    row: dict = {"image_id": spec.image_id, "file": f"images/{spec.image_id}.jpg",
                 "patient_id": spec.patient_id, "eye": spec.eye, "defect": spec.defect}
    if spec.disease is None:
        img, truth = render_non_fundus(spec.seed, scale=spec.scale)
        row.update(width=truth.width, height=truth.height)
        return img, row
    img, truth = render_fundus(spec.seed, spec.disease, spec.eye, spec.defect, spec.camera, spec.pigment)
    d = spec.disease
    row.update(
        dr_grade=d.dr_grade, glaucoma=int(d.glaucoma), amd=int(d.amd), myopia=int(d.myopia),
        rvo=int(d.rvo), normal=int(not d.abnormal), abnormal=int(d.abnormal),
        fov_cx=round(truth.fov_cx, 2), fov_cy=round(truth.fov_cy, 2), fov_r=round(truth.fov_r, 2),
        fov_top=truth.fov_top, fov_bottom=truth.fov_bottom, width=truth.width, height=truth.height,
        disc_x=round(truth.disc_x, 2), disc_y=round(truth.disc_y, 2),
        fovea_x=round(truth.fovea_x, 2), fovea_y=round(truth.fovea_y, 2),
    )
    return img, row


def _write_one(args: tuple[ImageSpec, str]) -> dict:
    spec, out_dir = args
    img, row = render_spec(spec)
    path = os.path.join(out_dir, row["file"])
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {spec.image_id}")
    with open(path, "wb") as fh:
        fh.write(buf.tobytes())
    return row


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def labels_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> labels table with :data:`LABEL_COLUMNS` and nullable integer columns."""
    df = pd.DataFrame(rows).reindex(columns=LABEL_COLUMNS)
    for c in _INT_COLUMNS:
        df[c] = df[c].astype("Int64")
    return df


def make_dataset(out_dir: str | os.PathLike, n_patients: int, seed: int,
                 prevalence: Mapping[str, float] | str | None = None, defect_rate: float = 0.04,
                 n_non_fundus: int = 0, scale: float = 1.0, workers: int = 1,
                 overwrite: bool = False, progress: bool = True) -> pd.DataFrame:
    """Draw ``n_patients`` patients (two eyes each) plus ``n_non_fundus`` non-fundus images
    into ``out_dir`` and return the labels table (also written to ``out_dir/labels.csv``).

    Args:
        prevalence: per-patient prevalence of ``dr, glaucoma, amd, myopia, rvo`` (mapping
            or ``"dr=0.3,amd=0.2"``); missing keys take :data:`DEFAULT_PREVALENCE`.
        defect_rate: probability that an image has a quality defect (blur, dark, ...).
        workers: processes to draw with; the output does not depend on it.
        overwrite: replace an existing dataset in ``out_dir`` (else FileExistsError).
    """
    out = Path(out_dir)
    labels_path = out / "labels.csv"
    if labels_path.exists() and not overwrite:
        raise FileExistsError(f"{labels_path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    specs = plan_dataset(n_patients, seed, prevalence, defect_rate, n_non_fundus, scale)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if overwrite:  # stale images of a previous, larger dataset would otherwise linger
        for old in (out / "images").glob("*.jpg"):
            old.unlink()
    tasks = [(s, str(out)) for s in specs]
    workers = max(1, int(workers))
    log.info("drawing %d images (%d patients, %d non-fundus) into %s with %d worker(s)",
             len(specs), n_patients, n_non_fundus, out, workers)
    bar = dict(total=len(tasks), desc="synth", unit="img", disable=not progress)
    if workers == 1 or len(tasks) < 2:
        rows = [_write_one(t) for t in tqdm(tasks, **bar)]
    else:
        chunk = max(1, min(16, math.ceil(len(tasks) / (workers * 4))))
        with mp.get_context("fork" if hasattr(os, "fork") else "spawn").Pool(workers, _init_worker) as pool:
            rows = list(tqdm(pool.imap(_write_one, tasks, chunksize=chunk), **bar))
    df = labels_frame(rows)
    write_csv(labels_path, df)
    params = {"n_patients": n_patients, "seed": seed, "prevalence": parse_prevalence(prevalence),
              "defect_rate": defect_rate, "n_non_fundus": n_non_fundus, "scale": scale,
              "jpeg_quality": JPEG_QUALITY}
    (out / "synth.json").write_text(json.dumps(params, indent=2) + "\n")
    return df


def summarize(df: pd.DataFrame) -> str:
    """One line of counts per label, e.g. for the CLI."""
    fundus = df[df["defect"] != "non_fundus"]
    parts = [f"images={len(df)}", f"patients={fundus['patient_id'].nunique()}",
             f"normal={int(fundus['normal'].sum())}", f"abnormal={int(fundus['abnormal'].sum())}"]
    parts += [f"dr{g}={int((fundus['dr_grade'] == g).sum())}" for g in range(1, 5)]
    parts += [f"{c}={int(fundus[c].sum())}" for c in ("glaucoma", "amd", "myopia", "rvo")]
    counts = df["defect"].value_counts()
    parts += [f"{d}={int(counts.get(d, 0))}" for d in (*DEFECTS[1:], "non_fundus")]
    return " ".join(parts)
