"""Field-of-view (FOV) detection: the circular camera aperture of a fundus photograph.

Method (coarse-to-fine):

1. coarse: threshold a ~256-px thumbnail of the per-pixel channel maximum between the dark
   background and the FOV (Otsu; on a gamma-stretched copy when the photo is dark, so a
   bright optic disc does not take the split), keep the largest blob, fit a circle to its
   outline (robust, ignoring outline points on the image border and on straight runs:
   cuts on any side);
2. fine: sample ~1 radial profile per 2 px of rim in a band around the coarse circle (on
   gain-normalised intensities for dark photos), locate the 50 % crossing between the local
   inside and background levels with sub-pixel interpolation, re-take it at the inside
   level measured just inside the edge (soft, vignetted rims), drop rays that leave the
   frame or end on a cut, fit a circle by iteratively MAD-trimmed algebraic fit (rejects a
   notch, eyelash or reflex) and refine it geometrically (orthogonal distances);
3. cut edges: straight horizontal and vertical cuts (camera mask, a rectangular window, or
   the frame border when the circle is larger than the frame) on centre profiles;
4. sanity: enough inlier rim points spread around the circle, small residual, a dark
   background and a bright inside;
5. fallback: when no clean circle fits but the frame clearly holds a colour fundus photo
   (one large convex red-dominant bright region, dark surround and corners), the region's
   outline is the FOV (``method='mask'``), with the circle through the visible rim arcs
   where they fit. Anything else (a photo of something that is not an eye, an image
   without a dark surround) gives ``FOV(found=False, reason=...)`` rather than a wrong
   circle.

Coordinates: pixel centres at integers, so a pixel x covers [x - 0.5, x + 0.5].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

_THUMB = 256  # long side of the coarse thumbnail


@dataclass(frozen=True)
class FOV:
    """A detected field of view.

    ``cx, cy, r``: circle in pixels of the image it was detected on; ``top``/``bottom``
    (y) and ``left``/``right`` (x): a straight cut edge (``-0.5`` / ``size - 0.5`` = the
    frame border) or ``None``; ``reason``: why nothing was found (empty when found);
    ``rms``: RMS residual of the rim points (px); ``n_points``: inlier rim points;
    ``method``: ``circle`` (a fitted rim circle, possibly with cuts) or ``mask`` (no clean
    circle: the bright-region fallback, whose outline is ``hull``, an (N, 2) array of
    x, y points; ``cx, cy, r`` are then its bounding square and the cuts its bounding box).
    """

    found: bool
    cx: float = math.nan
    cy: float = math.nan
    r: float = math.nan
    top: float | None = None
    bottom: float | None = None
    reason: str = ""
    rms: float = math.nan
    n_points: int = 0
    left: float | None = None
    right: float | None = None
    method: str = "circle"
    hull: np.ndarray | None = field(default=None, compare=False, repr=False)

    def scaled(self, s: float) -> FOV:
        """The same FOV in an image ``s`` times larger (x -> s * (x + 0.5) - 0.5)."""
        if not self.found:
            return self

        def m(v):
            return None if v is None else s * (v + 0.5) - 0.5

        hull = None if self.hull is None else s * (self.hull + 0.5) - 0.5
        return FOV(True, m(self.cx), m(self.cy), self.r * s, m(self.top), m(self.bottom),
                   self.reason, self.rms * s, self.n_points, m(self.left), m(self.right), self.method, hull)

    @property
    def square(self) -> tuple[float, float, float]:
        """(cx, cy, half side) of the square the output is cropped to: the circle's
        bounding square, or for the bright-region fallback the bounding box's square."""
        if self.method == "mask" and None not in (self.left, self.right, self.top, self.bottom):
            return ((self.left + self.right) / 2, (self.top + self.bottom) / 2,
                    max(self.right - self.left, self.bottom - self.top) / 2)
        return self.cx, self.cy, self.r

    @property
    def cuts(self) -> dict:
        return dict(top=self.top, bottom=self.bottom, left=self.left, right=self.right)


def not_found(reason: str) -> FOV:
    return FOV(False, reason=f"no field of view: {reason}")


# ---------------------------------------------------------------------------- circle fits
def fit_circle(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kasa) least-squares circle through points; returns (cx, cy, r)."""
    mx, my = x.mean(), y.mean()  # centre the data for conditioning
    u, v = x - mx, y - my
    # normal equations of [u v 1] c = u^2 + v^2 (3x3, well conditioned once centred):
    # the same solution as lstsq, without its per-call overhead (this runs ~15x per image)
    zz = u * u + v * v
    suu, svv, suv = u @ u, v @ v, u @ v
    m = np.array([[suu, suv, 0.0], [suv, svv, 0.0], [0.0, 0.0, float(len(u))]])
    rhs = np.array([u @ zz, v @ zz, zz.sum()])
    try:
        c = np.linalg.solve(m, rhs)
    except np.linalg.LinAlgError:  # collinear points: fall back to the minimum-norm answer
        c, *_ = np.linalg.lstsq(np.column_stack([u, v, np.ones_like(u)]), zz, rcond=None)
    cx, cy = c[0] / 2, c[1] / 2
    return float(cx + mx), float(cy + my), float(math.sqrt(max(c[2] + cx * cx + cy * cy, 0.0)))


def _geometric_refine(x, y, cx, cy, r, iters=10):
    p = np.array([cx, cy, r], float)
    for _ in range(iters):
        dx, dy = x - p[0], y - p[1]
        d = np.hypot(dx, dy) + 1e-12
        # Gauss-Newton step from the 3x3 normal equations (J^T J) s = -J^T e, J = -[ux uy 1]
        ux, uy, e = dx / d, dy / d, d - p[2]
        n = float(len(d))
        sx, sy = ux.sum(), uy.sum()
        jtj = np.array([[ux @ ux, ux @ uy, sx], [ux @ uy, uy @ uy, sy], [sx, sy, n]])
        try:
            step = np.linalg.solve(jtj, np.array([ux @ e, uy @ e, e.sum()]))
        except np.linalg.LinAlgError:
            break
        p += step
        if np.abs(step).max() < 1e-6:
            break
    return float(p[0]), float(p[1]), float(p[2])


def _median(a: np.ndarray) -> float:
    """np.median of a 1-D array, without its generic-axis and NaN-check overhead (this
    runs a few dozen times per image on ~700 values)."""
    n = len(a)
    h = n // 2
    if n % 2:
        return float(np.partition(a, h)[h])
    p = np.partition(a, (h - 1, h))
    return 0.5 * float(p[h - 1] + p[h])


def robust_circle(x: np.ndarray, y: np.ndarray, min_tol: float = 0.75):
    """MAD-trimmed circle fit with geometric refinement.

    Returns (cx, cy, r, inlier_mask, rms). Converges with up to ~40 % outliers (notch,
    eyelash shadow, reflexes), which a plain least-squares fit would follow.
    """
    keep = np.ones(len(x), bool)
    cx = cy = r = 0.0
    for _ in range(15):
        cx, cy, r = fit_circle(x[keep], y[keep])
        res = np.hypot(x - cx, y - cy) - r
        rk = res[keep]
        med = _median(rk)
        mad = 1.4826 * _median(np.abs(rk - med))
        new = np.abs(res - med) < max(3.5 * mad, min_tol)
        if new.sum() < 6 or (new == keep).all():
            break
        keep = new
    cx, cy, r = _geometric_refine(x[keep], y[keep], cx, cy, r)
    res = np.hypot(x - cx, y - cy) - r
    rms = float(np.sqrt(np.mean(res[keep] ** 2))) if keep.any() else math.inf
    return cx, cy, r, keep, rms


# ---------------------------------------------------------------------------- detection
def _intensity(img: np.ndarray) -> np.ndarray:
    """Per-pixel channel maximum (uint8): the FOV rim has the best contrast there, also
    for dark or colour-cast photographs; grayscale passes through."""
    if img.ndim == 2:
        return np.ascontiguousarray(img)
    if img.shape[2] == 1:
        return np.ascontiguousarray(img[..., 0])
    ch = cv2.split(np.ascontiguousarray(img[..., :3]))
    return cv2.max(cv2.max(ch[0], ch[1]), ch[2])


def _hist_median(hist: np.ndarray) -> float:
    """Exact median (mean of the two middle values for an even count) of the integer
    values counted in ``hist`` — the median of a uint8 array without sorting it."""
    n = int(hist.sum())
    c = np.cumsum(hist)
    lo = int(np.searchsorted(c, (n - 1) // 2 + 1))  # value of rank (n-1)//2 (0-based)
    hi = int(np.searchsorted(c, n // 2 + 1))  # value of rank n//2
    return 0.5 * (lo + hi)


def _thumbnail(v: np.ndarray) -> tuple[np.ndarray, int]:
    """~256-px thumbnail by an integer box factor k (exact pixel mapping, OpenCV's fast
    integer INTER_AREA path); the last < k rows / columns are left out."""
    h, w = v.shape
    k = max(1, int(max(h, w) // _THUMB))
    if k == 1:
        return v, 1
    th, tw = h // k, w // k
    return cv2.resize(v[: th * k, : tw * k], (tw, th), interpolation=cv2.INTER_AREA), k


def _stretch(t: np.ndarray) -> tuple[np.ndarray, float]:
    """Contrast normalisation of an under-exposed thumbnail before thresholding.

    When the brightest 1 % of the frame stays below 160 (a dark photograph), Otsu's split
    tends to fall between the dark retina and its few bright structures (optic disc,
    reflexes), so the retina is taken for background. A gamma-0.5 stretch of
    [0, p99] to [0, 255] spreads the dark end, where the retina/background split lies.
    Returns the thumbnail to threshold and ``p99`` (0 when not stretched)."""
    hist = np.bincount(t.ravel(), minlength=256)
    p99 = int(np.searchsorted(np.cumsum(hist), 0.99 * t.size))
    if p99 >= 160 or p99 < 8:
        return t, 0.0
    lut = (255 * np.sqrt(np.clip(np.arange(256) / p99, 0, 1))).astype(np.uint8)
    return cv2.LUT(t, lut), float(p99)


def _flat_runs(pts: np.ndarray, axis: int, r_est: float):
    """Lines (rows for ``axis=1``, columns for ``axis=0``) holding a long run of outline
    points: a straight cut. A circle's own extreme row is ~2 sqrt(2 r) px long (26 px
    at r = 85); stay clear of it."""
    vals, counts = np.unique(pts[:, axis], return_counts=True)
    return vals[counts > max(0.3 * r_est, 3.0 * math.sqrt(2 * r_est), 8)]


def _coarse(t: np.ndarray, k: int):
    """Coarse circle from the thumbnail ``t`` (box factor ``k``), in full-size pixels."""
    th, tw = t.shape
    ts, p99 = _stretch(t)
    otsu, _ = cv2.threshold(ts, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    o = int(otsu)
    if p99:  # the split back in the original values
        o = int(min(255, math.floor(p99 * (o / 255) ** 2)))
    hist = np.bincount(t.ravel(), minlength=256)
    if hist[o + 1:].sum() == 0 or hist[: o + 1].sum() == 0:
        return None, "uniform image", None
    bg, fg = _hist_median(hist[: o + 1]), o + 1 + _hist_median(hist[o + 1:])
    if fg - bg < 12 and not (p99 and fg - bg >= 4):
        return None, f"no bright disc on a dark background (contrast {fg - bg:.0f})", None
    thr = bg + 0.4 * (fg - bg)
    _, mask = cv2.threshold(t, math.floor(thr), 1, cv2.THRESH_BINARY)  # t > thr for uint8 t
    # the outline of the largest bright blob (outer outlines only: holes do not matter)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None, "no bright region", None
    blob = max(contours, key=cv2.contourArea)
    pts = blob[:, 0, :].astype(np.float64)
    inside = (pts[:, 0] > 0) & (pts[:, 1] > 0) & (pts[:, 0] < tw - 1) & (pts[:, 1] < th - 1)
    pts = pts[inside]
    # straight camera cuts or a rectangular window: long runs of outline points on one
    # row or column; they are not rim, and they bound where rim points can be
    r_est = max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1])) / 2 if len(pts) else 0
    cuts = dict(top=None, bottom=None, left=None, right=None)
    if len(pts):
        for axis, lo, hi in ((1, "top", "bottom"), (0, "left", "right")):
            flat = _flat_runs(pts, axis, r_est)
            if not len(flat):
                continue
            mid = (pts[:, axis].max() + pts[:, axis].min()) / 2
            low, high = flat[flat < mid], flat[flat > mid]
            if len(low):
                cuts[lo] = k * (low.max() + 1.5)
                pts = pts[pts[:, axis] > low.max() + 1]
            if len(high):
                cuts[hi] = k * (high.min() - 1.5)
                pts = pts[pts[:, axis] < high.min() - 1]
    extra = dict(bg=bg, fg=fg, thr=thr, blob=blob, cuts=cuts)
    if len(pts) < 12:
        return None, "no dark border around the image", extra
    cx, cy, r, keep, _ = robust_circle(pts[:, 0], pts[:, 1], min_tol=1.5)
    # back to full-resolution pixel-centre coordinates
    cx, cy, r = k * (cx + 0.5) - 0.5, k * (cy + 0.5) - 0.5, r * k
    extra["coarse"] = (cx, cy, r, bg)
    return (cx, cy, r, bg, fg, cuts), "", extra


def _rim_points(v: np.ndarray, cx: float, cy: float, r: float, bg: float, ray_px: float, step: float,
                soft_rim: bool = True):
    """Sub-pixel 50 % crossings on radial profiles around (cx, cy, r).

    One ray per ``ray_px`` pixels of rim, sampled every ``step`` px from 0.86 r to 1.10 r
    (``v``: float32 intensity). ``soft_rim``: re-measure the inside level next to the
    edge (vignetted rims, below). Returns x, y, theta, inner level, outer level of the rays
    whose rim lies inside the frame, and the number of rays cast.
    """
    h, w = v.shape
    n_rays = int(np.clip(2 * math.pi * r / ray_px, 90, 1440))
    th = np.arange(n_rays) * (2 * math.pi / n_rays)
    rr = np.arange(0.86 * r, 1.10 * r, step, dtype=np.float64)
    cos, sin = np.cos(th), np.sin(th)
    # float32 sample grid built directly (no float64 temporaries: the grid is ~100k points)
    rr32 = rr.astype(np.float32)
    xs = cos.astype(np.float32)[:, None] * rr32 + np.float32(cx)
    ys = sin.astype(np.float32)[:, None] * rr32 + np.float32(cy)
    # off-frame samples read -1 (darker than any background): a rim beyond the frame then
    # shows up as a crossing on the frame border, which is dropped below
    prof = cv2.remap(v, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=-1.0)
    i_in = np.nonzero((rr >= 0.90 * r) & (rr <= 0.95 * r))[0]
    i_out = np.nonzero((rr >= 1.045 * r) & (rr <= 1.085 * r))[0]
    # medians of short windows: np.partition on a contiguous copy is what np.median does,
    # minus its NaN checks and generic axis handling
    inner = _row_median(prof[:, i_in[0]:i_in[-1] + 1])
    po = prof[:, i_out[0]:i_out[-1] + 1]
    outer = _row_median(po)
    # where the background window leaves the frame, fall back to the global background
    outer = np.where(po.min(axis=1) < 0, np.float32(bg), outer)
    level = 0.5 * (inner + outer)
    has, last = _outermost_crossing(prof, level)
    # soft, vignetted rims: the retina darkens towards the rim, so the inside level far
    # from the edge overshoots and the 50 % crossing lands inside the aperture. Measure
    # the inside level again just inside the first crossing (1.5-5 % of r in) and take
    # the crossing at the lower of the two levels (a crisp rim moves by < 0.3 px).
    if soft_rim:
        a, b = max(2, int(0.05 * r / step)), max(1, int(0.015 * r / step))
        offs = np.arange(b, a, max(1, (a - b) // 12))  # ~12 samples of the window suffice
        for _ in range(2):  # the second round starts nearer the edge
            cols = np.clip(last[:, None] - offs[None, :], 0, prof.shape[1] - 1)
            near = _row_median(np.take_along_axis(prof, cols, axis=1))
            level2 = np.minimum(level, 0.5 * (near + outer))
            soft = np.nonzero(has & (level2 < level - 0.5) & (near - outer >= 8))[0]
            if not len(soft):
                break
            has2, last2 = _outermost_crossing(prof[soft], level2[soft])
            use = soft[has2]
            last[use] = last2[has2]
            level[use] = level2[use]
            inner[use] = near[use]
    ok = has & (inner - outer >= 8) & (inner >= 0)
    idx = np.nonzero(ok)[0]
    k = last[idx]
    p0, p1 = prof[idx, k], prof[idx, k + 1]
    t = (p0 - level[idx]) / np.maximum(p0 - p1, 1e-6)
    rad = rr[k] + t * step
    x = cx + rad * cos[idx]
    y = cy + rad * sin[idx]
    inframe = (x > 1.0) & (y > 1.0) & (x < w - 2.0) & (y < h - 2.0)
    idx = idx[inframe]
    return x[inframe], y[inframe], th[idx], inner[idx], outer[idx], n_rays


def _outermost_crossing(prof: np.ndarray, level: np.ndarray):
    """Per ray: whether and where (sample index) the profile last falls from >= level to
    below it: the outermost transition is the rim, not a dark vessel inside."""
    above = prof >= level[:, None]
    trans = above[:, :-1] & ~above[:, 1:]
    rev = trans[:, ::-1]
    j = np.argmax(rev, axis=1)
    has = rev[np.arange(len(prof)), j]
    return has, trans.shape[1] - 1 - j


def _row_median(a: np.ndarray) -> np.ndarray:
    """Median of each row of a 2-D float array (same value as ``np.median(a, axis=1)``)."""
    n = a.shape[1]
    h = n // 2
    if n % 2:
        return np.partition(a, h, axis=1)[:, h]
    p = np.partition(a, (h - 1, h), axis=1)
    return 0.5 * (p[:, h - 1] + p[:, h])


def _profile_cuts(prof: np.ndarray, c: float, r: float, level: float, tol: float):
    """Cuts on one centre profile ``prof`` (mean across a band through the centre) along
    an axis where the circle spans ``c - r .. c + r``: the 50 % crossings when they lie
    clearly inside the circle; the frame border (-0.5 / n - 0.5) when the frame clips."""
    n = len(prof)
    above = prof >= level
    if not above.any():
        return None, None
    first = int(np.argmax(above))
    last = n - 1 - int(np.argmax(above[::-1]))
    if first == 0:
        lo = -0.5
    else:
        a, b = prof[first - 1], prof[first]
        lo = first - 1 + (level - a) / max(b - a, 1e-6)
    if last == n - 1:
        hi = n - 0.5
    else:
        a, b = prof[last], prof[last + 1]
        hi = last + (a - level) / max(a - b, 1e-6)
    return (float(lo) if lo > c - r + tol else None), (float(hi) if hi < c + r - tol else None)


def _cut_edges(v: np.ndarray, cx: float, cy: float, r: float, inner: float, outer: float) -> dict:
    """Straight cuts on all four sides: horizontal ones on a vertical profile through the
    centre, vertical ones (a rectangular window, a frame narrower than the circle) on a
    horizontal profile."""
    h, w = v.shape
    level = 0.5 * (inner + outer)
    tol = max(2.0, 0.02 * r)  # a cut lies clearly inside; a soft rim's crossing does not
    out = dict(top=None, bottom=None, left=None, right=None)
    x0, x1 = int(max(0, cx - 0.15 * r)), int(min(w, cx + 0.15 * r + 1))
    if x1 > x0:
        out["top"], out["bottom"] = _profile_cuts(v[:, x0:x1].mean(axis=1, dtype=np.float32), cy, r, level, tol)
    y0, y1 = int(max(0, cy - 0.15 * r)), int(min(h, cy + 0.15 * r + 1))
    if y1 > y0:
        out["left"], out["right"] = _profile_cuts(v[y0:y1].mean(axis=0, dtype=np.float32), cx, r, level, tol)
    return out


def _looks_like_retina(img: np.ndarray, sel: np.ndarray) -> tuple[bool, str]:
    """Colour test of a bright region (thumbnail pixels ``sel`` of ``img``): a colour
    fundus photograph is red-dominant (red > green > blue over most of the field, also
    with a colour cast or under exposure). Grayscale frames cannot be told apart from
    any other grey picture and do not qualify."""
    if img.ndim == 2 or img.shape[2] < 3:
        return False, "grayscale"
    px = img[sel][:, :3].astype(np.int16)
    if len(px) < 100:
        return False, "too few pixels"
    r_, g_, b_ = px[:, 0], px[:, 1], px[:, 2]
    # relative margins: a dark photo (red 20, green 8) is as red-dominant as a bright one
    red = float(np.mean((r_ > 1.15 * g_ + 2) & (g_ >= 0.8 * b_ - 4)))
    gm = float(np.median(g_) + 1)
    ratio = float((np.median(r_) + 1) / gm)
    ok = red > 0.8 and ratio > 1.3
    return ok, f"{red:.0%} red-dominant, red/green {ratio:.2f}"


def _mask_fallback(img: np.ndarray, v: np.ndarray, thumb: np.ndarray, k: int, extra: dict, why: str) -> FOV:
    """The bright region as the field of view, when no clean circle fits.

    Taken only when the frame clearly holds retina: one large, convex bright region
    (>= 35 % of the frame, solidity >= 0.9) of red-dominant colour, with a dark surround
    wherever the region does not reach the frame border, and at least 3 of the frame's 4
    corners dark. Otherwise the circle's reason stands (``no field of view``)."""
    th, tw = thumb.shape
    why = why.removeprefix("no field of view: ")
    blob = extra["blob"]
    area = cv2.contourArea(blob)
    hull = cv2.convexHull(blob)
    harea = max(cv2.contourArea(hull), 1.0)
    frac, solidity = harea / (th * tw), area / harea
    if frac < 0.35 or solidity < 0.9:
        return not_found(f"{why}; no fallback: bright region {frac:.0%} of the frame, solidity {solidity:.2f}")
    region = np.zeros_like(thumb)
    cv2.fillPoly(region, [hull], 1)
    # a camera's field leaves the frame's corners dark (a round aperture, or a rectangle
    # with cut corners); a scene that fills the frame does not
    c = max(2, min(th, tw) // 32)
    dark = sum(int(region[y0:y0 + c, x0:x0 + c].mean() < 0.5 and thumb[y0:y0 + c, x0:x0 + c].mean() <= extra["thr"])
               for y0 in (0, th - c) for x0 in (0, tw - c))
    if dark < 3:
        return not_found(f"{why}; no fallback: only {dark} of the 4 frame corners dark")
    outside = (region == 0)
    n_out = int(outside.sum())
    if n_out > 0.01 * thumb.size:
        bright = float(np.count_nonzero(thumb[outside] > extra["thr"]) / n_out)
        if bright > 0.05:
            return not_found(f"{why}; no fallback: surround not dark ({bright:.0%} bright)")
    small = img
    if k > 1:
        hh, ww = th * k, tw * k
        small = cv2.resize(np.ascontiguousarray(img[:hh, :ww]), (tw, th), interpolation=cv2.INTER_AREA)
    inside = cv2.erode(region, np.ones((5, 5), np.uint8)) > 0
    ok, colour = _looks_like_retina(small, inside)
    if not ok:
        return not_found(f"{why}; no fallback: not a colour fundus photograph ({colour})")
    hp = hull[:, 0, :].astype(np.float64)
    # thumbnail pixel edges -> full-size pixel-centre coordinates
    x0, y0 = float(k * hp[:, 0].min() - 0.5), float(k * hp[:, 1].min() - 0.5)
    x1, y1 = float(k * (hp[:, 0].max() + 1) - 0.5), float(k * (hp[:, 1].max() + 1) - 0.5)
    h, w = img.shape[:2]
    if x1 >= k * tw - 0.5 - k:
        x1 = w - 0.5
    if y1 >= k * th - 0.5 - k:
        y1 = h - 0.5
    pts = np.column_stack([k * (hp[:, 0] + 0.5) - 0.5, k * (hp[:, 1] + 0.5) - 0.5])
    # the shape recorded: the rim circle through whatever arcs of it are visible (the cut
    # corners of a rectangular field), else the bounding box's square
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2
    rms, n, shape = math.nan, len(pts), "bounding box"
    arc = _arc_circle(v, extra, h, w)
    if arc is not None:
        cx, cy, r, rms, n = arc
        shape = "circle through the visible rim arcs"
    return FOV(True, cx, cy, r, y0, y1, f"field of view from the bright region, {shape} ({why})",
               rms, n, x0, x1, "mask", pts)


def _arc_circle(v: np.ndarray, extra: dict, h: int, w: int):
    """The rim circle fitted to the rim arcs that are visible (e.g. the four cut corners of
    a rectangular field), or ``None``: rays around the coarse circle, robust fit, accepted
    when >= 16 rim points in >= 3 quadrants lie within 1 % of r on one circle."""
    coarse = extra.get("coarse")
    if coarse is None:
        return None
    cx, cy, r, bg = coarse
    if not (0.15 * min(h, w) <= r <= 1.5 * math.hypot(h, w)):
        return None
    vf = v.astype(np.float32)
    for ray_px, step in ((2.0, 1.0), (0.75, 0.5)):  # short arcs: dense rays
        x, y, th, inner, outer, n_rays = _rim_points(vf, cx, cy, r, bg, ray_px, step)
        if len(x) < 16:
            return None
        cx, cy, r, keep, rms = robust_circle(x, y)
    quadrants = len(np.unique((th[keep] / (0.5 * math.pi)).astype(int) % 4))
    if keep.sum() < 16 or quadrants < 3 or rms > max(1.0, 0.01 * r) or keep.sum() < 0.5 * len(x):
        return None
    return cx, cy, r, rms, int(keep.sum())


def detect_fov(img: np.ndarray, fallback: bool = True) -> FOV:
    """Detect the field of view of a fundus photograph.

    ``img``: HxW or HxWxC uint8 array (RGB, grayscale, any brightness). Returns a
    :class:`FOV` in this image's pixel coordinates: a fitted circle with its straight cuts
    (``method='circle'``); when no clean circle fits but the frame clearly holds a colour
    fundus photograph and ``fallback``, the bright-region outline (``method='mask'``,
    ``reason`` says why no circle); otherwise ``FOV(found=False, reason=...)``.
    """
    if img.dtype != np.uint8:
        raise TypeError(f"detect_fov expects uint8, got {img.dtype}")
    v = _intensity(img)
    h, w = v.shape
    if min(h, w) < 32:
        return not_found(f"image too small ({w}x{h})")
    thumb, k = _thumbnail(v)
    coarse, why, extra = _coarse(thumb, k)
    fov = _fit(v, thumb, k, coarse, why, extra)
    if fov.found or not fallback or extra is None:
        return fov
    return _mask_fallback(img, v, thumb, k, extra, fov.reason)


def _fit(v, thumb, k, coarse, why, extra) -> FOV:
    h, w = v.shape
    if coarse is None:
        return not_found(why)
    cx, cy, r, bg, fg, ccuts = coarse
    if not (0.15 * min(h, w) <= r <= 0.75 * math.hypot(h, w)) or not (0 <= cx < w and 0 <= cy < h):
        return not_found(f"implausible circle (centre {cx:.0f},{cy:.0f}, radius {r:.0f} in {w}x{h})")
    vf = v.astype(np.float32)
    gain = 1.0
    if fg < 100:  # under-exposed: normalise contrast (the absolute floors below assume it)
        gain = min(100.0 / max(fg, 1.0), 8.0)
        vf *= gain
        bg *= gain
    # a quick pass re-centres the rays, the fine pass measures (both follow soft rims: a
    # quick circle inside a soft rim would put the background window on the rim)
    for ray_px, step, soft in ((8.0, 1.0, True), (3.0, 0.5, True)):
        x, y, th, inner, outer, n_rays = _rim_points(vf, cx, cy, r, bg, ray_px, step, soft)
        sel = np.ones(len(x), bool)  # rays ending on a camera cut are not rim
        if ccuts["top"] is not None:
            sel &= y > ccuts["top"]
        if ccuts["bottom"] is not None:
            sel &= y < ccuts["bottom"]
        if ccuts["left"] is not None:
            sel &= x > ccuts["left"]
        if ccuts["right"] is not None:
            sel &= x < ccuts["right"]
        x, y, th, inner, outer = x[sel], y[sel], th[sel], inner[sel], outer[sel]
        if len(x) < 24:
            return not_found(f"rim not found ({len(x)} rim points)")
        cx, cy, r, keep, rms = robust_circle(x, y)
    n_in = int(keep.sum())
    bins = np.unique((th[keep] / (2 * math.pi) * 36).astype(int))
    med_in, med_out = float(np.median(inner[keep])), float(np.median(outer[keep]))
    if n_in < max(24, 0.25 * n_rays) or len(bins) < 12:
        return not_found(f"rim not circular ({n_in} of {n_rays} rays on one circle, {len(bins)}/36 sectors)")
    if n_in < 0.5 * len(x):
        return not_found(f"rim not circular (only {n_in} of {len(x)} edge points on one circle)")
    if rms > max(1.0, 0.01 * r):
        return not_found(f"rim not circular (residual {rms:.1f} px at radius {r:.0f})")
    # the rim step in the photo's own grey levels: 10, or 5 for an under-exposed photo
    if med_out > 0.4 * med_in or (med_in - med_out) / gain < (10 if gain == 1.0 else 5):
        return not_found(f"background not dark (outside {med_out / gain:.0f}, inside {med_in / gain:.0f})")
    if not (0.15 * min(h, w) <= r <= 0.75 * math.hypot(h, w)):
        return not_found(f"implausible radius {r:.0f} in {w}x{h}")
    # the whole surround, not only the rim, must be dark: a round object (a cup, a plate)
    # on a bright table has a circular outline too. Checked on the thumbnail (~256 px):
    # plenty of samples, and no pass over the full image.
    tcx, tcy, tr = (cx + 0.5) / k - 0.5, (cy + 0.5) / k - 0.5, r / k
    yy, xx = np.ogrid[0:thumb.shape[0], 0:thumb.shape[1]]
    outside = (xx - tcx) ** 2 + (yy - tcy) ** 2 > (1.04 * tr) ** 2
    n_out = int(outside.sum())
    if n_out > 0.02 * thumb.size:
        bright = float(np.count_nonzero(thumb[outside] * gain > 0.5 * (med_in + med_out)) / n_out)
        if bright > 0.15:
            return not_found(f"surround not dark ({bright:.0%} of the area outside the circle is bright)")
    cuts = _cut_edges(vf, cx, cy, r, med_in, med_out)
    return FOV(True, cx, cy, r, cuts["top"], cuts["bottom"], "", rms, n_in, cuts["left"], cuts["right"], "circle")
