"""Linear probing from cached features vs a frozen-backbone training loop, on the same data.

(a) the study's linear probe: ``fundusfm embed`` once per init (the feature extraction,
    paid once for every fold, fraction and seed of that init), then ``fundusfm
    linear-probe`` per run (standardise, logistic regression per C of the sweep, C chosen
    on validation);
(b) what a linear probe costs without the cache: ``fundusfm train`` with ``mode:
    linear_probe`` (frozen backbone, the head trained by AdamW through the data loader and
    the backbone's forward pass, every epoch), for ``--epochs`` epochs.

Both run as the workflow runs them, one CLI process each (imports included), on the same
synthetic fundus photographs (``fundusfm synth``; the loader resizes them to ``img_size``),
the same task table, fold, fraction and seed, so they see the same rows. Prints the wall
seconds of each, their ratio, and the validation and test AUROC of both.

    .venv/bin/python benchmarks/linear_probe.py                         # resnet18 at 112 px, 300 images, CPU
    .venv/bin/python benchmarks/linear_probe.py --arch resnet50 --img-size 224 --patients 500 --device cuda
    options: --epochs 10 --c-values 1e-4,...,10 --batch-size 32 --fraction 1 --workdir DIR --json FILE
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from fundusfm.train.features import read_meta

TASK = {"type": "binary", "label": "abnormal", "classes": ["normal", "abnormal"]}


def make_table(root: Path, patients: int, seed: int) -> Path:
    """Synthetic photographs and a task table (patients 60 / 20 / 20 % train / val / test)."""
    data = root / "synth"
    if not (data / "labels.csv").is_file():
        run(["synth", "--out", str(data), "--patients", str(patients), "--seed", str(seed), "--quiet",
             "--scale", "0.6", "--defect-rate", "0", "--workers", str(min(4, os.cpu_count() or 1))])
    labels = pd.read_csv(data / "labels.csv", dtype={"image_id": str, "patient_id": str})
    rng = np.random.default_rng(seed)
    pats = labels["patient_id"].unique()
    r = dict(zip(pats, rng.random(len(pats))))
    role = labels["patient_id"].map(lambda p: "train" if r[p] < 0.6 else ("val" if r[p] < 0.8 else "test"))
    table = pd.DataFrame({"dataset": "synth", "image_id": labels["image_id"], "patient_id": labels["patient_id"],
                          "eye": labels["eye"], "image": [str(data / f) for f in labels["file"]],
                          "qc_status": "ok", "abnormal": labels["abnormal"], "fold0": role})
    path = root / "task.csv"
    table.to_csv(path, index=False)
    return path


def run(args: list[str]) -> float:
    """Wall seconds of one ``fundusfm`` command in its own process (as a workflow job)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fundusfm.cli", *args], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"fundusfm {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def auroc(path: Path) -> float:
    df = pd.read_csv(path)
    return float(roc_auc_score(df["label"], df["prob_abnormal"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patients", type=int, default=150, help="two photographs each [150 -> 300 images]")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--epochs", type=int, default=10, help="epochs of the frozen-backbone training loop")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="head learning rate of the training loop")
    p.add_argument("--c-values", default="0.0001,0.001,0.01,0.1,1,10")
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--workdir", default=None, help="keep the data and outputs here (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the figures as JSON")
    a = p.parse_args(argv)
    root = Path(a.workdir or tempfile.mkdtemp(prefix="bench_linear_"))
    root.mkdir(parents=True, exist_ok=True)
    table = make_table(root, a.patients, a.seed)
    n = len(pd.read_csv(table))
    gpus = "1" if a.device == "cuda" else "0"
    hp = {"arch": a.arch, "head": "timm", "img_size": a.img_size, "batch_size": a.batch_size, "epochs": a.epochs,
          "lr": a.lr, "warmup_epochs": 0, "mode": "linear_probe", "patience": None, "log_every": 0,
          "amp": "bf16" if a.device == "cuda" else "none"}
    common = ["--table", str(table), "--fold", "0", "--fraction", str(a.fraction), "--seed", str(a.seed),
              "--task-json", json.dumps(TASK), "--hparams-json", json.dumps(hp)]
    feats = root / "dev.parquet"
    t_embed = run(["embed", "--table", str(table), "--init", "random", "--init-name", "random", "--hparams-json",
                   json.dumps(hp), "--task-json", json.dumps(TASK), "--seed", str(a.seed), "--batch-size", "64",
                   "--gpus", gpus, "--out", str(feats)])
    t_probe = run(["linear-probe", *common, "--features", str(feats), "--c-values", a.c_values,
                   "--max-iter", str(a.max_iter), "--init-name", "random", "--out", str(root / "probe")])
    t_loop = run(["train", *common, "--init", "random", "--init-name", "random", "--out", str(root / "loop"),
                  "--gpus", gpus, "--device", a.device])
    fmeta = read_meta(feats)
    probe_cfg = json.loads((root / "probe" / "train_config.json").read_text())
    loop_cfg = json.loads((root / "loop" / "train_config.json").read_text())
    res = {
        "images": n, "arch": a.arch, "img_size": a.img_size, "device": a.device, "epochs": a.epochs,
        "c_values": a.c_values, "n_images": probe_cfg["n_images"],
        "embed_s": round(t_embed, 2), "embed_extract_s": fmeta["extract_s"], "embed_images_per_s": fmeta["images_per_s"],
        "probe_s": round(t_probe, 2), "probe_fit_s": probe_cfg["resources"]["wall_s"],
        "loop_s": round(t_loop, 2), "loop_job_wall_s": loop_cfg["resources"]["wall_s"],
        "ratio_loop_over_probe": round(t_loop / t_probe, 1),
        "ratio_loop_over_embed_plus_probe": round(t_loop / (t_embed + t_probe), 2),
        "probe_val_auroc": round(auroc(root / "probe" / "predictions_val.csv"), 4),
        "probe_test_auroc": round(auroc(root / "probe" / "predictions_test.csv"), 4),
        "loop_val_auroc": round(auroc(root / "loop" / "predictions_val.csv"), 4),
        "loop_test_auroc": round(auroc(root / "loop" / "predictions_test.csv"), 4),
        "probe_c": json.loads((root / "probe" / "model.json").read_text())["best_c"],
        "load_avg": os.getloadavg()[0],
    }
    print(f"{n} images ({res['n_images']}), {a.arch} at {a.img_size} px on {a.device}, random init; "
          f"load average {res['load_avg']:.1f}")
    print(f"feature extraction (once per init): {t_embed:6.1f} s wall  "
          f"({fmeta['extract_s']:.1f} s extracting, {fmeta['images_per_s']:.0f} images/s)")
    print(f"(a) linear probe, {len(a.c_values.split(','))} C values: {t_probe:6.1f} s wall per run "
          f"({res['probe_fit_s']:.2f} s in the job)   val AUROC {res['probe_val_auroc']:.3f}  "
          f"test AUROC {res['probe_test_auroc']:.3f}  (C {res['probe_c']:g})")
    print(f"(b) frozen-backbone loop, {a.epochs} epochs: {t_loop:6.1f} s wall per run   "
          f"val AUROC {res['loop_val_auroc']:.3f}  test AUROC {res['loop_test_auroc']:.3f}")
    print(f"ratio (b)/(a): {res['ratio_loop_over_probe']:.1f}x per run; (b)/(embed + a): "
          f"{res['ratio_loop_over_embed_plus_probe']:.2f}x for a single run of the init")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
