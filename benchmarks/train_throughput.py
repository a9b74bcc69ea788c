"""Training throughput: (a) the model alone on on-device synthetic batches vs (b) the real
engine reading preprocessed images from disk with the training augmentation on.

GPU (the goal: b >= 95% of a):
    python benchmarks/train_throughput.py                      # resnet50, 512 px, bf16, batch 64
CPU (small figures):
    OMP_NUM_THREADS=2 python benchmarks/train_throughput.py --arch resnet10t --img-size 96 \
        --batch-size 16 --steps 8 --device cpu --workers 1
Prints images/s of (a) and (b), their ratio, and the peak RSS of the process and its workers.
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from skimage import data as skdata

from fundusfm.models import create
from fundusfm.train.config import TaskSpec, resolve_hparams
from fundusfm.train.engine import RunSpec, Trainer


def write_images(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` fundus PNGs at ``size`` px (jittered copies of skimage's retina photograph) + a task table."""
    base = Image.fromarray(skdata.retina()).resize((size, size), Image.BILINEAR)
    arr = np.asarray(base).astype(np.int16)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = np.clip(arr + rng.integers(-20, 20, size=3), 0, 255).astype(np.uint8)
        path = root / f"img_{i:05d}.png"
        Image.fromarray(img).save(path, compress_level=1)
        rows.append({"dataset": "bench", "image_id": str(i), "patient_id": str(i), "eye": "U", "image": str(path),
                     "abnormal": i % 2, "fold0": "train" if i < n - 8 else "val"})
    table = root / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def bench_model(arch, size, bs, steps, warmup, device, amp, channels_last) -> float:
    """(a) images/s of forward+backward+AdamW on a batch that already sits on the device."""
    model = create(arch, 2, "paper").to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (bs,), device=device)
    use_amp = device.type == "cuda" and amp == "bf16"
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return bs * steps / (time.perf_counter() - t0)


def bench_engine(table, out, arch, size, bs, steps, device, amp, channels_last, workers, aug_device) -> float:
    """(b) images/s of the engine's train_one_epoch (second epoch, after warm-up) reading from disk."""
    hp = resolve_hparams({"arch": arch, "img_size": size, "batch_size": bs, "epochs": 100, "amp": amp,
                          "channels_last": channels_last, "augment_device": aug_device, "log_every": 0,
                          "imbalance": "none"})
    spec = RunSpec(table=str(table), fold=0, fraction=1.0, seed=0,
                   task=TaskSpec.from_dict({"type": "binary", "label": "abnormal", "classes": ["n", "a"]}),
                   init="random", hparams=hp, out=str(out), device=device.type, workers=workers)
    tr = Trainer(spec)
    tr._setup()
    tr.train_one_epoch(0)  # warm-up: workers start, cudnn picks kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tr.train_one_epoch(1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return bs * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--img-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps (the engine epoch has this many)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", choices=("bf16", "none"), default="bf16")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: engine default)")
    p.add_argument("--augment-device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--workdir", default=None, help="where to write the images (default: a temp dir)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dev = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cl = not a.no_channels_last
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        n = a.batch_size * a.steps + 8
        table = write_images(Path(tmp), n, a.img_size)
        model_ips = bench_model(a.arch, a.img_size, a.batch_size, a.steps, a.warmup, dev, a.amp, cl)
        engine_ips = bench_engine(table, Path(tmp) / "out", a.arch, a.img_size, a.batch_size, a.steps, dev, a.amp,
                                  cl, a.workers, a.augment_device)
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"device={dev} arch={a.arch} img_size={a.img_size} batch={a.batch_size} amp={a.amp} "
          f"channels_last={cl} augment_device={a.augment_device} workers={a.workers}")
    print(f"(a) model alone, synthetic on-device batches: {model_ips:8.1f} images/s")
    print(f"(b) engine reading {a.img_size}-px PNGs from disk, augmentation on: {engine_ips:8.1f} images/s")
    print(f"(b)/(a) = {engine_ips / model_ips:.1%}   (goal on GPU: >= 95%)")
    print(f"peak RSS: main process {rss_self:.0f} MiB, largest worker {rss_children:.0f} MiB")


if __name__ == "__main__":
    main()
