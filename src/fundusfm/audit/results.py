"""A results tree checked against what it recorded (``fundusfm check-results``, ``make check-results``).

Snakemake decides what to rerun from files and time stamps: a file deleted or replaced
below outputs that still stand (a run folder removed after its tables were made, a
processed image overwritten) is not noticed, and ``snakemake`` says "Nothing to be done".
This check reads what the study recorded about its own files and reports every file that
no longer matches, one line each, with the file and how to rebuild it:

* QC tables (``preprocessed/<ds>/qc.csv``): every ``ok`` row's processed image exists
  and has the recorded ``processed_xxh3``;
* split tables (``splits/*.csv``): every used image exists and has its ``image_xxh3``;
* metrics JSONs (``metrics/.../<set>.json``): the run folder and predictions file they were
  computed from exist, and the predictions still hold the split's images (``split``);
* the release (``release/``): its integrity digest and weights SHA-256
  (:func:`fundusfm.release.loading.verify_release`);
* conversions of trusted pickles (``conversions/<sha256>.safetensors``): their header
  names the source bytes of their name and ``trust_pickle``;
* with the study config: every run the grid expects has its finished folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from fundusfm import layout
from fundusfm.hashing import fast_digest_file

REBUILD_PREPROCESS = "rebuild it: snakemake --forcerun preprocess (changed images are redone, then what follows)"


def _rebuild(path: Path) -> str:
    return f"rebuild it: snakemake --cores N {path} (then snakemake, which reruns what depends on it)"


def check_qc_tables(results: Path) -> Iterator[str]:
    for qc_path in sorted((results / "preprocessed").glob("*/qc.csv")):
        qc = pd.read_csv(qc_path, dtype=str, keep_default_na=False)
        if "processed_xxh3" not in qc.columns:
            yield f"{qc_path}: no processed_xxh3 column (written before digests were recorded); {REBUILD_PREPROCESS}"
            continue
        for i, row in qc[qc["status"] == "ok"].iterrows():
            img = qc_path.parent / row["processed_path"]
            if not img.is_file():
                yield f"{qc_path}: row {i + 2} ({row['image_id']}): processed image {img} is missing; {REBUILD_PREPROCESS}"
            elif fast_digest_file(img) != row["processed_xxh3"]:
                yield (f"{qc_path}: row {i + 2} ({row['image_id']}): processed image {img} differs from its recorded "
                       f"processed_xxh3; {REBUILD_PREPROCESS}")


def check_split_tables(results: Path) -> Iterator[str]:
    for table in sorted((results / "splits").rglob("*.csv")):
        df = pd.read_csv(table, dtype=str, keep_default_na=False)
        if "image" not in df.columns:
            continue
        folds = [c for c in df.columns if c.startswith("fold") and c[4:].isdigit()]
        used = df[(df[folds] != "excluded").any(axis=1)] if folds else df
        for i, row in used.iterrows():
            img = Path(row["image"])
            if not row["image"]:
                continue
            if not img.is_file():
                yield f"{table}: row {i + 2} ({row.get('image_id', '?')}): image {img} is missing; {REBUILD_PREPROCESS}"
            elif row.get("image_xxh3") and fast_digest_file(img) != row["image_xxh3"]:
                yield (f"{table}: row {i + 2} ({row.get('image_id', '?')}): image {img} differs from its image_xxh3; "
                       f"{REBUILD_PREPROCESS}")


def check_metrics(results: Path) -> Iterator[str]:
    from fundusfm.evaluate.io import ids_digest

    for path in sorted((results / layout.METRICS).rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            yield f"{path}: unreadable ({e}); {_rebuild(path)}"
            continue
        run = results / layout.FINETUNE / path.parent.relative_to(results / layout.METRICS)
        if not ((run / "model.json").is_file() or (run / "probe.json").is_file()):
            yield (f"{path}: its run folder {run} is gone (the tables built on it still stand); rebuild it: "
                   f"snakemake --cores N {run}/predictions_{rec.get('set', 'test')}.csv, then snakemake")
            continue
        pred = Path(rec.get("predictions") or "")
        if not rec.get("predictions") or not pred.is_file():
            yield f"{path}: its predictions {pred} are gone; {_rebuild(pred)}"
            continue
        split = rec.get("split")
        if isinstance(split, dict):
            df = pd.read_csv(pred, dtype={"image_id": str, "dataset": str}, keep_default_na=False)
            keys = list(zip(df["dataset"], df["image_id"])) if {"dataset", "image_id"} <= set(df.columns) else []
            if len(keys) != split.get("n_images") or ids_digest(keys) != split.get("ids_sha256"):
                yield (f"{pred}: holds other images than {split.get('table')} fold{split.get('fold')} "
                       f"{split.get('set')} had when {path} was computed; rerun its job: delete {pred}, then snakemake")


def check_release(results: Path) -> Iterator[str]:
    from fundusfm.release.loading import CONFIG_FILE, ReleaseError, read_config, verify_release

    release = results / "release"
    if not (release / CONFIG_FILE).is_file():
        return
    try:
        verify_release(release, read_config(release))
    except ReleaseError as e:
        yield f"{e}"


def check_conversions(results: Path) -> Iterator[str]:
    from safetensors import SafetensorError, safe_open

    for conv in sorted((results / layout.CONVERSIONS).glob("*.safetensors")):
        try:
            with safe_open(str(conv), "pt") as fh:
                meta = fh.metadata() or {}
        except (SafetensorError, OSError) as e:
            yield f"{conv}: unreadable ({e}); delete it (it is made again from its trusted source)"
            continue
        if meta.get("source_sha256") != conv.stem or meta.get("trust_pickle") != "true":
            yield f"{conv}: its header does not name the source of its name under trust_pickle; delete it"


def check_grid(results: Path, config: dict) -> Iterator[str]:
    from fundusfm import config as fcfg

    for run in fcfg.runs(config):
        folder = Path(layout.finetune_dir(results, run))
        if not ((folder / "model.json").is_file() or (folder / "probe.json").is_file()):
            yield f"{folder}: a run of the study's grid without its finished folder; rebuild it: snakemake"


CHECKS = (check_qc_tables, check_split_tables, check_metrics, check_release, check_conversions)


def check_results(results: str | Path, config: dict | None = None) -> list[str]:
    """Every problem of a results tree against its recorded digests and records (see the
    module docstring), one line each; empty when everything matches."""
    results = Path(results)
    problems = [p for check in CHECKS for p in check(results)]
    if config is not None:
        problems += list(check_grid(results, config))
    return problems
