"""Inference with a trained model: the exact evaluation path of the training engine
(uint8 RGB at ``img_size`` -> /255 -> mean/std -> model -> softmax or sigmoid), shared by
external-set prediction (``fundusfm infer``) and the release's ``fundusfm predict``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from fundusfm.train.config import TaskSpec

log = logging.getLogger("fundusfm.infer")
from fundusfm.evaluate.io import ID_COLUMNS  # one definition of the predictions id columns


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


def predictions_frame(rows: pd.DataFrame, y: np.ndarray | None, prob: np.ndarray, task: TaskSpec) -> pd.DataFrame:
    """A predictions CSV of the contract (docs/architecture.md) for ``rows``."""
    out = pd.DataFrame({c: rows[c].to_numpy() if c in rows else "" for c in ID_COLUMNS})
    if task.multilabel:
        for j, lab in enumerate(task.names):
            col = np.full(len(rows), np.nan) if y is None else y[:, j]
            out[f"label_{lab}"] = pd.array(np.where(np.isnan(col), np.nan, col), dtype="Int64")
        for j, lab in enumerate(task.names):
            out[f"prob_{lab}"] = prob[:, j]
    else:
        out["label"] = pd.array(y, dtype="Int64") if y is not None else pd.array([pd.NA] * len(rows), dtype="Int64")
        for j, cls in enumerate(task.names):
            out[f"prob_{cls}"] = prob[:, j]
    return out


def predict_paths(model: nn.Module, meta: dict, paths: list[str], batch_size: int = 32, device="cpu") -> np.ndarray:
    """Probabilities of processed images on disk, in order, batch by batch."""
    from fundusfm.train.data import load_image

    size = int(meta["img_size"])
    parts = [np.zeros((0, int(meta["num_classes"])), dtype=np.float32)]
    for i in range(0, len(paths), batch_size):
        x = torch.stack([load_image(p, size) for p in paths[i : i + batch_size]])
        parts.append(predict_batch(model, meta, x, device))
    return np.concatenate(parts)


def main(argv: list[str] | None = None) -> int:
    """``fundusfm infer``: predict one external dataset of a task table with a trained model."""
    p = argparse.ArgumentParser(prog="fundusfm infer", description=main.__doc__)
    p.add_argument("--model-dir", required=True, help="training output (model.safetensors, model.json)")
    p.add_argument("--table", required=True, help="task table results/splits/<task>.csv")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--dataset", required=True, help="external dataset (its rows with role 'external')")
    p.add_argument("--out", required=True, help="predictions CSV to write")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="[auto: cuda if present]")
    p.add_argument("--gpus", type=int, default=None, help="GPUs of this job (0 = CPU, whatever the machine has)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # no training engine here (its imports cost seconds per job): models + data code only
    from fundusfm.models.io import load_trained, resolve_device
    from fundusfm.train.data import encode_targets, read_task_table

    device = torch.device("cpu") if a.gpus == 0 else resolve_device(a.device)
    model, meta = load_trained(a.model_dir, device)
    task = TaskSpec.from_dict(meta["task"])
    df, col = read_task_table(a.table, a.fold)
    rows = df[(df[col] == "external") & (df["dataset"] == a.dataset)]
    if rows.empty:
        print(f"fundusfm infer: {a.table} has no external rows of dataset {a.dataset!r} in {col}", file=sys.stderr)
        return 1
    prob = predict_paths(model, meta, rows["image"].tolist(), a.batch_size, device)
    frame = predictions_frame(rows, encode_targets(rows, task, a.table), prob, task)
    tmp = Path(f"{a.out}.tmp{os.getpid()}")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, a.out)
    log.info("%d predictions of %s on %s -> %s", len(frame), a.dataset, device, a.out)
    return 0
