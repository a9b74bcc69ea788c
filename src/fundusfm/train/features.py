"""The frozen-feature file (``fundusfm embed`` writes it, the linear probe and ``fundusfm
infer`` of a linear run read it), without torch.

A Parquet file: column ``image`` (the image path as the task table names it, the join
key), then ``f0000 .. f{d-1}`` (float32, one per feature), and under the schema metadata
key ``b"fundusfm"`` a JSON object describing how the features were made: the model
definition (arch, head, img_size, mean, std), the init (name, spec, key report), the
feature width, the number of images, the device and the time it took
(:func:`fundusfm.train.embed.embed_table` lists every key).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

META_KEY = b"fundusfm"
FORMAT = "fundusfm-features"
FORMAT_VERSION = 1
IMAGE_COLUMN = "image"


class FeaturesError(ValueError):
    """A feature file is missing, not a fundusfm feature file, or lacks an image (names the file)."""


def feature_columns(dim: int) -> list[str]:
    """Names of the feature columns: ``f0000``, ``f0001``, ..."""
    return [f"f{j:04d}" for j in range(dim)]


def write_features(path: str | Path, images: Sequence[str], features: np.ndarray, meta: dict) -> Path:
    """Write ``features`` (n x d) of ``images`` (n distinct paths) with ``meta`` (atomically).

    ``meta`` gains ``format``, ``format_version``, ``feature_dim`` and ``n_images``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fundusfm.fileio import atomic_write

    images = [str(p) for p in images]
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != len(images):
        raise ValueError(f"{path}: features of shape {x.shape} for {len(images)} images")
    if len(set(images)) != len(images):
        dup = next(p for i, p in enumerate(images) if p in images[:i])
        raise ValueError(f"{path}: image {dup!r} listed twice")
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "feature_dim": int(x.shape[1]),
            "n_images": len(images)}
    columns = [pa.array(images, type=pa.string())] + [pa.array(x[:, j]) for j in range(x.shape[1])]
    table = pa.Table.from_arrays(columns, names=[IMAGE_COLUMN, *feature_columns(x.shape[1])])
    table = table.replace_schema_metadata({META_KEY: json.dumps(info, default=str).encode()})
    return atomic_write(path, lambda p: pq.write_table(table, str(p)))


def read_meta(path: str | Path) -> dict:
    """The ``b"fundusfm"`` metadata of a feature file (its schema only, no data read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FeaturesError(f"feature file {path} not found (written by `fundusfm embed`)")
    try:
        schema = pq.read_schema(str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise FeaturesError(f"{path}: not a Parquet file ({exc}); feature files are written by `fundusfm embed`") \
            from None
    raw = (schema.metadata or {}).get(META_KEY)
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError as exc:
        raise FeaturesError(f"{path}: metadata key 'fundusfm' is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FeaturesError(f"{path}: not a fundusfm feature file (no {FORMAT!r} metadata under key 'fundusfm'); "
                            "write it with `fundusfm embed`")
    if not isinstance(meta.get("feature_dim"), int) or meta["feature_dim"] < 1:
        raise FeaturesError(f"{path}: metadata key 'feature_dim' is {meta.get('feature_dim')!r}")
    names = schema.names
    want = [IMAGE_COLUMN, *feature_columns(meta["feature_dim"])]
    if names != want:
        raise FeaturesError(f"{path}: columns {names[:3]}... ({len(names)}) are not 'image' then "
                            f"f0000..f{meta['feature_dim'] - 1:04d} as its metadata says")
    return meta


def read_features(path: str | Path) -> tuple[list[str], np.ndarray, dict]:
    """``(images, features, meta)`` of a feature file: the image paths in file order, an
    n x d float32 array and the metadata. Errors name the file."""
    import pyarrow.parquet as pq

    meta = read_meta(path)
    table = pq.read_table(str(path))
    images = table.column(IMAGE_COLUMN).to_pylist()
    if any(p is None for p in images):
        raise FeaturesError(f"{path}: row {images.index(None) + 1} has no image path")
    dim = meta["feature_dim"]
    x = np.empty((table.num_rows, dim), dtype=np.float32)
    for j, name in enumerate(feature_columns(dim)):
        x[:, j] = table.column(name).to_numpy()
    if not np.isfinite(x).all():
        r = int(np.flatnonzero(~np.isfinite(x).all(1))[0])
        raise FeaturesError(f"{path}: image {images[r]!r} has non-finite features")
    return images, x, meta


def features_for(images: Sequence[str], path: str | Path, loaded: tuple[list[str], np.ndarray, dict] | None = None,
                 *, what: str = "") -> np.ndarray:
    """The rows of feature file ``path`` (or its ``loaded`` content) for ``images``, in
    that order. An image without features is an error naming it, ``what`` (e.g. the
    table and set it comes from) and the file."""
    names, x, _ = loaded if loaded is not None else read_features(path)
    pos = {p: i for i, p in enumerate(names)}
    idx = [pos.get(str(p), -1) for p in images]
    absent = [p for p, i in zip(images, idx) if i < 0]
    if absent:
        raise FeaturesError(f"{path}: no features for image {absent[0]!r}{' of ' + what if what else ''} "
                            f"({len(absent)} of {len(images)} images missing); embed them with `fundusfm embed` "
                            "over the same table")
    return x[np.asarray(idx, dtype=np.int64)] if len(idx) else np.zeros((0, x.shape[1]), np.float32)
