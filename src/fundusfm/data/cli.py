"""``fundusfm ingest`` (dataset as distributed -> manifest) and ``fundusfm overlap`` (shared images)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

log = logging.getLogger("fundusfm.data")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: no half-written outputs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ingest_main(argv: list[str] | None = None) -> int:
    """``fundusfm ingest --name DS --config-json JSON --out manifest.csv [--report report.json]``."""
    from fundusfm.data.adapters import read_dataset
    from fundusfm.data.manifest import ManifestError

    p = argparse.ArgumentParser(prog="fundusfm ingest", description="turn a dataset as distributed into a manifest CSV")
    p.add_argument("--name", required=True, help="dataset name (the key under `datasets:` in the config)")
    p.add_argument("--config-json", required=True,
                   help="the dataset's config entry as JSON (adapter, root, options), or @file.json")
    p.add_argument("--out", required=True, type=Path, help="manifest CSV to write")
    p.add_argument("--report", type=Path, help="JSON report (unmapped labels, exclusions, unlabelled images)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    text = args.config_json
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        print(f"fundusfm ingest: --config-json is not valid JSON: {e}", file=sys.stderr)
        return 2
    try:
        df, report = read_dataset(args.name, cfg)
    except ManifestError as e:
        print(f"fundusfm ingest: {e}", file=sys.stderr)
        return 1
    except KeyError as e:
        print(f"fundusfm ingest: {e.args[0]}", file=sys.stderr)
        return 2
    _atomic_write(args.out, lambda t: df.to_csv(t, index=False))
    if args.report:
        _atomic_write(args.report, lambda t: t.write_text(json.dumps(report, indent=2, default=str)))
    if report["unmapped"]:
        log.warning("%s: %d unmapped source labels left unknown: %s", args.name, len(report["unmapped"]),
                    ", ".join(sorted(report["unmapped_labels"])[:10]))
    if report["unlabelled_images"]:
        log.warning("%s: %d images on disk without a label (listed in the report)", args.name,
                    len(report["unlabelled_images"]))
    if report["excluded"]:
        log.warning("%s: %d images excluded (listed in the report)", args.name, len(report["excluded"]))
    log.info("wrote %s (%d images)", args.out, len(df))
    return 0


def _qc_arg(text: str) -> tuple[str, Path]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    name, path = text.split("=", 1)
    return name, Path(path)


def overlap_main(argv: list[str] | None = None) -> int:
    """``fundusfm overlap --qc DS=qc.csv ... --upstream DS... --evaluation DS... --out overlap.csv``."""
    from fundusfm.data.overlap import exclusion_list, find_overlaps, hash_qc_table

    p = argparse.ArgumentParser(prog="fundusfm overlap",
                                description="images shared between upstream (pretraining) and evaluation datasets")
    p.add_argument("--qc", nargs="+", required=True, type=_qc_arg, metavar="NAME=QC_CSV",
                   help="preprocess QC table of each dataset (processed images are found next to it)")
    p.add_argument("--upstream", nargs="+", required=True, metavar="DS", help="datasets used for pretraining")
    p.add_argument("--evaluation", nargs="+", default=[], metavar="DS", help="downstream evaluation datasets")
    p.add_argument("--out", required=True, type=Path, help="pairs CSV")
    p.add_argument("--exclude-out", type=Path, help="upstream images to leave out of pretraining (CSV)")
    p.add_argument("--threshold", type=int, default=4, help="max Hamming distance of 64-bit pHashes (default 4)")
    p.add_argument("--hash-size", type=int, default=8, help="pHash side; bits = side^2 (default 8)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    qc = dict(args.qc)
    missing = [d for d in args.upstream + args.evaluation if d not in qc]
    if missing:
        print(f"fundusfm overlap: no --qc given for {missing}", file=sys.stderr)
        return 2
    try:
        hashes = pd.concat([hash_qc_table(n, path, args.hash_size) for n, path in qc.items()], ignore_index=True)
    except (FileNotFoundError, ValueError) as e:
        print(f"fundusfm overlap: {e}", file=sys.stderr)
        return 1
    pairs = find_overlaps(hashes, args.upstream, args.evaluation, args.threshold)
    _atomic_write(args.out, lambda t: pairs.to_csv(t, index=False))
    if args.exclude_out:
        ex = exclusion_list(pairs)
        _atomic_write(args.exclude_out, lambda t: ex.to_csv(t, index=False))
    n_cross = int((pairs["kind"] == "cross").sum())
    (log.warning if n_cross else log.info)(
        "%d upstream/evaluation pairs within %d bits, %d duplicates within a side; wrote %s",
        n_cross, args.threshold, len(pairs) - n_cross, args.out)
    return 0

