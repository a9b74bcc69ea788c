"""One-shot GPU check of the training input pipeline (run through benchmarks/gpu_check.sh).

One table, one run: images/s of (a) the model alone on on-device batches and (b) the real
engine (``Trainer.train_one_epoch``: its DataLoader, workers decoding the stored training
copies, augmentation on the device, bf16, channels_last) reading the same kind of files
preprocessing writes, for ResNet50 at 512 px and one ViT (vit_base_patch16_224), eager and
torch.compile; (c) timm's own loader (``create_dataset`` + ``create_loader`` with its GPU
prefetcher, as /work/shared/bench/gpu_loader_anchor.py runs it) reading the same files and
feeding the same ResNet50; the ratios to (a) and the peak GPU memory of every row.
Goal: (b) >= 95 % of (a) for ResNet50 at 512 px, eager and compiled.

``--smoke`` runs every row end to end on the CPU with tiny models, images and steps (under a
minute) so CI can check the script; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import bench_engine, bench_model, write_images  # noqa: E402

FULL = {"models": [("resnet50", 512), ("vit_base_patch16_224", 224)], "batch": 64, "steps": 30, "warmup": 10}
SMOKE = {"models": [("resnet10t", 64), ("test_vit", 64)], "batch": 8, "steps": 2, "warmup": 1}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _reset(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch._dynamo.reset()


def _peak_mib(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else None


def timm_peer(files: list[str], root: Path, arch: str, size: int, bs: int, warmup: int, dev: torch.device,
              workers: int) -> float:
    """images/s of timm's loader (its default training transform: RandomResizedCrop + flip)
    feeding ``arch`` in bf16, channels_last, fused AdamW: the loop of gpu_loader_anchor.py."""
    from timm.data import create_dataset, create_loader

    from fundusfm.models import create

    folder = root / "timm_imagefolder"
    for i, f in enumerate(files):  # the engine's own files, in timm's class-folder layout
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        os.symlink(f, folder / f"c{i % 2}" / Path(f).name)
    model = create(arch, 2, "paper", img_size=size).to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if dev.type == "cuda" else {}))
    ds = create_dataset("", root=str(folder), is_training=True)
    cuda = dev.type == "cuda"
    loader = create_loader(ds, input_size=(3, size, size), batch_size=bs, is_training=True, use_prefetcher=cuda,
                           num_workers=workers, persistent_workers=workers > 0, pin_memory=cuda, device=dev,
                           hflip=0.5)
    n, t0 = 0, None
    for epoch in range(2):
        for i, (x, y) in enumerate(loader):
            if epoch == 0 and i == warmup:
                _sync(dev)
                t0, n = time.perf_counter(), 0
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            n += x.shape[0]
    _sync(dev)
    rate = n / (time.perf_counter() - t0)
    del loader
    return rate


def measure(tmp: Path, cfg: dict, dev: torch.device, workers, peer_workers: int, budget: float, t_start: float,
            emit) -> None:
    """Every row of the table; a row that fails is reported with its error, the others still run."""
    import pandas as pd

    bs, steps, warmup = cfg["batch"], cfg["steps"], cfg["warmup"]
    tables = {}
    for size in sorted({s for _, s in cfg["models"]}):
        (tmp / str(size)).mkdir()
        tables[size] = write_images(tmp / str(size), bs * steps + 8, size, "jpg")
    print(f"gpu_check: {bs * steps + 8} stored jpg training copies per size written "
          f"({time.time() - t_start:.0f} s)", flush=True)
    for arch, size in cfg["models"]:
        for compiled in (False, True):
            mode = "compile" if compiled else "eager"
            base = {"model": arch, "size": size, "mode": mode}
            if time.time() - t_start > budget:
                emit({**base, "error": f"skipped: past the {budget:.0f} s budget"})
                continue
            try:
                _reset(dev)
                model_ips = bench_model(arch, size, bs, steps, warmup, dev, "bf16", True, compiled)
                model_mem = _peak_mib(dev)
                _reset(dev)
                engine_ips = bench_engine(tables[size], tmp / f"out_{arch}_{mode}", arch, size, bs, steps, dev,
                                          "bf16", True, workers, "gpu", compiled)  # = "auto" on CUDA
            except (TimeoutError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - one broken row must not lose the table
                emit({**base, "error": f"{type(e).__name__}: {e}"[:300]})
                continue
            emit({**base, "model_alone": round(model_ips, 1), "engine": round(engine_ips, 1),
                  "engine_ratio": round(engine_ips / model_ips, 3), "peak_mib_model": model_mem,
                  "peak_mib_engine": _peak_mib(dev)})
            if arch == cfg["models"][0][0] and not compiled:
                try:
                    _reset(dev)
                    peer = timm_peer(pd.read_csv(tables[size])["image"].tolist(), tmp, arch, size, bs, warmup, dev,
                                     peer_workers)
                except (TimeoutError, KeyboardInterrupt):
                    raise
                except Exception as e:  # noqa: BLE001
                    emit({**base, "mode": "eager, timm loader", "error": f"{type(e).__name__}: {e}"[:300]})
                    continue
                emit({**base, "mode": "eager, timm loader", "model_alone": round(model_ips, 1),
                      "engine": round(peer, 1), "engine_ratio": round(peer / model_ips, 3),
                      "peak_mib_model": model_mem, "peak_mib_engine": _peak_mib(dev)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny end-to-end run on the CPU (CI)")
    p.add_argument("--workers", type=int, default=None, help="engine loader workers (default: the engine's)")
    p.add_argument("--peer-workers", type=int, default=None, help="timm loader workers (default: the anchor's)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--budget", type=float, default=420.0, help="seconds after which no new row starts")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = SMOKE if a.smoke else FULL
    if a.smoke:
        dev = torch.device("cpu")
        torch.set_num_threads(1)
        # CPU inductor compiles take minutes: the smoke run traces with dynamo only
        _compile = torch.compile
        torch.compile = lambda m, **kw: _compile(m, backend="eager", **kw)
        workers, peer_workers = a.workers if a.workers is not None else 1, a.peer_workers or 1
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device (use --smoke on a CPU machine)")
        dev = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        workers = a.workers
        peer_workers = a.peer_workers or min(14, (os.cpu_count() or 4) - 2)
    bs, steps = cfg["batch"], cfg["steps"]
    t_start = time.time()
    rows: list[dict] = []

    def emit(row: dict) -> None:
        row["elapsed_s"] = round(time.time() - t_start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)

    def on_term(signum, _frame):
        raise TimeoutError(f"signal {signum} (time limit)")

    signal.signal(signal.SIGTERM, on_term)
    try:
        with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
            measure(Path(tmp), cfg, dev, workers, peer_workers, a.budget, t_start, emit)
    except (TimeoutError, KeyboardInterrupt) as e:
        print(f"gpu_check: stopped by {e}; the table holds the rows measured so far", flush=True)
    dev_name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (smoke)"
    print(f"\ngpu_check on {dev_name}, batch {bs}, bf16, channels_last, {steps} timed steps; engine workers "
          f"{workers if workers is not None else 'default'}, timm loader workers {peer_workers}; "
          f"total {time.time() - t_start:.0f} s")
    print(f"{'model':22s} {'px':>4s} {'mode / feed':20s} {'model alone':>11s} {'fed':>9s} {'fed/alone':>9s} "
          f"{'peak MiB alone':>14s} {'peak MiB fed':>12s}")
    for r in rows:
        feed = r["mode"] if "timm" in r["mode"] else f"{r['mode']}, engine"
        if "error" in r:
            print(f"{r['model']:22s} {r['size']:4d} {feed:20s} {r['error']}")
            continue
        print(f"{r['model']:22s} {r['size']:4d} {feed:20s} {r['model_alone']:11.1f} {r['engine']:9.1f} "
              f"{r['engine_ratio']:9.1%} {str(r['peak_mib_model']):>14s} {str(r['peak_mib_engine']):>12s}")
    if not a.smoke:
        goal = [r for r in rows if r["model"] == "resnet50" and "timm" not in r["mode"]]
        ok = len(goal) == 2 and all(r.get("engine_ratio", 0) >= 0.95 for r in goal)
        print(f"goal: engine >= 95% of model alone for resnet50 at 512 px, eager and compiled: "
              f"{'met' if ok else 'NOT met'}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    if a.smoke and any("error" in r for r in rows):
        sys.exit("gpu_check --smoke: a row failed (see above)")


if __name__ == "__main__":
    main()
