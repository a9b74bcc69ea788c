"""Loading a release folder: the model, its preprocessing and its prediction path.

The model's input is produced exactly as in the study: ``process_image`` (decode, FOV
crop, resize, mask, quality grade, normalisation) gives the processed image the study
wrote to disk; it is encoded in the study's format and read back through the training
engine's ``load_image`` (resize to ``img_size``), then ``predict_batch`` (scale, mean/std,
softmax or sigmoid). Reusing those functions rather than copies of them keeps the
probabilities of a release equal to the study's own predictions.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fundusfm.models.io import resolve_device
from fundusfm.preprocess.pipeline import PreprocessSpec, process_image

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
RELEASE_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
FORMAT = "fundusfm-release"
FORMAT_VERSION = 1
# what fundusfm.train.infer.predict_batch and the model factory need from the config
META_KEYS = ("arch", "head", "num_classes", "classes", "task_type", "img_size", "mean", "std")


class ReleaseError(ValueError):
    """A release folder is incomplete or inconsistent (the message names file and key)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_config(release_dir: str | Path) -> dict:
    """``config.json`` of a release, checked for the keys loading needs."""
    path = Path(release_dir) / CONFIG_FILE
    if not path.is_file():
        raise ReleaseError(f"{path} missing: is {release_dir} a release folder (fundusfm export)?")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReleaseError(f"{path}: not valid JSON ({e})") from None
    ff = cfg.get("fundusfm")
    if not isinstance(ff, dict) or ff.get("format") != FORMAT:
        raise ReleaseError(f"{path}: key 'fundusfm.format' is not {FORMAT!r}; not a fundusfm release")
    if int(ff.get("format_version", 0)) > FORMAT_VERSION:
        raise ReleaseError(f"{path}: format_version {ff['format_version']} is newer than this fundusfm "
                           f"understands ({FORMAT_VERSION}); upgrade fundusfm")
    missing = [f"fundusfm.model.{k}" for k in META_KEYS if k not in ff.get("model", {})]
    if "preprocess_spec" not in ff.get("preprocessing", {}):
        missing.append("fundusfm.preprocessing.preprocess_spec")
    if missing:
        raise ReleaseError(f"{path}: key(s) {missing} missing")
    return cfg


def model_input(processed: np.ndarray, spec: PreprocessSpec, img_size: int) -> torch.Tensor:
    """uint8 CHW model input of a processed image, as the study's training engine read it.

    The study wrote processed images in ``spec.format`` (PNG: lossless; JPEG: q95) and its
    engine read them with ``load_image``; encoding in memory and reading back through
    the same function reproduces that input bit for bit, whatever the format.
    """
    from fundusfm.preprocess.io import encode_image
    from fundusfm.train.data import load_image

    return load_image(io.BytesIO(encode_image(processed, spec.format)), int(img_size))


@dataclass
class ReleasedModel:
    """A released model on ``device`` (eval mode) with its preprocessing.

    ``model``: the timm model; ``config``: ``config.json``; ``meta``: the model keys
    used by the prediction path; ``spec``: the preprocessing the study used.
    """

    model: nn.Module
    config: dict
    meta: dict
    spec: PreprocessSpec
    device: torch.device
    path: Path

    @property
    def classes(self) -> list[str]:
        """Output names, in output order."""
        return list(self.meta["classes"])

    @property
    def multilabel(self) -> bool:
        return self.meta["task_type"] == "multilabel"

    def preprocess(self, image_path: str | Path) -> tuple[dict, torch.Tensor | None]:
        """QC row (``status`` ok / rejected / error, ``reason``, ``quality``, FOV circle)
        and the uint8 CHW model input (``None`` unless ok) of one photograph."""
        row, processed = process_image(image_path, self.spec)
        if processed is None:
            return row, None
        return row, model_input(processed, self.spec, self.meta["img_size"])

    def predict(self, x_uint8: torch.Tensor) -> np.ndarray:
        """Probabilities (N, classes) of a uint8 NCHW batch from :meth:`preprocess`."""
        from fundusfm.train.infer import predict_batch

        return predict_batch(self.model, self.meta, x_uint8, self.device)

    def predict_files(self, paths) -> list[tuple[dict, np.ndarray | None]]:
        """(QC row, probabilities or ``None``) per image file, in order (no batching)."""
        out = []
        for p in paths:
            row, x = self.preprocess(p)
            out.append((row, None if x is None else self.predict(x[None])[0]))
        return out


def load_model(release_dir: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> ReleasedModel:
    """Load a release folder written by ``fundusfm export``.

    Rebuilds the architecture from ``config.json`` (timm + head), loads
    ``model.safetensors`` strictly (no pickle is ever read) after checking its SHA-256
    against the config (``verify``), and returns a :class:`ReleasedModel` whose
    ``preprocess`` / ``predict`` reproduce the study's prediction path.
    """
    from safetensors.torch import load_file

    from fundusfm.models.factory import create

    release_dir = Path(release_dir)
    cfg = read_config(release_dir)
    ff = cfg["fundusfm"]
    weights = release_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ReleaseError(f"{weights} missing")
    want = ff.get("files", {}).get(WEIGHTS_FILE, {}).get("sha256")
    if verify and want and sha256_file(weights) != want:
        raise ReleaseError(f"{weights}: SHA-256 differs from {release_dir / CONFIG_FILE} "
                           "(fundusfm.files); the weights were changed or the copy is incomplete")
    meta = dict(ff["model"])
    dev = resolve_device(device)
    model = create(meta["arch"], int(meta["num_classes"]), meta["head"], "random", img_size=meta["img_size"])
    result = model.load_state_dict(load_file(str(weights)), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ReleaseError(f"{weights} does not match {meta['arch']} with the {meta['head']} head: "
                           f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    spec = PreprocessSpec.from_dict(ff["preprocessing"]["preprocess_spec"])
    return ReleasedModel(model=model.to(dev).eval(), config=cfg, meta=meta, spec=spec, device=dev, path=release_dir)
