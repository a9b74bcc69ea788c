"""Frozen features: the pooled backbone output of a model for a list of images.

The linear-probe half of the study grid (docs/linear-probe.md) embeds every image of a
task once per init, then fits logistic regressions on the cached features
(:mod:`fundusfm.train.linear`). An init's model is built exactly as a fine-tune builds it
(:func:`build_init_model`: :func:`fundusfm.models.factory.build`, the same seeded random
initialisation, :func:`fundusfm.models.load_init` with the same options, the same
``input_norm``), and images are read as the training engine's evaluation reads them
(:class:`fundusfm.train.data.FundusDataset`: decode, resize to ``img_size``, /255,
mean/std). The feature of an image is timm's ``forward_head(forward_features(x),
pre_logits=True)``: the input of the classification head, before any of its layers, so
for the paper's head it is the backbone's pooled 2048-d output, not the 512-d hidden layer.

:func:`embed_table` serves the workflow (an init over a task table); :func:`embed_model`
serves users (a training output or a release folder over image files and folders).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
from torch import nn

from fundusfm import layout
from fundusfm.models import load_init
from fundusfm.models.factory import build, input_norm
from fundusfm.train.features import write_features
from fundusfm.train.sets import MODEL_INIT_SALT, file_row, mix_seed

log = logging.getLogger("fundusfm.embed")

from fundusfm.imagetypes import IMAGE_SUFFIXES  # noqa: E402 - the one list (predict, preprocess, ingest)
POOLING = "timm forward_features + forward_head(pre_logits=True): the classification head's input"
DEFINITION_KEYS = ("arch", "head", "img_size", "mean", "std")


class EmbedError(ValueError):
    """Inputs of an embedding cannot be used (names the file, row or folder)."""


# ----------------------------------------------------------------------------- model


def build_init_model(hp: dict, num_outputs: int, init: str, *, seed: int = 0, trust_pickle: bool = False,
                     allow_partial: bool = False, checkpoint_format: str = "auto",
                     key_map: dict | None = None, conversions=None) -> tuple[nn.Module, dict, dict]:
    """The model a fine-tune of init ``init`` starts from, in eval mode on the CPU, with
    its key report (dict) and its definition (arch, head, img_size, mean, std).

    As :class:`fundusfm.train.engine.Trainer` builds it: the random initialisation seeded
    from ``seed`` (so ``random`` features are reproducible and equal a fine-tune's start),
    then ``load_init`` with the same options (``hp`` gives imagenet_weights, carry_head)."""
    torch.manual_seed(mix_seed(seed, MODEL_INIT_SALT))
    model = build(hp, num_outputs)
    report = load_init(model, init, trust_pickle=trust_pickle, allow_partial=allow_partial,
                       imagenet_weights=hp["imagenet_weights"], checkpoint_format=checkpoint_format,
                       key_map=key_map or {}, carry_head=hp["carry_head"], conversions=conversions)
    mean, std = input_norm(model, hp["mean"], hp["std"])
    definition = {"arch": hp["arch"], "head": hp["head"], "img_size": int(hp["img_size"]), "mean": mean, "std": std}
    return model.eval(), report.to_dict() | {"summary": report.summary()}, definition


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classification head's input for a normalised NCHW batch (see the module doc)."""
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    return feats.flatten(1)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def extract(model: nn.Module, batches: Iterable[torch.Tensor], *, mean: Sequence[float], std: Sequence[float],
            device: torch.device) -> np.ndarray:
    """Features (float32, n x d) of uint8 NCHW RGB batches already at the model's size:
    /255, mean/std, :func:`pooled_features`; eval mode; bf16 autocast on CUDA only."""
    model.eval().to(device, memory_format=torch.channels_last)
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    parts = []
    for xb in batches:
        x = xb.to(device, non_blocking=True).float().div_(255)
        x = ((x - m) / s).contiguous(memory_format=torch.channels_last)
        with _autocast(device):
            f = pooled_features(model, x)
        parts.append(f.float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _file_batches(paths: Sequence[str], size: int, batch_size: int, workers: int, pin: bool,
                  digests: Sequence[str] | None = None):
    """uint8 NCHW batches of processed images on disk, read as the training engine's
    evaluation reads them (:class:`~fundusfm.train.data.FundusDataset`; ``digests``: their
    recorded content digests, checked at each read)."""
    from torch.utils.data import DataLoader

    from fundusfm.train.data import FundusDataset

    ds = FundusDataset(list(paths), np.zeros(len(paths), dtype=np.int64), size, digests=digests)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    for x, _, _ in loader:
        yield x.permute(0, 3, 1, 2)  # HWC from the dataset


def _run(model, batches, definition, device, n: int) -> tuple[np.ndarray, dict]:
    t0 = time.perf_counter()
    x = extract(model, batches, mean=definition["mean"], std=definition["std"], device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    stats = {"device": str(device), "device_name": device_name(device), "autocast": "bf16" if device.type == "cuda"
             else "none", "extract_s": round(dt, 3), "images_per_s": round(n / dt, 2) if dt > 0 else None,
             "torch_threads": torch.get_num_threads()}
    log.info("%d images -> %d features each in %.1f s on %s (%.1f images/s)", n, x.shape[1] if x.size else 0, dt,
             device, n / dt if dt > 0 else float("nan"))
    return x, stats


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo``; else ``platform``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _versions() -> dict:
    return {"torch": torch.__version__, "timm": timm.__version__}


# ----------------------------------------------------------------------------- workflow mode


def _table_digests(table: str | Path, images: Sequence[str]) -> list[str] | None:
    """The recorded digest (task table ``image_xxh3``) of each image path, or ``None`` for a
    table written before digests were recorded."""
    df = pd.read_csv(table, dtype=str, keep_default_na=False)
    if "image_xxh3" not in df.columns:
        return None
    by_path = dict(zip(df["image"], df["image_xxh3"]))
    return [by_path.get(p, "") for p in images]


def table_images(table: str | Path, part: str | None = None) -> list[str]:
    """Distinct ``image`` paths of a task table's rows that some fold uses, in table order.

    ``part``: ``None`` / ``all`` every row with a role other than ``excluded`` in some
    ``fold<k>`` column; ``dev`` those with train / val / test in some fold;
    ``external_<ds>`` the external rows of dataset ``ds``. Rows excluded in every fold
    (failed QC, unlabelled) are never used, and their image may not exist."""
    table = Path(table)
    if not table.is_file():
        raise EmbedError(f"task table {table} not found")
    df = pd.read_csv(table, dtype={"image": str, "dataset": str}, keep_default_na=False)
    folds = [c for c in df.columns if re.fullmatch(r"fold\d+", c)]
    if "image" not in df.columns or not folds:
        raise EmbedError(f"{table}: a task table needs columns 'image' and fold<k> (have {list(df.columns)})")
    roles = df[folds]
    if part in (None, "all"):
        keep = (roles != "excluded").any(axis=1)
    elif part == "dev":
        keep = roles.isin(["train", "val", "test"]).any(axis=1)
    elif part.startswith("external_"):
        ds = part[len("external_"):]
        if "dataset" not in df.columns:
            raise EmbedError(f"{table}: no 'dataset' column to select part {part!r}")
        keep = (df["dataset"] == ds) & (roles == "external").any(axis=1)
        if not keep.any():
            have = sorted(df.loc[(roles == "external").any(axis=1), "dataset"].unique()) if "dataset" in df else []
            raise EmbedError(f"{table}: no external rows of dataset {ds!r} (external datasets: {have})")
    else:
        raise EmbedError(f"part {part!r}: use all, dev or external_<dataset>")
    rows = df[keep]
    empty = rows["image"].str.strip() == ""
    if empty.any():
        raise EmbedError(f"{table}: row {file_row(rows.index[empty.to_numpy()][0])} has an empty 'image'")
    if rows.empty:
        raise EmbedError(f"{table}: no rows to embed (part {part or 'all'})")
    images = list(dict.fromkeys(rows["image"]))
    absent = [p for p in images if not Path(p).is_file()]
    if absent:
        r = file_row(rows.index[(rows["image"] == absent[0]).to_numpy()][0])
        raise EmbedError(f"{table}: row {r} image {absent[0]!r} not found ({len(absent)} of {len(images)} missing; "
                         f"paths are relative to {Path.cwd()})")
    return images


def embed_table(table: str | Path, out: str | Path, *, init: str, hp: dict, num_outputs: int,
                init_name: str | None = None, seed: int = 0, batch_size: int = 64,
                device: torch.device | str = "cpu", workers: int = 0, part: str | None = None,
                trust_pickle: bool = False, allow_partial: bool = False, checkpoint_format: str = "auto",
                key_map: dict | None = None) -> dict:
    """Embed every used image of a task table (:func:`table_images`) with init ``init``
    (:func:`build_init_model`) and write the feature file ``out``; returns its metadata.

    Metadata (key ``b"fundusfm"``): ``model`` (arch, head, img_size, mean, std), ``init``
    (name, spec, checkpoint_format, key_map, the key ``report`` and its ``summary``),
    ``seed``, ``pooling``, ``source`` (table, part), ``device``, ``device_name``,
    ``autocast``, ``torch_threads``, ``extract_s``, ``images_per_s``, ``wall_s``,
    ``versions``, plus ``feature_dim`` and ``n_images``."""
    t0 = time.perf_counter()
    device = torch.device(device)
    images = table_images(table, part)
    model, report, definition = build_init_model(hp, num_outputs, init, seed=seed, trust_pickle=trust_pickle,
                                                 allow_partial=allow_partial, checkpoint_format=checkpoint_format,
                                                 key_map=key_map, conversions=layout.conversions_dir_of(out))
    batches = _file_batches(images, definition["img_size"], batch_size, workers, device.type == "cuda",
                            _table_digests(table, images))
    x, stats = _run(model, batches, definition, device, len(images))
    meta = {"model": definition,
            "init": {"name": init_name or init, "spec": init, "checkpoint_format": checkpoint_format,
                     "key_map": key_map or {}, "summary": report["summary"], "report": report},
            "seed": seed, "pooling": POOLING, "source": {"kind": "task table", "table": str(table), "part": part or "all"},
            **stats, "wall_s": round(time.perf_counter() - t0, 3), "versions": _versions()}
    write_features(out, images, x, meta)
    return meta | {"feature_dim": int(x.shape[1]), "n_images": len(images)}


# ----------------------------------------------------------------------------- user mode


def expand_images(inputs: Sequence[str]) -> list[str]:
    """Image files of the inputs, in order: a file as given, a folder every photograph
    below it (:data:`fundusfm.imagetypes.IMAGE_SUFFIXES`; sorted; hidden files and folders skipped)."""
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                log.warning("%s: no %s images in this folder", p, "/".join(IMAGE_SUFFIXES))
            out += [str(f) for f in found]
        elif p.is_file():
            out.append(str(p))
        else:
            raise EmbedError(f"image or folder {p} not found")
    if not out:
        raise EmbedError(f"no images found in {list(inputs)} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return out


def model_kind(path: str | Path) -> str:
    """``release`` (config.json of ``fundusfm export``) or ``training`` (model.json +
    model.safetensors of ``fundusfm train``); anything else is an error saying what is there."""
    path = Path(path)
    if not path.is_dir():
        raise EmbedError(f"model folder {path} not found (a training output or a release folder)")
    if (path / "config.json").is_file():
        return "release"
    if (path / "model.json").is_file() and (path / "model.safetensors").is_file():
        return "training"
    if (path / "probe.json").is_file():
        raise EmbedError(f"{path} is a linear-probe run: it has no backbone of its own; embed with its init "
                         "(fundusfm embed --table ... --init ...) or with the model its features came from")
    raise EmbedError(f"{path}: neither a training output (model.json + model.safetensors) nor a release "
                     "folder (config.json)")


def embed_model(model_dir: str | Path, inputs: Sequence[str], out: str | Path, *, batch_size: int = 32,
                device: torch.device | str = "cpu", workers: int = 0) -> dict:
    """Embed image files / folders with a trained model or a release; returns the metadata.

    A **release** preprocesses each photograph as its study did (FOV crop, resize, mask,
    quality grade: ``fundusfm predict``'s path); photographs it rejects are skipped and
    listed in the metadata (``skipped``). A **training output** reads the images as
    processed images (square, FOV centred: what ``fundusfm preprocess`` writes), resized
    to its ``img_size`` as training did; pass processed images, not raw photographs."""
    t0 = time.perf_counter()
    device = torch.device(device)
    kind = model_kind(model_dir)
    paths = expand_images(inputs)
    skipped: list[dict] = []
    if kind == "release":
        from fundusfm.release.loading import load_model

        released = load_model(model_dir, device)
        model, meta = released.model, released.meta
        kept, xs = [], []
        for p in paths:
            row, x = released.preprocess(p)
            if x is None:
                skipped.append({"image": p, "status": row.get("status"), "reason": row.get("reason")})
                log.warning("%s: %s (%s), skipped", p, row.get("status"), row.get("reason"))
                continue
            kept.append(p)
            xs.append(x)
        if not kept:
            raise EmbedError(f"{model_dir}: the release's preprocessing rejected all {len(paths)} images "
                             f"(first: {skipped[0]['image']}: {skipped[0]['reason']})")
        batches = (torch.stack(xs[i:i + batch_size]) for i in range(0, len(xs), batch_size))
        paths = kept
        source = {"kind": "release", "path": str(model_dir), "preprocessing": "release (FOV crop, resize, quality)"}
    else:
        from fundusfm.models.io import load_trained

        model, meta = load_trained(model_dir, "cpu")
        batches = _file_batches(paths, int(meta["img_size"]), batch_size, workers, device.type == "cuda")
        source = {"kind": "training output", "path": str(model_dir), "preprocessing": "none (processed images)"}
    definition = {k: meta.get(k) for k in DEFINITION_KEYS}
    x, stats = _run(model, batches, definition, device, len(paths))
    info = {"model": definition, "init": {"name": meta.get("init"), "spec": meta.get("init_spec"),
                                          "summary": f"trained model {model_dir}"},
            "pooling": POOLING, "source": source, "skipped": skipped, **stats,
            "wall_s": round(time.perf_counter() - t0, 3), "versions": _versions()}
    write_features(out, paths, x, info)
    return info | {"feature_dim": int(x.shape[1]), "n_images": len(paths)}
