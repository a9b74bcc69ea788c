"""Speed of the synthetic fundus renderer: images/s on one core (render only, and
render + JPEG encode as `fundusfm synth` does).

    python benchmarks/synth_speed.py [--n 200] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from fundusfm.synth.dataset import JPEG_QUALITY, plan_dataset, render_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=200, help="images to draw")
    p.add_argument("--scale", type=float, default=1.0)
    args = p.parse_args()
    cv2.setNumThreads(1)
    specs = plan_dataset((args.n + 1) // 2, seed=0, defect_rate=0.05, scale=args.scale)[: args.n]
    render_spec(specs[0])  # warm-up (imports, allocator)
    t0 = time.perf_counter()
    imgs = [render_spec(s)[0] for s in specs]
    t1 = time.perf_counter()
    for im in imgs:
        cv2.imencode(".jpg", im[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    t2 = time.perf_counter()
    px = np.mean([im.shape[1] for im in imgs])
    print(f"synth_speed: n={len(imgs)} scale={args.scale} mean_width={px:.0f}px "
          f"render={len(imgs) / (t1 - t0):.1f} img/s/core "
          f"render+jpeg={len(imgs) / (t2 - t0):.1f} img/s/core")


if __name__ == "__main__":
    main()
