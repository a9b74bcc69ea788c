"""Reading trained models back from a training output directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from fundusfm.models.factory import create

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"


def load_trained(out_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model trained into ``out_dir`` (eval mode, on ``device``) and its ``model.json``.

    The architecture is rebuilt from ``model.json`` (arch, head, num_classes, img_size)
    and the weights must match it exactly.
    """
    out_dir = Path(out_dir)
    meta_path, weights_path = out_dir / META_FILE, out_dir / MODEL_FILE
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} missing: is {out_dir} a finished training output?")
    meta = json.loads(meta_path.read_text())
    for key in ("arch", "head", "num_classes"):
        if key not in meta:
            raise KeyError(f"{meta_path}: key {key!r} missing")
    model = create(meta["arch"], int(meta["num_classes"]), meta["head"], "random", img_size=meta.get("img_size"),
                   model_args=meta.get("model_args"))
    state = load_file(str(weights_path))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"{weights_path} does not match {meta['arch']} with the {meta['head']} head: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.to(device).eval(), meta


def cuda_available() -> bool:
    """Whether this process can use a GPU: the one probe every device choice asks."""
    return torch.cuda.is_available()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not cuda_available():
        raise RuntimeError("--device cuda requested but no CUDA device is available")
    return dev
