"""Duplicate and overlap detection across the whole study by perceptual hash of the processed images.

Public datasets reuse each other's photographs (EyeQ is EyePACS; several "new" datasets
repackage Messidor or APTOS images), and one photo can sit in a dataset twice under two
patient ids. Every near-duplicate pair (pHashes within :data:`NEAR_DUPLICATE_BITS` bits)
is handled and listed in ``results/overlap/overlap.csv`` with what was done (``action``):

* ``cross`` -- an upstream (pretraining) image and a downstream one: :func:`exclusion_list`
  leaves the upstream image out of pretraining (:func:`find_overlaps`);
* ``within_upstream`` / ``within_evaluation`` -- identical hashes inside one side: reported;
* ``development_external`` -- a task's development image and one of its external images:
  the external image is excluded from that external set (:func:`task_overlaps`);
* ``within_development`` -- two development images of a task: their patients are merged
  into one split group (:func:`fundusfm.data.splits.merge_groups`), which is also how a
  dataset without patient ids gets its groups.

The split steps (``fundusfm split``) apply the task pairs with the same function that
writes the report, so the two cannot disagree.
"""

from __future__ import annotations

import logging
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

log = logging.getLogger(__name__)

PAIR_COLUMNS = ["kind", "dataset_a", "image_id_a", "dataset_b", "image_id_b", "distance", "hash_a", "hash_b"]
# Hamming distance (of 64 bits) up to which two processed images count as the same photograph
NEAR_DUPLICATE_BITS = 4
ACTIONS = {
    "cross": "upstream image left out of pretraining",
    "within_upstream": "reported (identical images inside pretraining)",
    "within_evaluation": "reported (identical images among downstream datasets)",
    "development_external": "external image excluded from the external set",
    "within_development": "same split group (patients merged)",
}


def phash_file(path: str | Path, hash_size: int = 8) -> int:
    """pHash of one image as an unsigned integer (``hash_size``² bits, 64 by default)."""
    with Image.open(path) as im:
        h = imagehash.phash(im.convert("RGB"), hash_size=hash_size)
    return int(str(h), 16)


def hash_qc_table(dataset: str, qc_csv: str | Path, hash_size: int = 8) -> pd.DataFrame:
    """``dataset``, ``image_id``, ``hash`` for every ``ok`` row of a preprocess QC table.

    Processed paths are relative to the QC table's folder (the preprocess output dir).
    A missing processed image is an error naming the QC file and row.
    """
    qc_csv = Path(qc_csv)
    qc = pd.read_csv(qc_csv, dtype=str, keep_default_na=False)
    for col in ("image_id", "status", "processed_path"):
        if col not in qc.columns:
            raise ValueError(f"{qc_csv}: column {col!r} missing (is this a preprocess qc.csv?)")
    ok = qc[qc["status"] == "ok"]
    log.info("%s: hashing %d ok images (%d not ok skipped)", dataset, len(ok), len(qc) - len(ok))
    hashes = []
    for i, r in tqdm(ok.iterrows(), total=len(ok), desc=f"phash {dataset}", disable=len(ok) < 500):
        p = qc_csv.parent / r["processed_path"]
        if not p.is_file():
            raise FileNotFoundError(f"{qc_csv} row {i + 2}: processed image {p} missing (rerun preprocess)")
        hashes.append(phash_file(p, hash_size))
    return pd.DataFrame({"dataset": dataset, "image_id": ok["image_id"].to_numpy(),
                         "hash": np.array(hashes, dtype=np.uint64)})


def hash_images(paths, names: list[str] | None = None, hash_size: int = 8) -> np.ndarray:
    """pHash of each image path; a missing file is an error naming it (``names[i]`` if given)."""
    out = np.zeros(len(paths), dtype=np.uint64)
    for i, p in enumerate(paths):
        if not Path(p).is_file():
            raise FileNotFoundError(f"processed image {p} of {names[i] if names else p} missing (rerun preprocess)")
        out[i] = phash_file(p, hash_size)
    return out


def _as_u64(hashes: pd.Series) -> np.ndarray:
    return np.asarray(hashes, dtype=np.uint64)


def hamming_pairs(a: np.ndarray, b: np.ndarray, threshold: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i, j, distance) with popcount(a[i] ^ b[j]) <= threshold, computed in chunks."""
    ii, jj, dd = [], [], []
    for s in range(0, len(a), chunk):
        x = a[s:s + chunk, None] ^ b[None, :]
        d = np.bitwise_count(x)
        i, j = np.nonzero(d <= threshold)
        ii.append(i + s)
        jj.append(j)
        dd.append(d[i, j])
    if not ii:
        return np.array([], int), np.array([], int), np.array([], int)
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(dd).astype(int)


def _hex(h: int, bits: int = 64) -> str:
    return f"{int(h):0{bits // 4}x}"


def find_overlaps(hashes: pd.DataFrame | dict, upstream: list[str], evaluation: list[str], threshold: int = 4,
                  hash_size: int = 8) -> pd.DataFrame:
    """Pairs of near-identical images.

    ``hashes`` is a table of ``dataset``, ``image_id``, ``hash`` (see :func:`hash_qc_table`)
    or a dict ``{dataset: path to its preprocess qc.csv}`` to hash first.

    ``kind`` is ``cross`` for an upstream image within ``threshold`` bits of an evaluation
    image, ``within_upstream`` / ``within_evaluation`` for identical hashes (distance 0)
    inside one side (the same photograph twice, in one dataset or two). A dataset may be on
    both sides; an image is never paired with itself.
    """
    if isinstance(hashes, dict):
        hashes = pd.concat([hash_qc_table(n, p, hash_size) for n, p in hashes.items()], ignore_index=True)
    upstream, evaluation = list(upstream), list(evaluation)
    unknown = sorted(set(upstream + evaluation) - set(hashes["dataset"]))
    if unknown:
        raise KeyError(f"no hashes for dataset(s) {unknown}; give their QC tables with --qc NAME=PATH")
    up = hashes[hashes["dataset"].isin(upstream)].reset_index(drop=True)
    ev = hashes[hashes["dataset"].isin(evaluation)].reset_index(drop=True)
    rows = []
    i, j, d = hamming_pairs(_as_u64(up["hash"]), _as_u64(ev["hash"]), threshold)
    for a, b, dist in zip(i, j, d):
        ra, rb = up.iloc[a], ev.iloc[b]
        if (ra["dataset"], ra["image_id"]) == (rb["dataset"], rb["image_id"]):
            continue
        rows.append(("cross", ra["dataset"], ra["image_id"], rb["dataset"], rb["image_id"], int(dist),
                     _hex(ra["hash"]), _hex(rb["hash"])))
    for kind, side in (("within_upstream", up), ("within_evaluation", ev)):
        for _, g in side.groupby("hash", sort=True):
            if len(g) < 2:
                continue
            g = g.sort_values(["dataset", "image_id"])
            first = g.iloc[0]
            for _, r in g.iloc[1:].iterrows():
                rows.append((kind, first["dataset"], first["image_id"], r["dataset"], r["image_id"], 0,
                             _hex(first["hash"]), _hex(r["hash"])))
    out = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    return out.sort_values(["kind", "dataset_a", "image_id_a", "dataset_b", "image_id_b"]).reset_index(drop=True)


def exclusion_list(pairs: pd.DataFrame) -> pd.DataFrame:
    """Upstream images to leave out of pretraining: ``dataset``, ``image_id``, ``reason``."""
    cross = pairs[pairs["kind"] == "cross"]
    if cross.empty:
        return pd.DataFrame(columns=["dataset", "image_id", "reason"])
    grouped = cross.groupby(["dataset_a", "image_id_a"], sort=True).apply(
        lambda g: "; ".join(f"matches {r.dataset_b}:{r.image_id_b} (distance {r.distance})" for r in g.itertuples()),
        include_groups=False)
    return pd.DataFrame({"dataset": [k[0] for k in grouped.index], "image_id": [k[1] for k in grouped.index],
                         "reason": grouped.to_numpy()})


def task_overlaps(hashes: pd.DataFrame, development: list[str], external: list[str],
                  threshold: int = NEAR_DUPLICATE_BITS) -> pd.DataFrame:
    """Near-duplicate pairs of one task: ``within_development`` (two development images,
    ``i < j`` in table order) and ``development_external`` (a development image and an
    external one), each with its ``action`` (:data:`ACTIONS`). ``hashes``: ``dataset``,
    ``image_id``, ``hash`` of the task's usable images."""
    dev = hashes[hashes["dataset"].isin(development)].reset_index(drop=True)
    ext = hashes[hashes["dataset"].isin(external)].reset_index(drop=True)
    rows = []
    hd = _as_u64(dev["hash"])
    i, j, d = hamming_pairs(hd, hd, threshold)
    for a, b, dist in zip(i, j, d):
        if a < b:
            ra, rb = dev.iloc[a], dev.iloc[b]
            rows.append(("within_development", ra["dataset"], ra["image_id"], rb["dataset"], rb["image_id"],
                         int(dist), _hex(ra["hash"]), _hex(rb["hash"])))
    i, j, d = hamming_pairs(hd, _as_u64(ext["hash"]), threshold)
    for a, b, dist in zip(i, j, d):
        ra, rb = dev.iloc[a], ext.iloc[b]
        rows.append(("development_external", ra["dataset"], ra["image_id"], rb["dataset"], rb["image_id"],
                     int(dist), _hex(ra["hash"]), _hex(rb["hash"])))
    out = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    out["action"] = out["kind"].map(ACTIONS)
    return out.sort_values(["kind", "dataset_a", "image_id_a", "dataset_b", "image_id_b"]).reset_index(drop=True)


def study_overlaps(hashes: pd.DataFrame, upstream: list[str], tasks: dict[str, dict],
                   threshold: int = NEAR_DUPLICATE_BITS, exclude_from_pretraining: bool = True) -> pd.DataFrame:
    """Every near-duplicate pair of the study with what was done: :func:`find_overlaps`
    (upstream/downstream) plus :func:`task_overlaps` of each task (``tasks``: name ->
    ``{"datasets": [...], "external": [...]}``), with columns ``task`` and ``action``."""
    evaluation = sorted({d for t in tasks.values() for d in t["datasets"] + t.get("external", [])} - set(upstream))
    cross = find_overlaps(hashes, upstream, evaluation, threshold)
    cross["task"] = ""
    cross["action"] = cross["kind"].map(ACTIONS)
    if not exclude_from_pretraining:
        cross.loc[cross["kind"] == "cross", "action"] = "reported only (pretrain.exclude_overlaps is false)"
    parts = [cross]
    for name, t in sorted(tasks.items()):
        p = task_overlaps(hashes, t["datasets"], t.get("external", []), threshold)
        p.insert(0, "task", name)
        parts.append(p)
    cols = ["task", *PAIR_COLUMNS, "action"]
    return pd.concat([p[cols] for p in parts], ignore_index=True)
