"""``fundusfm predict``: probabilities for new photographs with a release.

Every input gets exactly one row, in input order: ``ok`` (probabilities and predicted
label), ``rejected`` (readable, but no field of view or failing the quality grade) or
``error`` (missing, unreadable, not an image); ``reason`` says why. Preprocessing runs in
``--workers`` processes, the model in batches on CPU or GPU.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd


log = logging.getLogger("fundusfm.predict")

BASE_COLUMNS = ["path", "status", "reason", "quality", "fov_cx", "fov_cy", "fov_r"]
PATH_COLUMNS = ("path", "image", "file", "filename")


class InputError(ValueError):
    """An input argument cannot be read as images, a folder or a CSV list."""


def expand_inputs(inputs: list[str], path_column: str | None = None) -> list[str]:
    """Image paths of the inputs, in order.

    A folder gives every file below it (sorted; hidden files, e.g. ``.DS_Store``, are
    skipped and counted in the log; a file without a photograph's suffix,
    :data:`fundusfm.imagetypes.IMAGE_SUFFIXES`, the list preprocessing reads, gets an
    ``error`` row saying so), a ``.csv`` file the paths in its column
    ``path_column`` (default: the first of ``path``, ``image``, ``file``, ``filename``;
    relative paths are relative to the CSV's folder), anything else is taken as an image
    path, even when missing (its row then says so).
    """
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files, hidden = [], 0
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).parts
                if any(part.startswith(".") for part in rel):
                    hidden += f.is_file()
                elif f.is_file():
                    files.append(str(f))
            if hidden:
                log.info("%s: %d hidden file(s) skipped", p, hidden)
            if not files:
                log.warning("%s: folder holds no files", p)
            out += files
        elif p.suffix.lower() == ".csv" and p.is_file():
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
            col = path_column or next((c for c in PATH_COLUMNS if c in df.columns), None)
            if col is None or col not in df.columns:
                raise InputError(f"{p}: no column {path_column or ' / '.join(PATH_COLUMNS)!r} with image paths "
                                 f"(columns: {list(df.columns)}); name it with --path-column")
            for i, v in enumerate(df[col]):
                if not v.strip():
                    raise InputError(f"{p}: row {i + 2} column {col!r} is empty")
                out.append(v if Path(v).is_absolute() else str(p.parent / v))
        else:
            out.append(str(p))
    return out


def _prepare(args) -> tuple[dict, np.ndarray | None]:
    """Worker: QC row and uint8 CHW model input (``None`` unless ok) of one file."""
    from fundusfm.preprocess.pipeline import PreprocessSpec, process_image
    from fundusfm.release.loading import model_input

    path, spec_d, img_size = args
    spec = PreprocessSpec.from_dict(spec_d)
    row, processed = process_image(path, spec)
    keep = {k: row.get(k) for k in BASE_COLUMNS}
    if processed is None:
        return keep, None
    try:
        return keep, model_input(processed, spec, img_size).numpy()
    except OSError as e:  # pragma: no cover - an encode/decode failure of a processed image
        keep.update(status="error", reason=f"{path}: {e}")
        return keep, None


def _iter_prepared(paths: list[str], spec_d: dict, img_size: int, workers: int):
    from fundusfm.preprocess.pipeline import init_worker

    todo = [(p, spec_d, img_size) for p in paths]
    if workers <= 1 or len(todo) <= 1:
        init_worker()
        yield from map(_prepare, todo)
        return
    import multiprocessing as mp

    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=init_worker) as pool:
        yield from pool.imap(_prepare, todo, chunksize=max(1, min(8, len(todo) // (workers * 4))))


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def predicted_labels(prob: np.ndarray, classes: list[str], multilabel: bool) -> list[str]:
    """Arg-max class (single-label) or the labels with p >= 0.5 joined by ``;`` (``none``)."""
    if multilabel:
        return [";".join(c for c, p in zip(classes, row) if p >= 0.5) or "none" for row in prob]
    return [classes[int(i)] for i in prob.argmax(1)]


def write_cams(released, x: np.ndarray, prob: np.ndarray, names: list[str], cam_dir: Path,
               method: str = "gradcam") -> list[str]:
    """Activation-map overlays of a batch (target: the most probable output) as PNGs."""
    import torch
    from PIL import Image

    from fundusfm.evaluate.cam import compute_cams, overlay, to_tensor

    rgbs = [xi.transpose(1, 2, 0) for xi in x]
    xt = to_tensor(rgbs, released.meta["mean"], released.meta["std"]).to(released.device)
    with torch.enable_grad():
        cams = compute_cams(released.model, xt, [int(i) for i in prob.argmax(1)], method)
    out = []
    for rgb, cam, name in zip(rgbs, cams, names):
        path = cam_dir / name
        Image.fromarray(overlay(np.ascontiguousarray(rgb), cam)).save(path)
        out.append(str(path))
    return out


def predict_inputs(released, paths: list[str], *, batch_size: int = 16, workers: int = 1,
                   cam_dir: str | Path | None = None, cam_method: str = "gradcam",
                   progress: bool = True) -> pd.DataFrame:
    """One row per path, in order: QC status, FOV and, for ok images, probabilities and the
    predicted label (columns ``path, status, reason, quality, fov_cx, fov_cy, fov_r,
    prob_<class>..., predicted`` and ``cam`` when ``cam_dir`` is given)."""
    import torch
    from tqdm.auto import tqdm

    classes = released.classes
    k = len(classes)
    rows: list[dict] = []
    probs = np.full((len(paths), k), np.nan, dtype=np.float64)
    cam_paths: list[str] = [""] * len(paths)
    if cam_dir is not None:
        cam_dir = Path(cam_dir)
        cam_dir.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        if not pending:
            return
        idx = [i for i, _ in pending]
        x = np.stack([a for _, a in pending])
        p = released.predict(torch.from_numpy(x))
        probs[idx] = p
        if cam_dir is not None:
            names = [f"{i:05d}_{_safe(Path(paths[i]).stem)}.png" for i in idx]
            for i, cp in zip(idx, write_cams(released, x, p, names, cam_dir, cam_method)):
                cam_paths[i] = cp
        pending.clear()

    spec_d = asdict(released.spec)
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    for i, (row, x) in enumerate(_iter_prepared(paths, spec_d, int(released.meta["img_size"]), workers)):
        row["path"] = paths[i]  # as given, whatever the worker saw
        rows.append(row)
        if x is not None:
            pending.append((i, x))
            if len(pending) >= batch_size:
                flush()
        bar.update()
    flush()
    bar.close()

    df = pd.DataFrame(rows, columns=BASE_COLUMNS)
    df["reason"] = df["reason"].fillna("")
    df["quality"] = df["quality"].fillna("")
    for j, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, j]
    ok = (df["status"] == "ok").to_numpy()
    pred = np.array([""] * len(df), dtype=object)
    if ok.any():
        pred[ok] = predicted_labels(probs[ok], classes, released.multilabel)
    df["predicted"] = pred
    if cam_dir is not None:
        df["cam"] = cam_paths
    return df
