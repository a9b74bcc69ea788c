"""Throughput of ``fundusfm predict`` on full-size fundus photographs, preprocessing included.

Writes ``--n`` 2144x1424 JPEGs (skimage's real retina photograph in a camera frame,
jittered per image), exports a release of a ``--arch`` model at ``--img-size`` (random
weights: speed does not depend on them) with the study's preprocessing at ``--size`` px,
then times ``predict_inputs`` (decode, FOV crop, quality check, model) on each device.

    python benchmarks/predict_throughput.py                                   # resnet50 @ 512, CPU (+GPU)
    OMP_NUM_THREADS=2 python benchmarks/predict_throughput.py --n 16 --arch resnet10t --img-size 224

Prints images/s per device, and preprocessing alone for comparison.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata

from fundusfm.models.factory import create
from fundusfm.preprocess.pipeline import PreprocessSpec, process_image
from fundusfm.release.export import export
from fundusfm.release.loading import load_model
from fundusfm.release.predict import predict_inputs

W, H = 2144, 1424


def write_photos(root: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` JPEGs of W x H: the retina photograph (fit to the frame height) on black."""
    eye = Image.fromarray(skdata.retina()).resize((H - 40, H - 40), Image.BICUBIC)
    frame = np.zeros((H, W, 3), np.int16)
    x0 = (W - eye.width) // 2
    frame[20:20 + eye.height, x0:x0 + eye.width] = np.asarray(eye)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = np.clip(frame + rng.integers(-12, 12, size=3) * (frame.max(2, keepdims=True) > 0), 0, 255)
        p = root / f"photo_{i:04d}.jpg"
        Image.fromarray(img.astype(np.uint8)).save(p, quality=92)
        paths.append(str(p))
    return paths


def make_release(root: Path, arch: str, head: str, img_size: int, size: int) -> Path:
    run = root / "run"
    run.mkdir()
    model = create(arch, 2, head, "random", img_size=img_size).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    meta = {"arch": arch, "head": head, "num_classes": 2, "classes": ["normal", "abnormal"], "task_type": "binary",
            "task": {"type": "binary", "label": "abnormal", "classes": ["normal", "abnormal"], "name": "pretrain"},
            "img_size": img_size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "init": "random"}
    (run / "model.json").write_text(json.dumps(meta))
    spec = root / "preprocess_spec.json"
    spec.write_text(json.dumps(asdict(PreprocessSpec(size=size))))
    return export(run, root / "release", preprocess_spec=spec, n_boot=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="photographs")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--head", default="paper")
    ap.add_argument("--img-size", type=int, default=512, help="model input size")
    ap.add_argument("--size", type=int, default=512, help="preprocessing output size")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="preprocessing processes")
    ap.add_argument("--devices", nargs="*", default=None, help="default: cpu, and cuda when present")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    devices = a.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = root / "photos"
        photos.mkdir()
        paths = write_photos(photos, a.n)
        release = make_release(root, a.arch, a.head, a.img_size, a.size)
        spec = PreprocessSpec(size=a.size)
        t = time.perf_counter()
        statuses = [process_image(p, spec)[0]["status"] for p in paths]
        pre = time.perf_counter() - t
        print(f"{a.n} photos {W}x{H} JPEG, {a.arch} ({a.head} head) @ {a.img_size} px, preprocess @ {a.size} px, "
              f"batch {a.batch_size}, {a.workers} preprocessing worker(s), torch threads {torch.get_num_threads()}")
        print(f"  preprocessing alone (1 process): {a.n / pre:8.2f} images/s  (status: "
              f"{statuses.count('ok')} ok of {len(statuses)})")
        for dev in devices:
            rel = load_model(release, device=dev)
            predict_inputs(rel, paths[: min(len(paths), a.batch_size)], batch_size=a.batch_size,
                           workers=1, progress=False)  # warm-up (cudnn, allocator)
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            df = predict_inputs(rel, paths, batch_size=a.batch_size, workers=a.workers, progress=False)
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            print(f"  fundusfm predict on {dev:5s}: {a.n / dt:8.2f} images/s  ({dt:.1f} s, "
                  f"{(df['status'] == 'ok').sum()} ok)")


if __name__ == "__main__":
    main()
