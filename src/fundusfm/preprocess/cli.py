"""``fundusfm preprocess``: FOV crop, resize, normalise and quality-check images.

Two modes:

- any images: ``fundusfm preprocess INPUT... --out DIR`` where INPUT are image files,
  folders (searched recursively for image extensions) or lists (.txt: one path a line;
  .csv: a ``path`` column, optional ``image_id``);
- a dataset manifest: ``fundusfm preprocess --manifest results/manifests/X.csv --root
  DATASET_ROOT --out DIR`` (``image_id`` from the manifest, ``path`` joined to the root).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("fundusfm.preprocess")


def _load_thresholds(arg: str | None) -> dict:
    if not arg:
        return {}
    p = Path(arg)
    if p.is_file():
        import yaml

        d = yaml.safe_load(p.read_text()) or {}
        src = str(p)
    else:
        try:
            d = json.loads(arg)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--thresholds: {arg!r} is neither a file nor JSON ({e})") from None
        src = "--thresholds"
    if not isinstance(d, dict):
        raise SystemExit(f"{src}: expected a mapping of threshold name -> value")
    return d.get("thresholds", d) if isinstance(d.get("thresholds"), dict) else d


def _unique_id(stem: str, taken: set[str]) -> str:
    i, cand = 1, stem
    while cand in taken:
        i += 1
        cand = f"{stem}_{i}"
    taken.add(cand)
    return cand


def collect_inputs(items: list[str]) -> list[tuple[str, str]]:
    """Expand files, folders and list files into unique ``(image_id, path)`` pairs."""
    from fundusfm.preprocess.io import IMAGE_EXTENSIONS

    out: list[tuple[str, str]] = []
    taken: set[str] = set()
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                log.warning("%s: no image files found", p)
            for f in files:
                rel = f.relative_to(p).with_suffix("")
                out.append((_unique_id(rel.as_posix(), taken), str(f)))
        elif p.suffix.lower() == ".csv":
            import pandas as pd

            df = pd.read_csv(p, dtype=str, keep_default_na=False)
            if "path" not in df.columns:
                raise SystemExit(f"{p}: list CSV needs a 'path' column (has {list(df.columns)})")
            for i, r in df.iterrows():
                if not r["path"]:
                    raise SystemExit(f"{p}: row {i + 2}: empty 'path'")
                path = Path(r["path"]) if Path(r["path"]).is_absolute() else p.parent / r["path"]
                iid = r.get("image_id") or Path(r["path"]).with_suffix("").as_posix()
                out.append((_unique_id(iid, taken), str(path)))
        elif p.suffix.lower() == ".txt":
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line) if Path(line).is_absolute() else p.parent / line
                    out.append((_unique_id(q.with_suffix("").name, taken), str(q)))
        else:  # a single image file (missing ones become error rows, not a crash)
            out.append((_unique_id(p.with_suffix("").name, taken), str(p)))
    return out


def manifest_inputs(manifest: str, root: str) -> list[tuple[str, str]]:
    """``(image_id, root/path)`` for every manifest row (missing files become error rows)."""
    import pandas as pd

    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    missing = [c for c in ("image_id", "path") if c not in df.columns]
    if missing:
        raise SystemExit(f"{manifest}: manifest lacks column(s) {missing}")
    rootp = Path(root)
    out = []
    for i, r in df.iterrows():
        if not r["image_id"] or not r["path"]:
            raise SystemExit(f"{manifest}: row {i + 2}: empty image_id or path")
        out.append((r["image_id"], str(rootp / r["path"])))
    return out


def preprocess_main(argv: list[str] | None = None) -> int:
    """Entry point of ``fundusfm preprocess``."""
    ap = argparse.ArgumentParser(prog="fundusfm preprocess", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders, or .txt/.csv lists")
    ap.add_argument("--manifest", help="dataset manifest CSV (image_id, path); use with --root")
    ap.add_argument("--root", default=".", help="dataset root that manifest paths are relative to")
    ap.add_argument("--out", required=True, help="output folder: images/, qc.csv")
    ap.add_argument("--size", type=int, default=512, help="output side in px (default 512)")
    ap.add_argument("--normalise", "--normalize", default="none", choices=["none", "ben_graham", "clahe"])
    ap.add_argument("--format", default="jpg", choices=["jpg", "png"],
                    help="stored training copies: jpg = q95 4:4:4 (fast decode, default), png = lossless")
    ap.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    ap.add_argument("--max-reject-fraction", type=float, default=None,
                    help="fail (after writing qc.csv) when rejected+error rows exceed this fraction")
    ap.add_argument("--thresholds", help="quality thresholds: JSON string or YAML/JSON file")
    ap.add_argument("--max-pixels", type=int, default=150_000_000, help="refuse larger images (bomb guard)")
    ap.add_argument("--max-decode-pixels", type=int, default=40_000_000,
                    help="refuse images that would decode to more pixels (every format but a DCT-scaled JPEG decodes "
                         "at full size): the memory bound of a worker [40 MP]")
    ap.add_argument("--monochrome", choices=["reject", "keep"], default="reject",
                    help="monochrome (red-free, grey-scale) photographs: reject (default) or keep where expected")
    ap.add_argument("--alpha", choices=["flatten", "refuse"], default="flatten",
                    help="images with transparent pixels: flatten onto black with a warning (default) or refuse")
    ap.add_argument("--no-fov-fallback", action="store_true",
                    help="reject photos without a clean rim circle instead of taking the bright region as the field of view")
    ap.add_argument("--gallery", help="also write the QC gallery PNG here")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    if a.verbose:
        logging.getLogger("fundusfm").setLevel(logging.DEBUG)

    from fundusfm.preprocess.pipeline import PreprocessSpec, TooManyRejects, preprocess_many, thresholds_from_dict

    if a.manifest and a.inputs:
        ap.error("give either INPUT... or --manifest, not both")
    if not a.manifest and not a.inputs:
        ap.error("nothing to do: give INPUT... or --manifest")
    try:
        spec = PreprocessSpec(size=a.size, normalise=a.normalise, format=a.format, max_pixels=a.max_pixels,
                              thresholds=thresholds_from_dict(_load_thresholds(a.thresholds)),
                              fov_fallback=not a.no_fov_fallback, max_decode_pixels=a.max_decode_pixels,
                              monochrome=a.monochrome, alpha=a.alpha)
    except ValueError as e:
        ap.error(str(e))
    inputs = manifest_inputs(a.manifest, a.root) if a.manifest else collect_inputs(a.inputs)
    if not inputs:
        log.error("no inputs found in %s", a.inputs)
        return 2
    rc = 0
    try:
        qc = preprocess_many(inputs, a.out, spec, workers=a.workers,
                             max_reject_fraction=a.max_reject_fraction, progress=not a.no_progress)
    except TooManyRejects as e:
        log.error("%s", e)
        import pandas as pd

        qc, rc = pd.read_csv(Path(a.out) / "qc.csv", dtype={"image_id": str}), 1
    except ValueError as e:  # duplicate / unusable image ids
        log.error("%s", e)
        return 2
    if a.gallery:
        from fundusfm.preprocess.gallery import make_gallery

        make_gallery(qc, a.gallery)
    return rc
