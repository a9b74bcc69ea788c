"""A development set of hard real-photo cases for FOV detection and quality (issue 15).

Every case is skimage's real fundus photograph (``skimage.data.retina()``, 1411x1411,
from the public DRIVE-like sample shipped with scikit-image) transformed into one of the
awkward kinds of photographs seen in public datasets, with the true shape known from the
transform:

- ``vignetted``: CHASE_DB1-style, a dark rim fading softly into a noisy, not-black
  background (radial fall-off to 25 % at the rim, edge blurred by 1.2 % of the radius);
- ``underexposed``: 3 stops under (pixel values / 8) with a peripheral fall-off to 30 %
  and sensor noise, the optic disc left bright (exposure set on it), in a 1620x1080 frame
  whose field spans the frame height (clipped at the top): the code before issue 15 took
  the disc for the field ("implausible circle ... radius 63");
- ``inscribed``: PALM-style, dark (x0.3) with a vignetted, soft rim (fall-off to 40 %,
  edge blurred by 0.6 % of r), circle nearly inscribed in a square frame (2 px from each
  side);
- ``window``: a scanned film slide, the circle clipped by a rectangular window on the left,
  right and top, an orange colour cast and a dark shadow on one side;
- ``rectangle``: DrimDB-style, the photo fills the frame and only the four corners are
  cut by the circle, with a green date stamp drawn over the bottom-left.

``make_case(name, long_side)`` renders it at a given long side (full size = ``None``)
and returns the RGB image and the expected shape in its pixels (pixel centres at
integers): circle ``cx, cy, r`` and straight cuts ``top, bottom, left, right``
(``None`` = no cut; the frame border is ``-0.5`` / ``size - 0.5``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageDraw
from skimage import data

# Source circle of skimage's retina.jpg measured independently by the peer benchmark
# (/work/shared/bench/peer_preprocess_bench.py: 1440-ray 50 % crossings, MAD-trimmed fit).
RETINA_TRUTH = (704.155, 702.898, 695.245)

CASES = ("vignetted", "underexposed", "inscribed", "window", "rectangle")
# frame (w, h), FOV diameter, offset of the FOV centre from the frame centre
_GEOM = {
    "vignetted": ((999, 960), 850, (-6, 4)),
    "underexposed": ((1620, 1080), 1060, (-70, -30)),
    "inscribed": ((1000, 1000), 996, (0, 0)),
    "window": ((1100, 900), 900, (0, 60)),
    "rectangle": ((760, 570), 900, (0, 0)),
}

_src = None


def retina() -> np.ndarray:
    global _src
    if _src is None:
        _src = data.retina()
    return _src


def paste(src, truth, canvas, diam, offset, bg=0):
    """Scale ``src`` so its FOV has diameter ``diam`` and paste it on a ``canvas`` (w, h)
    with the FOV centre ``offset`` from the canvas centre; return image and true circle."""
    w, h = canvas
    sw = src.shape[1]
    n = int(round(sw * diam / (2 * truth[2])))
    s = n / sw
    scaled = Image.fromarray(src).resize((n, n), Image.LANCZOS)
    fcx, fcy = (truth[0] + 0.5) * s - 0.5, (truth[1] + 0.5) * s - 0.5
    ox, oy = int(round(w / 2 + offset[0] - fcx)), int(round(h / 2 + offset[1] - fcy))
    im = Image.new("RGB", (w, h), (bg, bg, bg))
    im.paste(scaled, (ox, oy))
    return np.asarray(im).copy(), (fcx + ox, fcy + oy, truth[2] * s)


def _radial(shape, cx, cy):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    return np.hypot(xx - cx, yy - cy)


def _aperture(img, cx, cy, r):
    """The photo inside the circle only (the source square has dark corners already; this
    makes the aperture exactly the truth circle)."""
    d = _radial(img.shape[:2], cx, cy)
    m = np.clip(r + 0.5 - d, 0, 1)[..., None]
    return img.astype(np.float32) * m, m


def _to_u8(a):
    return np.clip(a + 0.5, 0, 255).astype(np.uint8)


def make_full(name: str, seed: int = 0):
    """The case at its full (camera) size: (image, expected shape dict)."""
    if name not in _GEOM:
        raise KeyError(f"unknown case {name!r}; choose one of {CASES}")
    rng = np.random.default_rng(seed)
    canvas, diam, off = _GEOM[name]
    img, (cx, cy, r) = paste(retina(), RETINA_TRUTH, canvas, diam, off)
    w, h = canvas
    shape = dict(cx=cx, cy=cy, r=r, top=None, bottom=None, left=None, right=None)
    f, m = _aperture(img, cx, cy, r)
    d = _radial(img.shape[:2], cx, cy)[..., None]
    if name == "vignetted":
        fall = 1 - 0.75 * np.clip((d / r - 0.55) / 0.45, 0, 1) ** 1.6
        soft = cv2.GaussianBlur(np.clip(r + 0.5 - d[..., 0], 0, 1), (0, 0), 0.012 * r)[..., None]
        f = img.astype(np.float32) * fall * soft  # the rim fades over ~2 % of the radius
        f = f + 10 + rng.normal(0, 2.5, f.shape).astype(np.float32)  # not-black, noisy background
    elif name == "underexposed":
        disc = cv2.GaussianBlur((f[..., 1] > 140).astype(np.float32), (0, 0), 6)[..., None]
        under = f / 8 * (1 - 0.7 * np.clip(d / r, 0, 1) ** 2)
        f = under * (1 - disc) + 0.8 * f * disc + 3 + rng.normal(0, 2.0, f.shape).astype(np.float32)
    elif name == "inscribed":
        fall = 1 - 0.6 * np.clip((d / r - 0.6) / 0.4, 0, 1) ** 1.5
        soft = cv2.GaussianBlur(np.clip(r + 0.5 - d[..., 0], 0, 1), (0, 0), 0.006 * r)[..., None]
        f = img.astype(np.float32) * 0.3 * fall * soft + 6 + rng.normal(0, 2.0, f.shape).astype(np.float32)
    elif name == "window":
        f = f * np.array([1.0, 0.72, 0.45], np.float32) + np.array([30, 12, 0], np.float32) * m
        xx = np.arange(w, dtype=np.float32)[None, :, None]
        f = f * (1 - 0.65 * np.clip((cx - 0.35 * r - xx) / (0.6 * r), 0, 1))  # shadow from the left
        left, right, top = int(round(cx - 0.86 * r)), int(round(cx + 0.9 * r)), int(round(cy - 0.93 * r))
        f[:, :left] = 0
        f[:, right:] = 0
        f[:top] = 0
        shape.update(left=left - 0.5, right=right - 0.5, top=top - 0.5)
    elif name == "rectangle":
        shape.update(top=-0.5, bottom=h - 0.5, left=-0.5, right=w - 0.5)
    # where the frame itself clips the circle, the frame border is a straight cut
    for k, lo, hi, c, size in (("top", "bottom", None, cy, h), ("left", "right", None, cx, w)):
        if c - r < -1.5:  # (more than a pixel: a circle touching the border is not cut)
            shape[k] = -0.5 if shape[k] is None else max(shape[k], -0.5)
        if c + r > size + 0.5:
            shape[lo] = size - 0.5 if shape[lo] is None else min(shape[lo], size - 0.5)
    img = _to_u8(f)
    if name == "rectangle":
        pil = Image.fromarray(img)
        ImageDraw.Draw(pil).text((30, h - 40), "2009/03/14 10:21", fill=(40, 255, 40),
                                 font_size=22)
        img = np.asarray(pil).copy()
    return img, shape


def resize_case(img, shape, long_side: int | None):
    """The image area-resized to ``long_side`` and the shape mapped into it."""
    if long_side is None:
        return img, shape
    h, w = img.shape[:2]
    s = long_side / max(h, w)
    nw, nh = round(w * s), round(h * s)
    sx, sy = nw / w, nh / h
    out = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    m = {}
    for k, v in shape.items():
        if v is None:
            m[k] = None
        elif k in ("cx", "left", "right"):
            m[k] = (v + 0.5) * sx - 0.5
        elif k in ("cy", "top", "bottom"):
            m[k] = (v + 0.5) * sy - 0.5
        else:
            m[k] = v * math.sqrt(sx * sy)
    return out, m


def make_case(name: str, long_side: int | None = None):
    img, shape = make_full(name)
    return resize_case(img, shape, long_side)


def jpeg(img, quality=90) -> np.ndarray:
    """Round trip through JPEG (what a camera or dataset stores)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
