"""``fundusfm synth``: draw a synthetic fundus dataset (images + labels.csv)."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("fundusfm.synth")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fundusfm synth", description=__doc__)
    p.add_argument("--out", required=True, help="output dataset folder (images/ + labels.csv)")
    p.add_argument("--patients", type=int, required=True, help="number of patients (two eyes each)")
    p.add_argument("--seed", type=int, required=True, help="dataset seed")
    p.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    p.add_argument("--prevalence", default=None,
                   help="per-patient prevalence, e.g. dr=0.3,glaucoma=0.2,amd=0.1,myopia=0.1,rvo=0.05 "
                        "(missing keys keep their defaults)")
    p.add_argument("--defect-rate", type=float, default=0.04, help="fraction of images with a quality defect")
    p.add_argument("--non-fundus", type=int, default=0, help="number of non-fundus images to add")
    p.add_argument("--scale", type=float, default=1.0, help="camera size multiplier (default 320-480 px wide)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def synth_main(argv: list[str] | None = None) -> int:
    """Entry point of ``fundusfm synth``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from fundusfm.synth.dataset import make_dataset, summarize  # numpy/cv2 only when used

    try:
        df = make_dataset(args.out, args.patients, args.seed, prevalence=args.prevalence,
                          defect_rate=args.defect_rate, n_non_fundus=args.non_fundus, scale=args.scale,
                          workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, FileExistsError) as exc:
        log.error("%s", exc)
        return 2
    log.info("wrote %s/labels.csv", args.out)
    print(summarize(df))
    return 0
