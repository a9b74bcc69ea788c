"""Speed of `fundusfm sync-mlflow` on a synthetic results tree (local SQLite store).

Prints seconds for the first sync (creates every run), a repeated sync (nothing to do)
and one job-level log. Usage:

    python benchmarks/bench_mlflow_sync.py [--runs 40] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fundusfm.tracking import store as tstore


def make_tree(results: Path, n_runs: int, epochs: int) -> list[Path]:
    dirs = []
    for i in range(n_runs):
        key = f"finetune/task/init{i % 4}/finetune/fold{i % 5}/frac1/seed{i}"
        out = results / key
        out.mkdir(parents=True)
        rows = ["epoch,train_loss,val_loss,val_auroc,lr,time"]
        rows += [f"{e},{1 / (e + 1)},{1.1 / (e + 1)},{0.5 + e / (2 * epochs)},0.001,1.0" for e in range(epochs)]
        (out / "history.csv").write_text("\n".join(rows) + "\n")
        (out / "train_config.json").write_text(json.dumps({"hparams": {"lr": 0.001, "epochs": epochs}, "seed": i}))
        (out / "model.json").write_text(json.dumps({"arch": "resnet50", "num_classes": 2}))
        pred = ["image_id,dataset,patient_id,eye,label,prob_neg,prob_pos"]
        pred += [f"im{j},ds,p{j},L,{j % 2},0.4,0.6" for j in range(200)]
        (out / "predictions_test.csv").write_text("\n".join(pred) + "\n")
        mdir = results / "metrics" / key.split("/", 1)[1]
        mdir.mkdir(parents=True)
        metrics = {f"m{k}": 0.5 + k / 100 for k in range(20)}
        (mdir / "test.json").write_text(json.dumps({"set": "test", "metrics": metrics,
                                                    "ci": {k: [v - 0.1, v + 0.1] for k, v in metrics.items()}}))
        dirs.append(out)
    return dirs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        dirs = make_tree(results, args.runs, args.epochs)
        uri = tstore.tracking_uri(None, results)
        t = time.perf_counter()
        tstore.ensure_experiment("bench", uri)
        print(f"create store + experiment: {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        s = tstore.sync(results, "bench", uri)
        first = time.perf_counter() - t
        print(f"first sync, {args.runs} runs x {args.epochs} epochs: {first:.2f} s ({first / args.runs * 1000:.0f} ms/run) {s['counts']}")
        t = time.perf_counter()
        s = tstore.sync(results, "bench", uri)
        print(f"repeated sync (no changes): {time.perf_counter() - t:.2f} s {s['counts']}")
        t = time.perf_counter()
        tstore.log_run_dir(dirs[0], None, uri, "bench")
        print(f"job-level log of an already logged run: {time.perf_counter() - t:.3f} s")


if __name__ == "__main__":
    main()
