"""Image-quality scores inside the field of view and the Good / Usable / Reject grade.

All scores are computed on the FOV-centred crop resampled to a fixed size (512 px), so
they do not depend on the camera's resolution ("scale-normalised"), and only inside the
FOV, away from its rim:

- ``sharpness``: vessel-scale detail relative to all detail up to the scale of the large
  vessels, measured at a fixed scale of the field (its diameter resampled to 256 px, which
  a 250-px photo still resolves, so the same photo at 250 and at 3000 px scores alike) in
  the green channel, inside the FOV and at least 8 % of its diameter away from the rim:
  mean|G*g1 - G*g3| / mean|G*g1 - G*g8| (g_s = Gaussian of sigma s px at that scale; the
  numerator is the band of the vessels' widths, ~2-8 px, above pixel noise and JPEG
  blocks). The means leave out the 10 % of pixels with the most coarse detail (the optic
  disc's edge, large reflexes), so large structures do not set the score. A ratio: free of
  brightness and contrast (a dark or washed-out photo is not called blurred); defocus or
  motion blur removes the vessel band first (sharp ~0.55-0.63; Gaussian blur sigma = 8 px
  on a 1024-px frame ~0.42, 25 px ~0.20).
- ``under_exposed``: fraction of FOV pixels whose brightest channel is < 15 (nearly black:
  below it 8-bit JPEG detail is lost; a photo 3 stops under, brightest channel ~20-25
  over the retina, is still gradable once its contrast is stretched);
  ``over_exposed``: fraction with luminance >= 230 (washed out; a clipped red channel
  alone is common in good fundus photographs and does not count).
- ``contrast``: Michelson contrast of the 5 / 95 % luminance percentiles,
  (p95 - p5) / (p95 + p5): low for haze or a cataract veil, independent of exposure.
- ``illumination``: unevenness, a robust coefficient of variation ((p90 - p10) / 2.563 /
  median) of the luminance low-passed at sigma = size/16 (normalised convolution inside
  the FOV): shadows, crescents, vignetting; a bright optic disc does not count.
- ``fov_coverage``: fraction of the FOV circle inside the frame and between cut edges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

QUALITY_SIZE = 512
SCORES = ("sharpness", "under_exposed", "over_exposed", "contrast", "illumination", "fov_coverage")


@dataclass
class QualityThresholds:
    """Limits for Usable (``usable_*``) and Reject (``reject_*``); ``min`` scores must be at
    least, ``max`` scores at most the limit. Defaults calibrated on skimage's retina()
    photograph and graded synthetic defects (tests/test_quality.py)."""

    usable_min_sharpness: float = 0.46
    reject_min_sharpness: float = 0.36
    usable_max_under_exposed: float = 0.20
    reject_max_under_exposed: float = 0.50
    usable_max_over_exposed: float = 0.10
    reject_max_over_exposed: float = 0.30
    usable_min_contrast: float = 0.10
    reject_min_contrast: float = 0.05
    usable_max_illumination: float = 0.30
    reject_max_illumination: float = 0.50
    usable_min_fov_coverage: float = 0.60
    reject_min_fov_coverage: float = 0.40

    def as_dict(self) -> dict:
        return asdict(self)


_LABELS = {
    "sharpness": "blurred",
    "under_exposed": "under-exposed",
    "over_exposed": "over-exposed",
    "contrast": "low contrast",
    "illumination": "uneven illumination",
    "fov_coverage": "field of view cut off",
}
_MIN_SCORES = ("sharpness", "contrast", "fov_coverage")


def _inner_mask(mask: np.ndarray) -> np.ndarray:
    """Bool mask of the FOV away from its rim (the rim's step would read as detail)."""
    size = mask.shape[0]
    k = max(3, int(round(0.03 * size)) | 1)
    return cv2.erode((mask > 127).astype(np.uint8), np.ones((k, k), np.uint8)) > 0


_SMALL = 128  # grid of the smooth low-pass of the illumination score


_SHARP = 256  # the field's diameter in px where sharpness is measured
_BLACK = 15  # brightest channel below this: nearly black, detail lost (8 bit, JPEG)


class _MaskData:
    """Everything the scores need from the FOV mask alone (computed once per mask)."""

    def __init__(self, mask: np.ndarray):
        inner = _inner_mask(mask)
        ms = cv2.resize(mask, (_SHARP, _SHARP), interpolation=cv2.INTER_AREA)
        k = int(0.08 * _SHARP) | 1
        self.sharp_idx = np.flatnonzero(cv2.erode((ms > 127).astype(np.uint8), np.ones((k, k), np.uint8)))
        self.n = int(inner.sum())
        self.m8 = inner.astype(np.uint8)
        self.mf = inner.astype(np.float32)  # masked sums as dot products
        # illumination: normalised convolution so the black surround does not leak in;
        # the low-pass is smooth, so it runs on a 4x smaller grid
        self.ms = cv2.resize(self.mf, (_SMALL, _SMALL), interpolation=cv2.INTER_AREA)
        self.s = (QUALITY_SIZE / 16) * _SMALL / QUALITY_SIZE
        self.den = cv2.GaussianBlur(self.ms, (0, 0), self.s)
        self.valid = self.ms > 0.99


_cache: dict[int, tuple[np.ndarray, _MaskData]] = {}


def _mask_data(mask: np.ndarray) -> _MaskData:
    # The uncut disc is one shared read-only array per size (crop.fov_mask): reuse its
    # derived data; any other mask (cut edges) is computed afresh.
    if not mask.flags.writeable:
        hit = _cache.get(id(mask))
        if hit is not None and hit[0] is mask:
            return hit[1]
        md = _MaskData(mask)
        if len(_cache) >= 16:  # only a few shared masks exist; never grow without bound
            _cache.clear()
        _cache[id(mask)] = (mask, md)
        return md
    return _MaskData(mask)


def quality_scores(img: np.ndarray, mask: np.ndarray, fov_coverage: float = 1.0) -> dict[str, float]:
    """Quality scores of an FOV-centred crop ``img`` (RGB uint8, square) with FOV weights
    ``mask`` (uint8 0..255, same size). Resampled to 512 px when of another size."""
    if img.shape[0] != QUALITY_SIZE:
        img = cv2.resize(img, (QUALITY_SIZE, QUALITY_SIZE), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (QUALITY_SIZE, QUALITY_SIZE), interpolation=cv2.INTER_AREA)
    md = _mask_data(mask)
    n = md.n
    if n < 100:
        return {"sharpness": 0.0, "under_exposed": 1.0, "over_exposed": 0.0, "contrast": 0.0,
                "illumination": 0.0, "fov_coverage": float(fov_coverage)}
    y = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    m8 = md.m8
    r_, g_, b_ = cv2.split(img)
    mx = cv2.max(cv2.max(r_, g_), b_)
    # histograms inside the mask: fractions and percentiles without copying pixels out
    hmx = cv2.calcHist([mx], [0], m8, [256], [0, 256]).ravel()
    hy = cv2.calcHist([y], [0], m8, [256], [0, 256]).ravel()
    under = float(hmx[:_BLACK].sum() / n)
    over = float(hy[230:].sum() / n)
    cdf = np.cumsum(hy) / n
    p5, p95 = float(np.searchsorted(cdf, 0.05)), float(np.searchsorted(cdf, 0.95))
    contrast = float((p95 - p5) / max(p95 + p5, 1.0))

    # sharpness at a fixed scale of the field (see the module docstring)
    g = cv2.resize(g_, (_SHARP, _SHARP), interpolation=cv2.INTER_AREA).astype(np.float32)
    g1 = cv2.GaussianBlur(g, (0, 0), 1.0)
    vessel = cv2.absdiff(g1, cv2.GaussianBlur(g, (0, 0), 3.0)).ravel()[md.sharp_idx]
    # the sigma-8 low-pass on a 4x smaller grid (sigma 1.94 there): the same, 16x cheaper
    q = _SHARP // 4
    g8 = cv2.resize(cv2.GaussianBlur(cv2.resize(g, (q, q), interpolation=cv2.INTER_AREA), (0, 0), 1.94),
                    (_SHARP, _SHARP), interpolation=cv2.INTER_LINEAR)
    coarse = cv2.absdiff(g1, g8).ravel()[md.sharp_idx]
    sharp = 0.0
    if len(coarse) >= 100:
        cut = np.partition(coarse, int(0.9 * (len(coarse) - 1)))[int(0.9 * (len(coarse) - 1))]
        keep = coarse <= cut
        den = float(coarse[keep].sum())
        sharp = float(vessel[keep].sum()) / den if den > 1e-3 * len(coarse) else 0.0

    # illumination: coefficient of variation of the normalised low-pass inside the FOV
    ys = cv2.resize(cv2.multiply(y, m8, dtype=cv2.CV_32F), (_SMALL, _SMALL), interpolation=cv2.INTER_AREA)
    num = cv2.GaussianBlur(ys, (0, 0), md.s)
    low = num[md.valid] / np.maximum(md.den[md.valid], 1e-6)
    # robust spread: the interdecile range over the median, scaled to a standard deviation
    # (/2.563 for a normal distribution, so the limits keep the meaning of a coefficient of
    # variation); a bright optic disc or reflex (< 10 % of the field) does not count
    if low.size >= 10:
        n_l = len(low) - 1
        i10, i50, i90 = int(0.1 * n_l), int(0.5 * n_l), int(0.9 * n_l)
        p = np.partition(low, (i10, i50, i90))
        illum = float((p[i90] - p[i10]) / 2.563 / max(float(p[i50]), 1.0))
    else:
        illum = 0.0
    return {"sharpness": round(sharp, 4), "under_exposed": round(under, 4), "over_exposed": round(over, 4),
            "contrast": round(contrast, 4), "illumination": round(illum, 4),
            "fov_coverage": round(float(fov_coverage), 4)}


def grade(scores: dict[str, float], t: QualityThresholds | None = None) -> tuple[str, list[str]]:
    """Combine scores into ``good`` / ``usable`` / ``reject`` and the reasons (one per
    failing score, naming the value and the limit)."""
    t = t or QualityThresholds()
    rejects, usables = [], []
    for k in SCORES:
        v = scores[k]
        if k in _MIN_SCORES:
            lo_r, lo_u = getattr(t, f"reject_min_{k}"), getattr(t, f"usable_min_{k}")
            if v < lo_r:
                rejects.append(f"{_LABELS[k]} ({k} {v:.3g} < {lo_r:g})")
            elif v < lo_u:
                usables.append(f"{_LABELS[k]} ({k} {v:.3g} < {lo_u:g})")
        else:
            hi_r, hi_u = getattr(t, f"reject_max_{k}"), getattr(t, f"usable_max_{k}")
            if v > hi_r:
                rejects.append(f"{_LABELS[k]} ({k} {v:.3g} > {hi_r:g})")
            elif v > hi_u:
                usables.append(f"{_LABELS[k]} ({k} {v:.3g} > {hi_u:g})")
    if rejects:
        return "reject", rejects
    if usables:
        return "usable", usables
    return "good", []
