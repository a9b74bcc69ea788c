"""Make a tiny released demo model and two photographs to predict, with the *installed*
fundusfm (CI's non-editable install check, .ci/install_check.sh).

The release is written by the real ``fundusfm.release.export.export`` from a training
output of the contract (a randomly initialised resnet10t at 48 px: seconds on a CPU).

usage: python demo_release.py OUT_DIR  ->  OUT_DIR/release/, OUT_DIR/photos/*.jpg
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from fundusfm.models import create
from fundusfm.preprocess.pipeline import PreprocessSpec
from fundusfm.release.export import export
from fundusfm.synth.draw import render_fundus

ARCH, IMG, CLASSES = "resnet10t", 48, ["normal", "abnormal"]


def main(out: Path) -> None:
    torch.manual_seed(0)
    run = out / "run"
    run.mkdir(parents=True)
    model = create(ARCH, len(CLASSES), "timm", "random", img_size=IMG).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    meta = {"arch": ARCH, "head": "timm", "num_classes": 2, "classes": CLASSES, "task_type": "binary",
            "task": {"type": "binary", "label": "abnormal", "classes": CLASSES, "name": "pretrain"},
            "img_size": IMG, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "init": "random"}
    (run / "model.json").write_text(json.dumps(meta))
    spec = out / "preprocess_spec.json"
    spec.write_text(json.dumps(asdict(PreprocessSpec(size=64))))
    export(run, out / "release", preprocess_spec=spec, n_boot=0, study="ci-install-check")
    photos = out / "photos"
    photos.mkdir()
    for seed in (1, 2):
        Image.fromarray(render_fundus(seed)[0]).save(photos / f"fundus{seed}.jpg", quality=92)
    print(out / "release")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
