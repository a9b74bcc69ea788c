"""Speed of ``fundusfm evaluate`` (metrics + patient bootstrap) and of a paired test.

Usage: python benchmarks/bench_evaluate.py [--n-images 2000] [--n-boot 1000]
Prints seconds per call for a binary and a 5-class ordinal task.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from fundusfm.evaluate.bootstrap import patient_bootstrap
from fundusfm.evaluate.compare import paired_auroc_test
from fundusfm.evaluate.metrics import compute_metrics


def frame(n: int, k: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logit = rng.normal(size=(n, k)) + 2 * np.eye(k)[y]
    P = np.exp(logit) / np.exp(logit).sum(1, keepdims=True)
    d = {"image_id": [f"i{i}" for i in range(n)], "dataset": "d", "patient_id": [f"p{i // 2}" for i in range(n)],
         "eye": "U", "label": y}
    names = ["neg", "pos"] if k == 2 else [f"g{c}" for c in range(k)]
    d.update({f"prob_{c}": P[:, j] for j, c in enumerate(names)})
    return pd.DataFrame(d), names


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--n-boot", type=int, default=1000)
    a = ap.parse_args()
    for kind, k in (("binary", 2), ("ordinal", 5)):
        df, names = frame(a.n_images, k, 0)
        task = {"type": kind, "label": "x", "classes": names}
        t = time.perf_counter()
        compute_metrics(df, task)
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        patient_bootstrap(df, task, n_boot=a.n_boot)
        t2 = time.perf_counter() - t
        print(f"{kind:8s} n={a.n_images}: metrics {t1 * 1000:.1f} ms; bootstrap x{a.n_boot} {t2:.1f} s "
              f"({t2 / a.n_boot * 1000:.1f} ms/resample)")
    df_a, names = frame(a.n_images, 2, 0)
    df_b = df_a.copy()
    df_b[["prob_neg", "prob_pos"]] = frame(a.n_images, 2, 1)[0][["prob_neg", "prob_pos"]].to_numpy()
    t = time.perf_counter()
    paired_auroc_test(df_a, df_b, {"type": "binary", "label": "x", "classes": names}, n_boot=a.n_boot)
    print(f"paired DeLong + bootstrap x{a.n_boot}: {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
