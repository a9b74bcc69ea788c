"""Training throughput: the input pipeline alone (``--loader-only``, any machine), or (a) the
model alone on on-device synthetic batches vs (b) the real engine reading the stored training
images from disk with the training augmentation on.

Loader only, 512 px, per worker core (goals: >= 250 img/s as a CUDA job runs it, the CPU
path >= 40 img/s, both beside today's pipeline in the same run):
    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --loader-only --repeats 5
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
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from skimage import data as skdata
from torch.utils.data import default_collate

from fundusfm.models import create
from fundusfm.preprocess.io import FORMATS, write_image
from fundusfm.task import TaskSpec
from fundusfm.train.config import DEFAULT_AUGMENT, resolve_hparams
from fundusfm.train.data import CpuAugment, FundusDataset
from fundusfm.train.engine import RunSpec, Trainer
from fundusfm.train.sets import mix_seed

TASK = {"type": "binary", "label": "abnormal", "classes": ["n", "a"]}


def fundus_array(size: int, rng: np.random.Generator) -> np.ndarray:
    """skimage's retina photograph at ``size`` px with a colour cast and sensor-like noise in the
    FOV (a noiseless copy compresses and decodes unrealistically well)."""
    base = np.asarray(Image.fromarray(skdata.retina()).resize((size, size), Image.BILINEAR)).astype(np.float32)
    fov = base.sum(2, keepdims=True) > 30
    noisy = base + rng.integers(-20, 20, size=3) + rng.normal(0, 3, base.shape) * fov
    return np.clip(noisy * fov, 0, 255).astype(np.uint8)


def write_images(root: Path, n: int, size: int, fmt: str = "jpg", seed: int = 0) -> Path:
    """``n`` stored training copies in ``fmt`` (as preprocessing writes them) + a task table."""
    rng = np.random.default_rng(seed)
    bases = [fundus_array(size, rng) for _ in range(min(n, 16))]
    rows = []
    for i in range(n):
        img = np.roll(bases[i % len(bases)], i // len(bases), axis=1)  # distinct files, same statistics
        path = root / f"img_{i:05d}.{fmt}"
        write_image(img, path, fmt)
        rows.append({"dataset": "bench", "image_id": str(i), "patient_id": str(i), "eye": "U", "image": str(path),
                     "abnormal": i % 2, "fold0": "train" if i < n - 8 else "val"})
    table = root / f"table_{fmt}.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


# ----------------------------------------------------------------------------- loader only


def legacy_sample(path: str, size: int, transform, seed: int) -> torch.Tensor:
    """Today's (before issue 17) worker: Pillow decode + torchvision's RandomResizedCrop, flips,
    RandomRotation and ColorJitter (HSV hue), per-sample seeded."""
    with Image.open(path) as im:
        im.draft("RGB", (size, size))
        arr = np.asarray(im.convert("RGB"))
    img = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(img)


def legacy_transform(size: int, aug: dict):
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(aug["scale_min"], 1.0), ratio=tuple(aug["ratio"]), antialias=True),
        v2.RandomHorizontalFlip(aug["hflip"]), v2.RandomVerticalFlip(aug["vflip"]),
        v2.RandomRotation(aug["rotation"], interpolation=v2.InterpolationMode.BILINEAR, fill=0),
        v2.ColorJitter(aug["brightness"], aug["contrast"], aug["saturation"], aug["hue"]),
    ])


def per_core_rate(fn, n: int, seconds: float, per_call: int = 1) -> float:
    """Images/s of ``fn(i)`` (``per_call`` images each) on this single-threaded process (CPU
    time, so a busy machine does not count against it), for ``seconds`` of CPU time or more."""
    t0, done = time.process_time(), 0
    while done < n or time.process_time() - t0 < seconds:
        fn(done)
        done += 1
    return done * per_call / (time.process_time() - t0)


def loader_rate(table: Path, out: Path, size: int, bs: int, augment_device: str) -> float:
    """Images/s one worker process delivers through the engine's own DataLoader (batch
    sampler, per-sample seeds, collate), wall clock: the main process only receives."""
    hp = resolve_hparams({"arch": "resnet10t", "img_size": size, "batch_size": bs, "epochs": 100,
                          "augment_device": augment_device, "log_every": 0, "imbalance": "none"})
    spec = RunSpec(table=str(table), fold=0, fraction=1.0, seed=0, task=TaskSpec.from_dict(TASK), init="random",
                   hparams=hp, out=str(out), device="cpu", workers=1)
    tr = Trainer(spec)
    tr._setup()
    tr.train_sampler.set_epoch(0)
    it = iter(tr.train_loader)
    next(it)  # worker started
    t0, n = time.perf_counter(), 0
    for x, _, _ in it:
        n += x.shape[0]
    rate = n / (time.perf_counter() - t0)
    del it, tr
    return rate


def loader_only(a) -> None:
    size, n_files = a.img_size, max(a.batch_size * 6, 64)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    aug = DEFAULT_AUGMENT
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        root = Path(tmp)
        tables = {fmt: write_images(root / fmt, n_files, size, fmt) if (root / fmt).mkdir() is None else None
                  for fmt in FORMATS}
        paths = {fmt: pd.read_csv(t)["image"].tolist() for fmt, t in tables.items()}
        raw = np.lib.format.open_memmap(root / "shard.npy", "w+", np.uint8, (n_files, size, size, 3))
        for i, p in enumerate(paths["png"]):
            raw[i] = np.asarray(Image.open(p).convert("RGB"))
        raw.flush()
        raw = np.load(root / "shard.npy", mmap_mode="r")
        sizes = {fmt: np.mean([os.path.getsize(p) for p in ps]) / 1024 for fmt, ps in paths.items()}
        sizes["raw"] = size * size * 3 / 1024
        legacy_tf = legacy_transform(size, aug)
        cpu_aug = CpuAugment(aug, size)
        ds = {fmt: FundusDataset(ps, np.zeros(len(ps), np.int64), size) for fmt, ps in paths.items()}
        ds_cpu = {fmt: FundusDataset(ps, np.zeros(len(ps), np.int64), size, cpu_aug) for fmt, ps in paths.items()}
        seed = lambda i: mix_seed(0, 0, i, 2)  # noqa: E731
        k = lambda i: i % n_files  # noqa: E731
        bs = a.batch_size

        def cuda_batch(i: int):  # what a CUDA job's worker does per batch: decode, then collate
            return default_collate([ds["jpg"][(i * bs + j) % n_files] for j in range(bs)])

        rows = {
            "today: PNG, Pillow + torchvision augmentation in the worker (baseline)":
                lambda i: legacy_sample(paths["png"][k(i)], size, legacy_tf, seed(i)),
            "CUDA job worker: decode jpg (q95 4:4:4, the default) + collate": (cuda_batch, bs),
            "decode only: png (zlib 1, lossless), OpenCV": lambda i: ds["png"][k(i)],
            "decode only: raw uint8 shard (memory-mapped .npy)": lambda i: torch.from_numpy(np.array(raw[k(i)])),
            "CPU path: decode jpg + fused warp + colour matrix": lambda i: ds_cpu["jpg"][(k(i), seed(i))],
            "CPU path, lossless: decode png + fused warp + colour matrix": lambda i: ds_cpu["png"][(k(i), seed(i))],
        }
        rates: dict[str, list[float]] = {r: [] for r in rows}
        rates["CUDA job, engine DataLoader, 1 worker (wall clock)"] = []
        rates["CPU path, engine DataLoader, 1 worker (wall clock)"] = []
        cpu_now = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        for rep in range(a.repeats):
            if cpu_now:
                os.sched_setaffinity(0, {cpu_now[-1]})  # one core: figures per core
            for name, fn in rows.items():
                fn, per = fn if isinstance(fn, tuple) else (fn, 1)
                rates[name].append(per_core_rate(fn, max(1, 16 // per), a.seconds, per))
            if cpu_now:
                os.sched_setaffinity(0, set(cpu_now))
            rates["CUDA job, engine DataLoader, 1 worker (wall clock)"].append(
                loader_rate(tables["jpg"], root / "out", size, a.batch_size, "gpu"))
            rates["CPU path, engine DataLoader, 1 worker (wall clock)"].append(
                loader_rate(tables["jpg"], root / "out", size, a.batch_size, "cpu"))
            print(f"repeat {rep + 1}/{a.repeats} done (load average {os.getloadavg()[0]:.2f})", flush=True)
    base = statistics.median(rates[next(iter(rows))])
    print(f"\ninput pipeline at {size} px, images/s per worker core (median of {a.repeats} repeats "
          f"[min-max]; in-process rows in CPU time on one pinned core, single-threaded)")
    print(f"stored size per image: jpg {sizes['jpg']:.0f} KiB, png {sizes['png']:.0f} KiB, raw {sizes['raw']:.0f} KiB")
    print(f"{'':64s} {'img/s/core':>10s} {'range':>15s} {'x today':>8s}")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"{name:64s} {med:10.1f} {min(r):7.1f}-{max(r):<7.1f} {med / base:8.1f}")
    cuda = statistics.median(rates["CUDA job worker: decode jpg (q95 4:4:4, the default) + collate"])
    cpu = statistics.median(rates["CPU path: decode jpg + fused warp + colour matrix"])
    print(f"goals: CUDA job >= 250 img/s per core: {cuda:.0f} ({'met' if cuda >= 250 else 'NOT met'}); "
          f"CPU path >= 40 img/s per core and >= 4x today: {cpu:.0f}, {cpu / base:.1f}x "
          f"({'met' if cpu >= 40 and cpu / base >= 4 else 'NOT met'})")


def bench_model(arch, size, bs, steps, warmup, device, amp, channels_last, compile: bool = False) -> float:
    """(a) images/s of forward+backward+AdamW on a batch that already sits on the device."""
    model = create(arch, 2, "paper", img_size=size).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    net = torch.compile(model) if compile else model
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
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return bs * steps / (time.perf_counter() - t0)


def bench_engine(table, out, arch, size, bs, steps, device, amp, channels_last, workers, aug_device,
                 compile: bool = False) -> float:
    """(b) images/s of the engine's train_one_epoch (second epoch, after warm-up) reading from disk."""
    hp = resolve_hparams({"arch": arch, "img_size": size, "batch_size": bs, "epochs": 100, "amp": amp,
                          "channels_last": channels_last, "augment_device": aug_device,
                          "imbalance": "none", "compile": compile})  # log_every as a real job (its NaN check syncs)
    spec = RunSpec(table=str(table), fold=0, fraction=1.0, seed=0,
                   task=TaskSpec.from_dict(TASK),
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
    p.add_argument("--augment-device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: on the device for CUDA, in the workers otherwise (the engine default)")
    p.add_argument("--format", choices=sorted(FORMATS), default="jpg", help="stored training-copy format")
    p.add_argument("--loader-only", action="store_true", help="the input pipeline alone, per worker core")
    p.add_argument("--repeats", type=int, default=3, help="--loader-only: interleaved repeats")
    p.add_argument("--seconds", type=float, default=1.5, help="--loader-only: CPU seconds per figure")
    p.add_argument("--workdir", default=None, help="where to write the images (default: a temp dir)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.loader_only:
        return loader_only(a)
    dev = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cl = not a.no_channels_last
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        n = a.batch_size * a.steps + 8
        table = write_images(Path(tmp), n, a.img_size, a.format)
        model_ips = bench_model(a.arch, a.img_size, a.batch_size, a.steps, a.warmup, dev, a.amp, cl)
        engine_ips = bench_engine(table, Path(tmp) / "out", a.arch, a.img_size, a.batch_size, a.steps, dev, a.amp,
                                  cl, a.workers, a.augment_device)
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"device={dev} arch={a.arch} img_size={a.img_size} batch={a.batch_size} amp={a.amp} "
          f"channels_last={cl} augment_device={a.augment_device} workers={a.workers}")
    print(f"(a) model alone, synthetic on-device batches: {model_ips:8.1f} images/s")
    print(f"(b) engine reading {a.img_size}-px {a.format} training copies, augmentation on: {engine_ips:8.1f} images/s")
    print(f"(b)/(a) = {engine_ips / model_ips:.1%}   (goal on GPU: >= 95%)")
    print(f"peak RSS: main process {rss_self:.0f} MiB, largest worker {rss_children:.0f} MiB")


if __name__ == "__main__":
    main()
