"""Tiny task tables with real image files for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def make_task_table(root: Path, n: int = 48, size: int = 40, seed: int = 0, n_external: int = 8,
                    multilabel: bool = False) -> Path:
    """Coloured-disc 'fundus' PNGs whose brightness carries the label; returns the table path.

    Roles: 60% train, 20% val, 20% test (grouped by patient: two eyes each), plus an
    external dataset ``ext``.
    """
    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= (size / 2 - 1) ** 2
    rows = []
    for i in range(n + n_external):
        ds = "dev" if i < n else "ext"
        y = int(rng.random() < 0.4)
        y2 = int(rng.random() < 0.5)
        base = np.array([150, 60, 30]) * (1.4 if y else 0.8)
        img = rng.normal(0, 20, (size, size, 3)) + base
        img[..., 1] += 40 * y2
        img = np.clip(img, 0, 255).astype(np.uint8) * disc[..., None]
        path = img_dir / f"{ds}_{i:04d}.png"
        Image.fromarray(img).save(path)
        patient = f"p{i // 2}"
        if ds == "ext":
            role = "external"
        else:
            r = (i // 2) % 10
            role = "train" if r < 6 else ("val" if r < 8 else "test")
        rows.append({"dataset": ds, "image_id": f"{ds}_{i:04d}", "patient_id": patient, "eye": "LR"[i % 2],
                     "image": str(path), "qc_status": "ok", "abnormal": y, "dr": y, "glaucoma": y2,
                     "fold0": role})
    df = pd.DataFrame(rows)
    path = root / "task.csv"
    df.to_csv(path, index=False)
    return path


BINARY_TASK = json.dumps({"type": "binary", "label": "abnormal", "classes": ["normal", "abnormal"]})
MULTILABEL_TASK = json.dumps({"type": "multilabel", "labels": ["dr", "glaucoma"]})


def tiny_hparams(**over) -> str:
    hp = {"arch": "resnet10t", "head": "timm", "img_size": 32, "batch_size": 8, "epochs": 2, "lr": 1e-3,
          "warmup_epochs": 0.5, "amp": "none", "log_every": 0}
    hp.update(over)
    return json.dumps(hp)
