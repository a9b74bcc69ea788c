"""Images of a task table, fundus augmentation, and epoch-seeded samplers (the rows and
their targets: :mod:`fundusfm.train.sets`).

Reproducibility design: every random choice of an epoch is a pure function of
``(seed, epoch, position)`` -- the sample order comes from a generator seeded by
``(seed, epoch)`` and each sample's augmentation from ``(seed, epoch, position)``.
A run resumed at any epoch (or step) therefore draws exactly what an uninterrupted run
draws, independent of the number of loader workers or DDP ranks.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from fundusfm.task import TaskSpec
from fundusfm.train.sets import mix_seed


_CV_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.11 decodes straight to RGB
_CV_READ = (cv2.IMREAD_COLOR if _CV_RGB is None else _CV_RGB) | cv2.IMREAD_IGNORE_ORIENTATION


def check_digest(data: bytes, digest: str | None, source) -> None:
    """Refuse a processed image whose bytes are not the ones preprocessing wrote
    (``digest``: its xxh3-128 in the QC table, ``processed_xxh3``, carried into the task
    table as ``image_xxh3``; empty or ``None``: not recorded, nothing to check)."""
    if not digest or not isinstance(digest, str):
        return
    from fundusfm.hashing import DigestMismatch, fast_digest_bytes

    if fast_digest_bytes(data) != digest:
        name = getattr(source, "name", source)
        raise DigestMismatch(
            f"processed image {name} is not the file preprocessing wrote (its xxh3-128 differs from the QC "
            f"table's processed_xxh3 {digest[:12]}...): it was replaced or damaged after preprocessing. Rebuild "
            f"it: `snakemake --forcerun preprocess` (changed images are redone, then the jobs after them), or "
            f"delete it and rerun `fundusfm preprocess` for its dataset")


def decode_rgb(source, size: int, digest: str | None = None) -> np.ndarray:
    """Decode an image file (path or binary file object) as a ``size`` x ``size`` HxWx3 uint8 RGB array.

    OpenCV (libjpeg-turbo, libpng) decodes the stored training copies straight into an RGB
    array: ~1 ms for a 512-px JPEG q95 4:4:4 on one core, ~2.7 ms for the PNG
    (``benchmarks/train_throughput.py --loader-only``). EXIF orientation is ignored
    (processed images carry none). Anything OpenCV refuses goes through Pillow, which also
    words the error. Images not already at training size are resized (area filter when
    shrinking, bilinear when enlarging; processed images usually are at size). With
    ``digest`` the bytes are checked first (:func:`check_digest`).
    """
    try:
        data = source.read() if hasattr(source, "read") else Path(source).read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read image {getattr(source, 'name', source)}: {exc}") from exc
    check_digest(data, digest, source)
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), _CV_READ) if data else None
        if arr is not None and _CV_RGB is None:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        if arr is None:
            with Image.open(io.BytesIO(data)) as im:
                arr = np.array(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot read image {getattr(source, 'name', source)}: {exc}") from exc
    if arr.shape[:2] != (size, size):
        shrink = min(arr.shape[:2]) > size
        arr = cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return arr


def load_image(source, size: int, digest: str | None = None) -> torch.Tensor:
    """:func:`decode_rgb` as a uint8 CHW tensor (a view: ``torch.stack`` of a batch copies once)."""
    return torch.from_numpy(decode_rgb(source, size, digest)).permute(2, 0, 1)


def image_digests(rows) -> list[str] | None:
    """The recorded content digest of each row's processed image (task table column
    ``image_xxh3``), or ``None`` for a table written before it was recorded."""
    if "image_xxh3" not in getattr(rows, "columns", ()):
        return None
    return ["" if not isinstance(v, str) else v for v in rows["image_xxh3"].tolist()]


# ----------------------------------------------------------------------------- augmentation
#
# One distribution, two implementations. ``augment_params`` draws every sample's
# parameters from its own seed (a function of (seed, epoch, position)): an affine map
# (random resized crop, flips, rotation) and a colour map (brightness, contrast,
# saturation, hue as one 3x3 matrix plus a grey offset). ``CpuAugment`` applies them to
# one uint8 image in a loader worker (one cv2.warpAffine, one cv2.transform);
# ``GpuAugment`` applies the same parameters to a batch on the device (affine_grid +
# grid_sample, one batched matrix product). The same seeds give the same images up to
# uint8 rounding, whichever path runs.

# RGB -> YIQ (NTSC); its first row is the luma used for grey (saturation, contrast).
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)
_LUMA = _YIQ[0]
N_DRAWS = 11  # uniforms per sample


def augment_params(aug: dict, seeds) -> dict[str, np.ndarray]:
    """Per-sample augmentation parameters, one row per seed (float64 arrays).

    ``theta`` (n, 2, 3): output -> source map in normalised coordinates ([-1, 1], pixel
    corners, x first), i.e. ``affine_grid``'s convention: a crop of area fraction
    ``U(scale_min, 1)`` and aspect ratio log-uniform in ``ratio`` (sides clipped to the
    image), its centre uniform where the crop fits, flips with probability ``hflip`` /
    ``vflip``, rotation ``U(-rotation, rotation)`` degrees. ``color`` (n, 3, 3) and
    ``grey`` (n,): the colour map ``out = color @ rgb + grey * mean_luma(warped)`` of
    brightness ``b``, contrast ``c``, saturation ``s`` (each factor ``U(1-j, 1+j)``) and a
    hue rotation by ``U(-hue, hue)`` turns in YIQ space, with ``grey = (1 - c) * b``.
    """
    seeds = [int(s) for s in seeds]
    u = np.stack([np.random.default_rng(s).random(N_DRAWS) for s in seeds]) if seeds else np.zeros((0, N_DRAWS))
    n = len(seeds)
    sym = lambda k: 2 * u[:, k] - 1  # noqa: E731 - uniform in [-1, 1]
    area = aug["scale_min"] + (1 - aug["scale_min"]) * u[:, 0]
    lo, hi = np.log(aug["ratio"][0]), np.log(aug["ratio"][1])
    ratio = np.exp(lo + (hi - lo) * u[:, 1])
    w, h = np.minimum(1, np.sqrt(area * ratio)), np.minimum(1, np.sqrt(area / ratio))
    tx, ty = sym(2) * (1 - w), sym(3) * (1 - h)
    fx = np.where(u[:, 4] < aug["hflip"], -1.0, 1.0)
    fy = np.where(u[:, 5] < aug["vflip"], -1.0, 1.0)
    ang = sym(6) * math.radians(aug["rotation"])
    cos, sin = np.cos(ang), np.sin(ang)
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = w * fx * cos, -w * fx * sin, tx
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = h * fy * sin, h * fy * cos, ty
    b = 1 + sym(7) * aug["brightness"]
    c = 1 + sym(8) * aug["contrast"]
    s = 1 + sym(9) * aug["saturation"]
    hue = sym(10) * aug["hue"] * 2 * math.pi
    sat = s[:, None, None] * np.eye(3) + (1 - s)[:, None, None] * np.outer(np.ones(3), _LUMA)
    rot = np.zeros((n, 3, 3))
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = np.cos(hue), -np.sin(hue), np.sin(hue), np.cos(hue)
    color = (c * b)[:, None, None] * (_YIQ_INV @ rot @ _YIQ @ sat)
    return {"theta": theta, "color": color, "grey": (1 - c) * b, "area": w * h, "log_ratio": np.log(w / h),
            "hflip": fx < 0, "vflip": fy < 0, "angle": np.degrees(ang), "brightness": b, "contrast": c,
            "saturation": s, "hue": hue / (2 * math.pi)}


def _pixel_matrix(theta: np.ndarray, src: int, dst: int) -> np.ndarray:
    """``theta`` (normalised, pixel corners) as cv2's dst -> src pixel map (pixel centres)."""
    to_px = lambda n: np.array([[n / 2, 0, (n - 1) / 2], [0, n / 2, (n - 1) / 2], [0, 0, 1]])  # noqa: E731
    return (to_px(src) @ np.vstack([theta, [0, 0, 1]]) @ np.linalg.inv(to_px(dst)))[:2]


class CpuAugment:
    """The augmentation of one uint8 HxWx3 image in a loader worker (see ``augment_params``).

    One fused bilinear ``cv2.warpAffine`` (black fill) for crop, flips and rotation, and
    one ``cv2.transform`` for the colour map (saturating uint8): ~3 ms at 512 px on one
    core, against ~40 ms for torchvision's RandomResizedCrop + rotation + ColorJitter.
    """

    def __init__(self, aug: dict, size: int):
        self.aug, self.size = aug, size

    def __call__(self, img: np.ndarray, seed: int) -> np.ndarray:
        p = {k: v[0] for k, v in augment_params(self.aug, [seed]).items()}
        out = cv2.warpAffine(img, _pixel_matrix(p["theta"], img.shape[0], self.size), (self.size, self.size),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(0, 0, 0))
        grey = float(np.asarray(cv2.mean(out)[:3]) @ _LUMA) * p["grey"]
        return cv2.transform(out, np.hstack([p["color"], np.full((3, 1), grey)]))


class GpuAugment:
    """The same augmentation, batched on the device (see ``augment_params``).

    One ``affine_grid`` + ``grid_sample`` (bilinear, zero fill) per batch for crop, flips
    and rotation, one batched matrix product for the colour map. The parameters are drawn
    on the host from the per-sample seeds, so a sample's draw does not depend on its batch,
    the number of processes or the device.
    """

    def __init__(self, aug: dict):
        self.aug = aug

    def __call__(self, x: torch.Tensor, seeds) -> torch.Tensor:
        """``x``: float NCHW batch in [0, 1]; ``seeds``: one per sample."""
        n = x.shape[0]
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for a batch of {n} images")
        p = augment_params(self.aug, seeds)
        packed = torch.from_numpy(np.concatenate(
            [p["theta"].reshape(n, 6), p["color"].reshape(n, 9), p["grey"][:, None]], 1).astype(np.float32))
        if x.device.type == "cuda":
            # pinned + non_blocking: a pageable copy would wait for the GPU to drain its queue
            packed = packed.pin_memory().to(x.device, non_blocking=True)
        packed = packed.to(x.device, x.dtype)
        theta, color, grey = packed[:, :6].view(n, 2, 3), packed[:, 6:15].view(n, 3, 3), packed[:, 15]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        luma = float(_LUMA[0]) * x[:, 0] + float(_LUMA[1]) * x[:, 1] + float(_LUMA[2]) * x[:, 2]
        offset = luma.mean(dim=(1, 2)) * grey
        x = torch.einsum("nij,njhw->nihw", color, x)
        return x.add_(offset.view(-1, 1, 1, 1)).clamp_(0, 1)


class FundusDataset(Dataset):
    """Rows of a task table: (uint8 HWC image, target, row position).

    HWC, as decoded: a batch collates with one plain copy (stacking CHW views of HWC
    arrays is a strided copy, ~40 % of a worker's time), and the engine's permute to NCHW
    on the device gives the channels_last layout the model wants.

    Images are read from disk on access (nothing cached in RAM).  Keys are either an
    int (no augmentation) or ``(position, aug_seed)`` from :class:`EpochBatchSampler`;
    ``augment`` (a :class:`CpuAugment`) then transforms the image in the worker, or,
    when ``None``, the engine augments the batch on the device with the same seeds.
    """

    def __init__(self, paths: list[str], targets: np.ndarray, size: int, augment: CpuAugment | None = None,
                 digests: list[str] | None = None):
        self.paths, self.targets, self.size, self.augment = list(paths), targets, size, augment
        self.digests = list(digests) if digests is not None else None  # checked at every read

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        idx, aug_seed = key if isinstance(key, tuple) else (key, None)
        img = decode_rgb(self.paths[idx], self.size, self.digests[idx] if self.digests else None)
        if self.augment is not None and aug_seed is not None:
            img = self.augment(img, aug_seed)
        return torch.from_numpy(img), torch.tensor(self.targets[idx]), idx


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
            yield list(zip(batch[slice(*self._bounds(step))].tolist(), self.aug_seeds(step)))

    def _bounds(self, step: int) -> tuple[int, int]:
        return _shard_bounds(min(self.batch_size, self.n - step * self.batch_size), self.rank, self.world)

    def aug_seeds(self, step: int) -> list[int]:
        """This rank's per-sample augmentation seeds of ``step`` (those ``__iter__`` hands the
        workers): a function of ``(seed, epoch, position in the epoch)`` only."""
        lo, hi = self._bounds(step)
        offset = step * self.batch_size
        return [mix_seed(self.seed, self.epoch, offset + j, 2) for j in range(lo, hi)]


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
