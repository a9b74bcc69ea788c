"""Speed and FOV accuracy of ``fundusfm preprocess`` on camera-sized JPEGs.

Builds JPEGs (q95) from ``skimage.data.retina()`` pasted on black camera frames —
4288x2848 (IDRiD-like, and one with the circle cut top and bottom), 2144x1424 (RFMiD-like),
1634x1634 — with the true circle known from the paste (the source circle is measured once on
the full-resolution original), or reads the peer benchmark's set with ``--images DIR``
(DIR/truth.json from /work/shared/bench/peer_preprocess_bench.py), then prints

- images/second per core for the whole step (read, decode, detect, quality, crop, resize,
  write) in one process with one thread (median of repeats per image),
- the circle centre / radius error against the truth,
- wall-clock images/second of ``preprocess_many`` with N workers (scaling).

    OMP_NUM_THREADS=1 python benchmarks/preprocess.py [--format png|jpg] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# name, canvas (w, h), FOV diameter, centre offset (dx, dy) from the canvas centre
SPECS = [
    ("idrid_4288x2848", (4288, 2848), 2720, (60, -25)),
    ("idrid_cut_4288x2848", (4288, 2848), 3300, (0, 0)),
    ("rfmid_2144x1424", (2144, 1424), 1360, (-30, 12)),
    ("square_1634x1634", (1634, 1634), 1560, (14, 22)),
]


def build_set(out: Path) -> list[dict]:
    """Write the benchmark JPEGs and return their truth circles."""
    from skimage import data

    from fundusfm.preprocess.fov import detect_fov

    src = data.retina()
    t0 = detect_fov(src)  # full-resolution source circle; mapped through the known paste
    sh, sw = src.shape[:2]
    pil = Image.fromarray(src)
    entries = []
    for name, (w, h), diam, (dx, dy) in SPECS:
        n = int(round(sw * diam / (2 * t0.r)))
        s = n / sw
        scaled = pil.resize((n, n), Image.LANCZOS)
        fcx, fcy = (t0.cx + 0.5) * s - 0.5, (t0.cy + 0.5) * s - 0.5
        ox, oy = int(round(w / 2 + dx - fcx)), int(round(h / 2 + dy - fcy))
        canvas = Image.new("RGB", (w, h))
        canvas.paste(scaled, (ox, oy))
        canvas.save(out / f"{name}.jpg", quality=95)
        entries.append(dict(name=name, file=f"{name}.jpg", w=w, h=h,
                            truth=dict(cx=fcx + ox, cy=fcy + oy, r=t0.r * s)))
    return entries


def per_core(entries, folder: Path, spec, repeats: int, out: Path):
    from fundusfm.preprocess.io import write_image
    from fundusfm.preprocess.pipeline import process_image

    rows = []
    for e in entries:
        path = str(folder / e["file"])
        row, img = process_image(path, spec)  # warm-up, and the accuracy sample
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            row, img = process_image(path, spec)
            if img is not None:
                write_image(img, out / f"{e['name']}.{spec.format}", spec.format)
            times.append(time.perf_counter() - t)
        tr = e["truth"]
        ce = math.hypot(row["fov_cx"] - tr["cx"], row["fov_cy"] - tr["cy"]) if row["fov_cx"] is not None else math.nan
        re = 100 * (row["fov_r"] - tr["r"]) / tr["r"] if row["fov_r"] is not None else math.nan
        rows.append((e["name"], 1 / statistics.median(times), ce, re, row["status"], row["quality"]))
    return rows


def scaling(entries, folder: Path, spec, workers: list[int], n_images: int):
    from fundusfm.preprocess.pipeline import preprocess_many

    big = [e for e in entries if e["name"].startswith("idrid_4288")][0]
    inputs = [(f"img{i:04d}", str(folder / big["file"])) for i in range(n_images)]
    res = []
    for n in workers:
        out = Path(tempfile.mkdtemp(prefix="ppbench_scale_"))
        t = time.perf_counter()
        preprocess_many(inputs, out, spec, workers=n, progress=False)
        res.append((n, n_images / (time.perf_counter() - t)))
        shutil.rmtree(out, ignore_errors=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", help="use this set (DIR/truth.json as written by the peer benchmark)")
    ap.add_argument("--format", default="png", choices=["png", "jpg"])
    ap.add_argument("--normalise", default="none")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--workers", default="1,2", help="comma list of worker counts for the scaling run")
    ap.add_argument("--scaling-images", type=int, default=48)
    a = ap.parse_args()
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(k, "1")
    import cv2

    cv2.setNumThreads(1)
    from fundusfm.preprocess.pipeline import PreprocessSpec

    spec = PreprocessSpec(format=a.format, normalise=a.normalise)
    tmp = Path(tempfile.mkdtemp(prefix="ppbench_"))
    if a.images:
        folder = Path(a.images)
        entries = json.loads((folder / "truth.json").read_text())["images"]
    else:
        folder = tmp
        entries = build_set(tmp)
    out = tmp / "out"
    out.mkdir()
    print(f"per core (1 process, 1 thread), size {spec.size}, format {spec.format}, normalise {spec.normalise}")
    print(f"{'image':28s} {'img/s':>7s} {'centre err px':>14s} {'radius err %':>13s}  status")
    for name, ips, ce, re, st, q in per_core(entries, folder, spec, a.repeats, out):
        print(f"{name:28s} {ips:7.1f} {ce:14.2f} {re:+13.3f}  {st}/{q}")
    ws = [int(x) for x in a.workers.split(",") if x]
    print(f"\nscaling, {a.scaling_images} x 4288x2848 via preprocess_many (wall clock, incl. pool start):")
    base = None
    for n, ips in scaling(entries, folder, spec, ws, a.scaling_images):
        base = base or ips
        print(f"  workers={n}: {ips:6.1f} img/s  (x{ips / base:.2f})")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
