"""Images and labels from a task table, fundus augmentation, and epoch-seeded samplers.

Reproducibility design: every random choice of an epoch is a pure function of
``(seed, epoch, position)`` -- the sample order comes from a generator seeded by
``(seed, epoch)`` and each sample's augmentation from ``(seed, epoch, position)``.
A run resumed at any epoch (or step) therefore draws exactly what an uninterrupted run
draws, independent of the number of loader workers or DDP ranks.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from fundusfm.task import TaskSpec


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix-style), stable across processes."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def encode_targets(df: pd.DataFrame, task: TaskSpec, table: str = "task table") -> np.ndarray:
    """Targets per row: int class indices (single-label) or float 0/1/NaN (multilabel).

    Single-label rows must be labelled; an unknown or out-of-range label raises naming
    the table, row and column (the split stage marks unlabelled images ``excluded``).
    """
    missing = [c for c in task.columns if c not in df.columns]
    if missing:
        raise ValueError(f"{table}: label column(s) {missing} not found (columns: {list(df.columns)})")
    if task.multilabel:
        vals = df[list(task.columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
        bad = ~np.isnan(vals) & ~np.isin(vals, (0.0, 1.0))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"{table}: row {file_row(df.index[r])} ({_row_name(df, r)}) column {task.columns[c]!r}: "
                             f"multilabel values must be 0/1, got {vals[r, c]}")
        return vals
    col = task.columns[0]
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(vals) | (vals != np.round(vals)) | (vals < 0) | (vals >= task.num_outputs)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{table}: row {file_row(df.index[r])} ({_row_name(df, r)}) column {col!r}: label {df[col].iloc[r]!r} is "
            f"not a class index 0..{task.num_outputs - 1} ({bad.sum()} such rows); unlabelled rows must be "
            "'excluded' in the fold column"
        )
    return vals.astype(np.int64)


def file_row(label) -> int:
    """Row number in the CSV file (as a spreadsheet shows it: the header is row 1) of the
    table row with index label ``label``. Task tables are read with pandas' default index,
    kept through every selection, so label ``i`` is data row ``i``, file row ``i + 2``."""
    return int(label) + 2


def _row_name(df: pd.DataFrame, r: int) -> str:
    row = df.iloc[r]
    return f"{row.get('dataset', '?')}/{row.get('image_id', '?')}"


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Decode an image as a uint8 CHW RGB tensor of ``size`` x ``size``.

    JPEG is decoded at reduced scale when much larger than ``size`` (``draft``);
    images not already at training size are resized (processed images usually are).
    """
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def train_transform(size: int, aug: dict) -> v2.Compose:
    """CPU augmentation of a uint8 fundus tensor (output uint8, normalised on device)."""
    ops: list = [
        v2.RandomResizedCrop(size, scale=(aug["scale_min"], 1.0), ratio=tuple(aug["ratio"]), antialias=True),
    ]
    if aug["hflip"]:
        ops.append(v2.RandomHorizontalFlip(aug["hflip"]))
    if aug["vflip"]:
        ops.append(v2.RandomVerticalFlip(aug["vflip"]))
    if aug["rotation"]:
        ops.append(v2.RandomRotation(aug["rotation"], interpolation=v2.InterpolationMode.BILINEAR, fill=0))
    if any(aug[k] for k in ("brightness", "contrast", "saturation", "hue")):
        ops.append(v2.ColorJitter(aug["brightness"], aug["contrast"], aug["saturation"], aug["hue"]))
    return v2.Compose(ops)


class FundusDataset(Dataset):
    """Rows of a task table: (uint8 image, target, row position).

    Images are read from disk on access (nothing cached in RAM).  Keys are either an
    int (no augmentation) or ``(position, aug_seed)`` from :class:`EpochBatchSampler`.
    """

    def __init__(self, paths: list[str], targets: np.ndarray, size: int, transform=None):
        self.paths, self.targets, self.size, self.transform = list(paths), targets, size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        idx, aug_seed = key if isinstance(key, tuple) else (key, None)
        img = load_image(self.paths[idx], self.size)
        if self.transform is not None and aug_seed is not None:
            # per-sample seed: the same draw whatever the worker, rank or resume point
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(aug_seed)
                img = self.transform(img)
        return img, torch.tensor(self.targets[idx]), idx


class EpochBatchSampler:
    """Global batches of an epoch, each split into contiguous per-rank shards.

    The epoch's order (a permutation, or weighted draws with replacement for balanced
    sampling) depends only on ``(seed, epoch)``; rank ``r`` of ``world`` takes the
    ``r``-th slice of every global batch, so each drawn position is seen by exactly one
    rank once, and the per-step union over ranks equals the single-process batch.
    A trailing global batch smaller than ``2 * world`` is dropped (BatchNorm needs two
    samples per rank).  ``start_step`` skips already-trained steps on a mid-epoch resume.
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, rank: int = 0, world: int = 1,
                 shuffle: bool = True, weights: np.ndarray | None = None):
        if batch_size < world:
            raise ValueError(f"batch_size {batch_size} is smaller than the number of processes {world}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.shuffle, self.weights = rank, world, shuffle, weights
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def global_batches(self) -> list[np.ndarray]:
        """Positions (row indices) of each global batch of the current epoch."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 1))
        if self.weights is not None:
            order = torch.multinomial(torch.as_tensor(self.weights, dtype=torch.float64), self.n, True, generator=g)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        order = order.numpy()
        batches = [order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        if batches and len(batches[-1]) < 2 * self.world:
            batches.pop()
        return batches

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (rest >= 2 * self.world)

    def global_sizes(self) -> list[int]:
        return [len(b) for b in self.global_batches()]

    def __iter__(self):
        for step, batch in enumerate(self.global_batches()):
            if step < self.start_step:
                continue
            lo, hi = _shard_bounds(len(batch), self.rank, self.world)
            offset = step * self.batch_size
            yield [(int(batch[j]), mix_seed(self.seed, self.epoch, offset + j, 2)) for j in range(lo, hi)]


def _shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class ShardBatchSampler:
    """Evaluation batches: rank ``r`` takes positions ``r, r+world, ...`` in order."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        self.idx = list(range(rank, n, world))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.idx) / self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.idx), self.batch_size):
            yield self.idx[i:i + self.batch_size]


def sample_weights(targets: np.ndarray, task: TaskSpec) -> np.ndarray:
    """Per-sample weights for balanced sampling (inverse class / positive-label frequency)."""
    if not task.multilabel:
        counts = np.bincount(targets, minlength=task.num_outputs).astype(float)
        return 1.0 / np.maximum(counts[targets], 1.0)
    pos = np.nan_to_num(targets) > 0
    pos_counts = np.maximum(pos.sum(0), 1.0)
    neg_only = ~pos.any(1)
    w = np.where(pos, 1.0 / pos_counts, 0.0).max(1)
    w[neg_only] = 1.0 / max(neg_only.sum(), 1)
    return w


class GpuAugment:
    """Batched fundus augmentation on the device, one random draw per sample.

    Crop/scale, flips and rotation are composed into one affine warp per sample
    (``affine_grid`` + ``grid_sample``, black fill); brightness, contrast and
    saturation are per-sample factors.  Draws come from a generator seeded per step.
    Use when the CPU workers cannot keep the GPU fed.
    """

    def __init__(self, aug: dict):
        self.aug = aug

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """``x``: float batch in [0, 1], NCHW."""
        a, n, dev = self.aug, x.shape[0], x.device
        g = torch.Generator(device=dev).manual_seed(seed)
        u = lambda *s: torch.rand(*s, generator=g, device=dev)  # noqa: E731
        scale = torch.sqrt(a["scale_min"] + (1 - a["scale_min"]) * u(n))  # side fraction of the crop
        ang = (u(n) * 2 - 1) * math.radians(a["rotation"])
        sx = torch.where(u(n) < a["hflip"], -scale, scale)
        sy = torch.where(u(n) < a["vflip"], -scale, scale)
        tx, ty = (u(n) * 2 - 1) * (1 - scale), (u(n) * 2 - 1) * (1 - scale)
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta = torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        fac = lambda s: (1 + (u(n) * 2 - 1) * s).view(n, 1, 1, 1).to(x.dtype)  # noqa: E731
        x = x * fac(a["brightness"])
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * fac(a["contrast"]) + mean
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * fac(a["saturation"]) + gray
        return x.clamp_(0, 1)


def read_task_table(path: str, fold: int) -> tuple[pd.DataFrame, str]:
    """The task table and its fold column name; errors name the file and the key."""
    df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str, "dataset": str, "eye": str},
                     keep_default_na=True)
    col = f"fold{fold}"
    need = ["dataset", "image_id", "patient_id", "image", col]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} missing (have {list(df.columns)})")
    roles = {"train", "val", "test", "external", "excluded"}
    bad = ~df[col].isin(roles)
    if bad.any():
        r = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}: row {file_row(r)} column {col!r}: role {df[col].iloc[r]!r} not in {sorted(roles)}")
    if "eye" not in df.columns:
        df["eye"] = "U"
    return df, col
