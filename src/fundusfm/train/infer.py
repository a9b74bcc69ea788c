"""Inference with a trained model: the exact evaluation path of the training engine
(uint8 RGB at ``img_size`` -> /255 -> mean/std -> model -> softmax or sigmoid), shared by
external-set prediction (``fundusfm infer``, :func:`fundusfm.train.cli.infer_main`) and the release's ``fundusfm predict``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Class probabilities: independent sigmoids (multilabel) or a softmax."""
    logits = logits.float()
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


@torch.inference_mode()
def predict_batch(model: nn.Module, meta: dict, x_uint8: torch.Tensor, device: torch.device | str = "cpu") -> np.ndarray:
    """Probabilities of a uint8 NCHW RGB batch already at ``meta['img_size']``."""
    dev = torch.device(device)
    mean = torch.tensor(meta["mean"], device=dev).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"], device=dev).view(1, -1, 1, 1)
    x = (x_uint8.to(dev).float().div_(255) - mean) / std
    return probabilities(model(x), meta["task_type"] == "multilabel").cpu().numpy()


def predict_paths(model: nn.Module, meta: dict, paths: list[str], batch_size: int = 32, device="cpu",
                  digests: list[str] | None = None) -> np.ndarray:
    """Probabilities of processed images on disk, in order, batch by batch (``digests``:
    their recorded content digests, checked as each is read)."""
    from fundusfm.train.data import load_image

    size = int(meta["img_size"])
    digests = list(digests) if digests is not None else [None] * len(paths)
    parts = [np.zeros((0, int(meta["num_classes"])), dtype=np.float32)]
    for i in range(0, len(paths), batch_size):
        x = torch.stack([load_image(p, size, d) for p, d in zip(paths[i : i + batch_size], digests[i : i + batch_size])])
        parts.append(predict_batch(model, meta, x, device))
    return np.concatenate(parts)
