"""Crop to the field of view, anti-aliased resize, masking and optional normalisation.

Output contract: a ``size`` x ``size`` RGB image whose FOV circle is centred and fills
the square (its radius is ``size / 2``), black outside the FOV and beyond cut edges.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from fundusfm.preprocess.fov import FOV

NORMALISATIONS = ("none", "ben_graham", "clahe")


def square_box(fov: FOV) -> tuple[float, float, float, float]:
    """The FOV's bounding square (``fov.square``) as (left, top, right, bottom) pixel *edges*."""
    cx, cy, r = fov.square
    return (cx + 0.5 - r, cy + 0.5 - r, cx + 0.5 + r, cy + 0.5 + r)


def to_output_y(y: float, fov: FOV, size: int) -> float:
    """Map a y (pixel-centre coordinates) of the source image into the output square."""
    _, cy, r = fov.square
    return (y + 0.5 - (cy + 0.5 - r)) * size / (2 * r) - 0.5


def crop_resize(image: np.ndarray | Image.Image, fov: FOV, size: int) -> np.ndarray:
    """Crop ``image`` (RGB array or Pillow image) to the FOV's bounding square (black where
    the square leaves the frame) and resize to ``size`` x ``size`` at sub-pixel accuracy.
    ``fov`` is in ``image``'s pixels.

    Anti-aliasing: a reduction by ``s = 2 r / size`` >= 2 first box-averages the square's
    neighbourhood by the integer factor floor(s) (exact area weights, OpenCV's integer
    INTER_AREA path), then one bilinear affine warp maps the remaining factor (< 2) with
    the FOV's sub-pixel position. Only the square is touched, never the whole frame.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = cv2.cvtColor(a, cv2.COLOR_GRAY2RGB)
    h, w = a.shape[:2]
    fcx, fcy, fr = fov.square
    s = 2 * fr / size
    # source x of output pixel u (pixel centres at integers): x = s * u + x_off
    x_off, y_off = fcx - fr + 0.5 * s, fcy - fr + 0.5 * s
    k = int(s) if s >= 2 else 1
    if k > 1:
        # integer-aligned window around the square (clipped to the frame), box-reduced by k
        x0 = max(0, math.floor(fcx - fr) - k)
        y0 = max(0, math.floor(fcy - fr) - k)
        x1 = min(w, math.ceil(fcx + fr) + 2 * k)
        y1 = min(h, math.ceil(fcy + fr) + 2 * k)
        nw, nh = (x1 - x0) // k, (y1 - y0) // k
        if nw >= 2 and nh >= 2:
            a = cv2.resize(a[y0:y0 + nh * k, x0:x0 + nw * k], (nw, nh), interpolation=cv2.INTER_AREA)
            # full-size x -> reduced pixel coordinates: (x - x0 + 0.5) / k - 0.5
            x_off, y_off = (x_off - x0 + 0.5) / k - 0.5, (y_off - y0 + 0.5) / k - 0.5
            s /= k
    m = np.array([[s, 0.0, x_off], [0.0, s, y_off]])
    return cv2.warpAffine(a, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


@lru_cache(maxsize=8)
def _circle_weights(size: int) -> np.ndarray:
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    d = np.hypot(xx - c, yy - c)
    # anti-aliased disc of radius size/2
    w = np.clip(size / 2 - d + 0.5, 0, 1)
    out = (w * 255 + 0.5).astype(np.uint8)
    out.setflags(write=False)  # shared by every image of this size
    return out


@lru_cache(maxsize=8)
def _circle_weights3(size: int) -> np.ndarray:
    m = _circle_weights(size)
    out = cv2.merge([m, m, m])
    out.setflags(write=False)
    return out


def to_output_x(x: float, fov: FOV, size: int) -> float:
    """Map an x (pixel-centre coordinates) of the source image into the output square."""
    cx, _, r = fov.square
    return (x + 0.5 - (cx + 0.5 - r)) * size / (2 * r) - 0.5


def fov_mask(fov: FOV, size: int) -> np.ndarray:
    """uint8 weights (0..255) of the FOV in the output square: the disc minus the cut
    edges, or for the bright-region fallback (``fov.method == 'mask'``) its outline."""
    cuts = (fov.top, fov.bottom, fov.left, fov.right)
    if fov.method == "mask" and fov.hull is not None:
        m = np.zeros((size, size), np.uint8)
        pts = np.column_stack([to_output_x(fov.hull[:, 0], fov, size), to_output_y(fov.hull[:, 1], fov, size)])
        cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    elif all(c is None for c in cuts):
        return _circle_weights(size)
    else:
        m = _circle_weights(size).copy()
    if fov.top is not None:
        m[: max(0, math.ceil(to_output_y(fov.top, fov, size)))] = 0
    if fov.bottom is not None:
        m[max(0, math.floor(to_output_y(fov.bottom, fov, size)) + 1):] = 0
    if fov.left is not None:
        m[:, : max(0, math.ceil(to_output_x(fov.left, fov, size)))] = 0
    if fov.right is not None:
        m[:, max(0, math.floor(to_output_x(fov.right, fov, size)) + 1):] = 0
    return m


def apply_mask(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Black out everything outside ``mask`` (uint8 weights)."""
    if mask.ndim == 2 and mask.shape[0] == mask.shape[1] and mask is _circle_weights(mask.shape[0]):
        m3 = _circle_weights3(mask.shape[0])  # the common, uncut disc: merged once per size
    else:
        m3 = cv2.merge([mask, mask, mask])
    return cv2.multiply(img, m3, scale=1 / 255)


def frame_coverage(fov: FOV, width: int, height: int, grid: int = 128) -> float:
    """Fraction of the FOV circle that lies inside the frame and between cut edges
    (1.0 for the bright-region fallback: its outline is all the field there is)."""
    if fov.method == "mask":
        return 1.0
    if (all(c is None for c in (fov.top, fov.bottom, fov.left, fov.right)) and fov.cx - fov.r >= -0.5
            and fov.cy - fov.r >= -0.5 and fov.cx + fov.r <= width - 0.5 and fov.cy + fov.r <= height - 0.5):
        return 1.0  # the whole circle is in the frame (what the grid below would count)
    c = (grid - 1) / 2
    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32)
    disc = np.hypot(xx - c, yy - c) <= grid / 2
    # grid pixel -> source coordinates
    k = 2 * fov.r / grid
    sx = fov.cx - fov.r + (xx + 0.5) * k
    sy = fov.cy - fov.r + (yy + 0.5) * k
    vis = (sx >= -0.5) & (sx <= width - 0.5) & (sy >= -0.5) & (sy <= height - 0.5)
    if fov.top is not None:
        vis &= sy >= fov.top
    if fov.bottom is not None:
        vis &= sy <= fov.bottom
    if fov.left is not None:
        vis &= sx >= fov.left
    if fov.right is not None:
        vis &= sx <= fov.right
    return float((disc & vis).sum() / max(disc.sum(), 1))


def ben_graham(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Ben Graham's local-average subtraction: 4 * (img - GaussianBlur(img, size/30)) + 128,
    masked back to the FOV."""
    sigma = img.shape[0] / 30
    blur = cv2.GaussianBlur(img, (0, 0), sigma)
    out = cv2.addWeighted(img, 4, blur, -4, 128)
    return apply_mask(out, mask)


def clahe_lightness(img: np.ndarray, mask: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on the L channel of CIELAB (colour kept), masked back to the FOV."""
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(
        np.ascontiguousarray(lab[..., 0]))
    return apply_mask(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), mask)


def normalise(img: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    """Apply the configured normalisation (``none``, ``ben_graham`` or ``clahe``)."""
    if method == "none":
        return img
    if method == "ben_graham":
        return ben_graham(img, mask)
    if method == "clahe":
        return clahe_lightness(img, mask)
    raise ValueError(f"unknown normalise {method!r}; choose one of {NORMALISATIONS}")
