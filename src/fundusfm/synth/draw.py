"""Procedural colour fundus photographs with known ground truth.

One call of :func:`render_fundus` draws one photograph: a black camera frame, a circular
field of view (FOV; some cut flat at top/bottom, some off-centre, some with a notch),
an orange-red textured retina with vignetting, optic disc and cup, macula, a branching
vessel tree, and optionally disease signs and an acquisition defect.
:func:`render_non_fundus` draws images that are not fundus photographs at all.

Design rules that the tests rely on:

* Everything is a pure function of the seed: each independent part of the picture
  (camera, anatomy, every disease, the defect) draws from its own child stream of
  ``numpy.random.SeedSequence(seed)``, and every random number is drawn whether the
  part is switched on or not. So the same seed with and without, say, glaucoma gives
  the same eye with only the cup changed, and a higher DR grade only *adds* lesions
  (lesion pools are nested: grade g uses the first n_g lesions of a fixed pool).
* Pixels outside the recorded FOV circle, and rows beyond the recorded cut edges, are
  exactly 0 in the returned array (JPEG later blurs this a little).
* Sizes are relative to the FOV radius ``r`` so signs survive resizing the FOV crop to
  ~100 px (haemorrhages, drusen, cup, atrophy and tessellation are several pixels there).

Colours are float32 RGB in [0, 1] while drawing; the result is uint8 RGB (H, W, 3).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence, Union

import cv2
import numpy as np

SeedLike = Union[int, Sequence[int], np.random.SeedSequence]

DEFECTS = ("none", "blur", "dark", "bright", "uneven", "shadow")
NON_FUNDUS_KINDS = ("scene", "document")
ASPECTS = ((4, 3), (3, 2), (1, 1))

# Child-stream numbers: one independent random stream per part of the picture.
_STREAMS = {
    "camera": 0, "anatomy": 1, "vessels": 2, "dr": 3, "glaucoma": 4, "amd": 5,
    "myopia": 6, "rvo": 7, "defect": 8, "noise": 9, "non_fundus": 10,
}

# Colours (RGB, 0..1)
_RED_LESION = np.array([0.40, 0.03, 0.03], np.float32)
_EXUDATE = np.array([1.00, 0.93, 0.40], np.float32)
_COTTON_WOOL = np.array([0.97, 0.95, 0.86], np.float32)
_DRUSEN = np.array([0.98, 0.86, 0.42], np.float32)
_VEIN = np.array([0.42, 0.05, 0.05], np.float32)
_ARTERY = np.array([0.66, 0.14, 0.08], np.float32)
_DISC_RIM = np.array([1.00, 0.70, 0.45], np.float32)
_CUP = np.array([1.00, 0.96, 0.84], np.float32)
_ATROPHY = np.array([0.96, 0.88, 0.72], np.float32)

# Nested DR lesion counts per grade 0..4: (low, high); n_g = round(low + u * (high - low))
# with one u per image, so counts never decrease with grade.
_DR_COUNTS = {
    "microaneurysm": ((0, 0), (5, 10), (10, 18), (18, 26), (18, 26)),
    "haemorrhage": ((0, 0), (0, 2), (4, 9), (12, 22), (14, 24)),
    "exudate_cluster": ((0, 0), (0, 0), (1, 3), (3, 5), (3, 5)),
    "cotton_wool": ((0, 0), (0, 0), (0, 2), (2, 4), (2, 5)),
    "nv_tuft": ((0, 0), (0, 0), (0, 0), (0, 0), (2, 3)),
}


@dataclass(frozen=True)
class Disease:
    """Which disease signs to draw. ``dr_grade`` 0 (none) .. 4 (proliferative)."""

    dr_grade: int = 0
    glaucoma: bool = False
    amd: bool = False
    myopia: bool = False
    rvo: bool = False

    def __post_init__(self) -> None:
        if self.dr_grade not in (0, 1, 2, 3, 4):
            raise ValueError(f"Disease.dr_grade must be 0..4, got {self.dr_grade!r}")

    @property
    def abnormal(self) -> bool:
        """True when any disease sign is present."""
        return self.dr_grade > 0 or self.glaucoma or self.amd or self.myopia or self.rvo


@dataclass(frozen=True)
class Camera:
    """The camera frame and its FOV. ``fov_top``/``fov_bottom``: first/last image row
    inside the FOV when the circle is cut flat there, else None."""

    width: int
    height: int
    fov_cx: float
    fov_cy: float
    fov_r: float
    fov_top: int | None = None
    fov_bottom: int | None = None
    notch_angle: float | None = None  # radians, image coordinates (y down)


@dataclass(frozen=True)
class Truth:
    """Ground truth of one drawn image (pixel coordinates of the returned array)."""

    kind: str  # "fundus" or "non_fundus"
    width: int
    height: int
    eye: str  # "L", "R", or "U" for non-fundus
    defect: str
    disease: Disease | None
    fov_cx: float | None = None
    fov_cy: float | None = None
    fov_r: float | None = None
    fov_top: int | None = None
    fov_bottom: int | None = None
    disc_x: float | None = None
    disc_y: float | None = None
    disc_r: float | None = None
    cup_to_disc: float | None = None
    fovea_x: float | None = None
    fovea_y: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Flat dict (disease fields inlined) for tables."""
        d = asdict(self)
        dis = d.pop("disease") or {}
        d.update(dis)
        return d


# ----------------------------------------------------------------------------- seeds
def _seed_sequence(seed: SeedLike) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (int, np.integer)):
        return np.random.SeedSequence(int(seed))
    return np.random.SeedSequence([int(s) for s in seed])


def _stream(ss: np.random.SeedSequence, name: str) -> np.random.Generator:
    # Built from entropy + spawn_key instead of ss.spawn(), which mutates ss and would
    # make a second call with the same SeedSequence object draw something else.
    child = np.random.SeedSequence(ss.entropy, spawn_key=tuple(ss.spawn_key) + (_STREAMS[name],))
    return np.random.default_rng(child)


# ----------------------------------------------------------------------------- camera
def sample_camera(rng: np.random.Generator, scale: float = 1.0) -> Camera:
    """Draw a camera frame: size, aspect, FOV circle, cut edges, offset and notch."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
    width = int(round(rng.integers(320, 481) * scale))
    height = int(round(width * ah / aw))
    u_cut, u_r, u_margin, u_dx, u_dy, u_notch, u_notch_angle = rng.random(7)
    cut = aw != ah and u_cut < 0.45
    if cut:
        # Circle larger than the frame height, cut flat by the camera mask a few rows in.
        r = height / 2 * (1.06 + 0.14 * u_r)
        r = min(r, width * 0.48)
        margin = int(round(height * (0.015 + 0.04 * u_margin)))
        top, bottom = margin, height - 1 - margin
        cy = height / 2 - 0.5
    else:
        r = min(width, height) / 2 * (0.84 + 0.12 * u_r)
        top = bottom = None
        slack_y = max(0.0, height / 2 - r - 2)
        cy = height / 2 - 0.5 + (2 * u_dy - 1) * min(slack_y, 0.04 * height)
    slack_x = max(0.0, width / 2 - r - 2)
    cx = width / 2 - 0.5 + (2 * u_dx - 1) * min(slack_x, 0.06 * width)
    notch = float(u_notch_angle * 2 * math.pi) if u_notch < 0.15 else None
    if notch is not None and cut:
        notch = 0.0 if u_notch_angle < 0.5 else math.pi  # only on the left/right rim
    return Camera(width, height, float(cx), float(cy), float(r), top, bottom, notch)


# ----------------------------------------------------------------------------- helpers
_SHIFT = 4  # cv2 sub-pixel drawing: coordinates in 1/16 px
_ONE = 1 << _SHIFT


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _disk(mask: np.ndarray, x: float, y: float, radius: float, value: int = 255) -> None:
    cv2.circle(mask, _pt(x, y), max(1, int(round(radius * _ONE))), value, -1, cv2.LINE_AA, _SHIFT)


def _ellipse(mask: np.ndarray, x: float, y: float, a: float, b: float, angle_deg: float,
             value: int = 255) -> None:
    axes = (max(1, int(round(a * _ONE))), max(1, int(round(b * _ONE))))
    cv2.ellipse(mask, _pt(x, y), axes, angle_deg, 0, 360, value, -1, cv2.LINE_AA, _SHIFT)


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, opacity: float = 1.0,
           blur: float = 0.0) -> None:
    """Alpha-blend ``colour`` into ``img`` where the uint8 ``mask`` is set (in place)."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return
    pad = int(math.ceil(3 * blur)) + 1
    H, W = mask.shape
    x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(W, x + w + pad), min(H, y + h + pad)
    a = mask[y0:y1, x0:x1].astype(np.float32) * (opacity / 255.0)
    if blur > 0:
        a = cv2.GaussianBlur(a, (0, 0), blur)
    roi = img[y0:y1, x0:x1]
    roi += a[..., None] * (colour - roi)


def _gauss(xx: np.ndarray, yy: np.ndarray, x: float, y: float, sigma: float) -> np.ndarray:
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma * sigma), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: a coarse random grid upsampled bicubically."""
    h, w = shape
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _n(lo_hi: tuple[int, int], u: float) -> int:
    lo, hi = lo_hi
    return int(round(lo + u * (hi - lo)))


# ----------------------------------------------------------------------------- vessels
@dataclass
class _Vessel:
    points: list  # [(x, y, width)]
    vein: bool
    role: str = "branch"  # temporal / nasal / macular trunk, or branch


def _grow_vessels(rng: np.random.Generator, disc: tuple[float, float], fovea: tuple[float, float],
                  cam: Camera, disc_r: float) -> list[_Vessel]:
    """Random-walk vessel tree: 4 arteries + 4 veins leaving the disc, arcades curving
    around the macula, with recursive side branches."""
    r = cam.fov_r
    temporal = -1.0 if fovea[0] < disc[0] else 1.0  # x direction from disc towards fovea
    step = 0.025 * r
    vessels: list[_Vessel] = []

    def walk(x, y, heading, width, curvature, n_steps, vein, depth, role="branch"):
        pts = [(x, y, width)]
        for i in range(n_steps):
            heading += curvature + rng.normal(0, 0.06)
            x += step * math.cos(heading)
            y += step * math.sin(heading)
            # stay out of the fovea: arcades bend away from it
            dxf, dyf = x - fovea[0], y - fovea[1]
            if dxf * dxf + dyf * dyf < (0.16 * r) ** 2:
                break
            if (x - cam.fov_cx) ** 2 + (y - cam.fov_cy) ** 2 > (1.02 * r) ** 2:
                break
            width *= 0.985
            pts.append((x, y, width))
            if depth < 3 and width > 0.006 * r and rng.random() < 0.10:
                side = 1 if rng.random() < 0.5 else -1
                bh = heading + side * rng.uniform(0.45, 0.95)
                walk(x, y, bh, width * rng.uniform(0.55, 0.75), rng.normal(0, 0.03),
                     int(n_steps * rng.uniform(0.3, 0.6)), vein, depth + 1)
                width *= 0.88
        vessels.append(_Vessel(pts, vein, role))

    up, down = -math.pi / 2, math.pi / 2
    for vein in (True, False):
        w0 = (0.022 if vein else 0.016) * r
        off = 0.25 if vein else -0.25  # artery and vein leave side by side
        for vert in (up, down):
            sign = 1 if vert == up else -1
            # temporal arcade: leaves vertically, bends towards (and around) the macula
            # heading tilts from vertical towards the temporal side (y grows downwards)
            h0 = vert + sign * temporal * 0.30 + rng.normal(0, 0.08)
            turn = rng.uniform(2.0, 2.4)
            steps = int(rng.integers(50, 65))
            curv = (temporal * sign) * turn / steps
            sx = disc[0] + off * disc_r * temporal * 0.3
            sy = disc[1] + (-sign) * 0.3 * disc_r
            walk(sx, sy, h0, w0, curv, steps, vein, 0, "temporal")
            # nasal branch: straighter, shorter, thinner
            hn = vert - sign * temporal * 0.6 + rng.normal(0, 0.1)
            walk(sx, sy, hn, w0 * 0.7, -curv * 0.3, int(rng.integers(20, 32)), vein, 1, "nasal")
        # small macular branch heading straight at the macula
        hm = (0.0 if temporal > 0 else math.pi) + rng.normal(0, 0.2)
        walk(disc[0], disc[1], hm, w0 * 0.45, 0.0, int(rng.integers(8, 13)), vein, 2, "macular")
    return vessels


def _draw_vessels(shape: tuple[int, int], vessels: list[_Vessel], vein: bool,
                  widen: float = 1.0) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for v in vessels:
        if v.vein != vein:
            continue
        pts = np.asarray(v.points, np.float64)
        if len(pts) < 2:
            continue
        w = pts[:-1, 2] * widen
        thick = np.maximum(1, np.round(w)).astype(int)
        # thinner than a pixel: fade instead of drawing too wide
        val = np.minimum(255, 255 * np.maximum(w, 0.35)).astype(int)
        xy = np.round(pts[:, :2] * _ONE).astype(np.int32)
        # one polyline per run of segments with the same thickness and shade (fast)
        key = thick * 256 + val
        cuts = np.flatnonzero(np.diff(key)) + 1
        for s0, s1 in zip(np.r_[0, cuts], np.r_[cuts, len(key)]):
            cv2.polylines(mask, [xy[s0 : s1 + 1]], False, int(val[s0]), int(thick[s0]), cv2.LINE_AA, _SHIFT)
    return mask


# ----------------------------------------------------------------------------- fundus
def render_fundus(seed: SeedLike, disease: Disease = Disease(), eye: str = "R",
                  defect: str = "none", camera: Camera | None = None,
                  pigment: float | None = None, scale: float = 1.0) -> tuple[np.ndarray, Truth]:
    """Draw one colour fundus photograph.

    Args:
        seed: int, sequence of ints (e.g. ``(dataset_seed, image_index)``) or SeedSequence.
        disease: signs to draw.
        eye: "R" (disc right of the fovea, as photographed) or "L" (mirror).
        defect: one of :data:`DEFECTS`.
        camera: frame/FOV to use (default: drawn from the seed, see :func:`sample_camera`).
        pigment: 0 (light, orange) .. 1 (dark, brown-red) fundus; default drawn from seed.
        scale: multiplies the default camera width (320-480 px) when ``camera`` is None.

    Returns:
        ``(image, truth)``: uint8 RGB array (H, W, 3) and its :class:`Truth`.
    """
    if eye not in ("L", "R"):
        raise ValueError(f"eye must be 'L' or 'R', got {eye!r}")
    if defect not in DEFECTS:
        raise ValueError(f"defect must be one of {DEFECTS}, got {defect!r}")
    ss = _seed_sequence(seed)
    cam = camera if camera is not None else sample_camera(_stream(ss, "camera"), scale)
    rng = _stream(ss, "anatomy")
    H, W, r = cam.height, cam.width, cam.fov_r
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    dist = np.sqrt((xx - cam.fov_cx) ** 2 + (yy - cam.fov_cy) ** 2)

    # --- anatomy (all draws made unconditionally, in a fixed order)
    if pigment is None:
        pigment = float(rng.beta(2, 2))
    side = 1.0 if eye == "R" else -1.0  # disc is nasal: right of the fovea in a right eye
    fx = cam.fov_cx - side * rng.uniform(0.0, 0.07) * r
    fy = cam.fov_cy + rng.uniform(-0.05, 0.05) * r
    dfd = rng.uniform(0.50, 0.58) * r
    dx, dy = fx + side * dfd, fy - rng.uniform(0.0, 0.07) * r
    disc_r = rng.uniform(0.105, 0.125) * r
    u_cdr = rng.random()
    cup_shift = rng.uniform(0.0, 0.15)
    tint = rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    low = _smooth_noise(rng, (H, W), 5)
    mid = _smooth_noise(rng, (H, W), 28)
    vign = rng.uniform(0.35, 0.55)
    macula_depth = rng.uniform(0.25, 0.40)
    disc_glow = rng.uniform(0.15, 0.3)

    # background: orange-red, darker and browner with pigmentation
    base = np.array([0.86, 0.40, 0.16], np.float32) * (1.0 - 0.30 * pigment)
    base[1] *= 1.0 - 0.35 * pigment
    base = base + tint
    shade = 1.0 + 0.08 * low + 0.035 * mid
    shade *= 1.0 - vign * (dist / r) ** 2.2
    shade -= macula_depth * _gauss(xx, yy, fx, fy, 0.13 * r)
    shade -= 0.25 * _gauss(xx, yy, fx, fy, 0.035 * r)
    shade += disc_glow * _gauss(xx, yy, dx, dy, 2.2 * disc_r)
    img = shade[..., None] * base[None, None, :]
    img = np.ascontiguousarray(img, dtype=np.float32)

    # --- myopia: tessellated fundus + peripapillary atrophy (drawn under the disc)
    mrng = _stream(ss, "myopia")
    tess_strength = mrng.uniform(0.45, 0.7)
    chor = np.zeros((H, W), np.uint8)
    n_chor = 90
    starts = mrng.uniform(-1.0, 1.0, (n_chor, 2))
    heads = mrng.uniform(0, 2 * math.pi, n_chor)
    widths = mrng.uniform(0.025, 0.045, n_chor) * r
    wiggle = mrng.normal(0, 0.25, (n_chor, 14))
    ppa_width = mrng.uniform(0.7, 1.1)
    ppa_ring = mrng.random() < 0.35
    if disease.myopia:
        for i in range(n_chor):
            x, y = cam.fov_cx + starts[i, 0] * r, cam.fov_cy + starts[i, 1] * r
            h = heads[i]
            for j in range(14):
                h += wiggle[i, j]
                nx, ny = x + 0.06 * r * math.cos(h), y + 0.06 * r * math.sin(h)
                cv2.line(chor, _pt(x, y), _pt(nx, ny), 255, max(1, int(round(widths[i]))),
                         cv2.LINE_AA, _SHIFT)
                x, y = nx, ny
        chor_f = cv2.GaussianBlur(chor, (0, 0), 0.008 * r + 0.5).astype(np.float32) / 255.0
        # between the choroidal vessels the pigment shows through dark brown
        dark = tess_strength * (1.0 - chor_f)
        img *= (1.0 - dark[..., None] * np.array([0.45, 0.62, 0.55], np.float32))
        ppa = np.zeros((H, W), np.uint8)
        tdir = -side
        _ellipse(ppa, dx + tdir * 0.35 * ppa_width * disc_r, dy,
                 disc_r * (1.0 + 0.8 * ppa_width), disc_r * (1.05 + 0.3 * ppa_width), 0)
        if ppa_ring:
            _disk(ppa, dx, dy, disc_r * 1.35)
        _paint(img, ppa, _ATROPHY, 0.9, blur=0.01 * r)

    # --- optic disc and cup
    grng = _stream(ss, "glaucoma")
    u_g = grng.random()
    cdr = 0.66 + 0.22 * u_g if disease.glaucoma else 0.22 + 0.23 * u_cdr
    disc = np.zeros((H, W), np.uint8)
    _ellipse(disc, dx, dy, disc_r, disc_r * 1.08, 0)
    _paint(img, disc, _DISC_RIM, 0.95, blur=0.06 * disc_r)
    cup = np.zeros((H, W), np.uint8)
    cup_x = dx - side * cup_shift * disc_r * (1 - cdr)
    _ellipse(cup, cup_x, dy, cdr * disc_r, cdr * disc_r * 1.1, 0)
    _paint(img, cup, _CUP, 0.95, blur=0.08 * disc_r * cdr)

    # --- vessels
    vrng = _stream(ss, "vessels")
    vessels = _grow_vessels(vrng, (dx, dy), (fx, fy), cam, disc_r)
    rrng = _stream(ss, "rvo")
    # branch occlusions happen along the temporal arcades (arteriovenous crossings)
    veins = [i for i, v in enumerate(vessels) if v.vein and v.role == "temporal" and len(v.points) > 8]
    rvo_central = rrng.random() < 0.25
    rvo_pick = int(rrng.integers(max(1, len(veins))))
    n_flame = int(rrng.integers(35, 60))
    flame_u = rrng.random((n_flame, 5))
    occluded = set()
    if disease.rvo and veins:
        occluded = set(veins) if rvo_central else {veins[rvo_pick]}
    vein_mask = _draw_vessels((H, W), vessels, vein=True)
    if occluded:  # occluded veins are dilated and tortuous-looking (drawn wider)
        vein_mask = np.maximum(vein_mask, _draw_vessels(
            (H, W), [vessels[i] for i in occluded], vein=True, widen=1.6))
    artery_mask = _draw_vessels((H, W), vessels, vein=False)
    # vessels dive into the cup: faint there, so the pale cup stays visible
    fade = (255 - (cup >> 1) - (cup >> 2)).astype(np.uint16)
    artery_mask = ((artery_mask * fade) >> 8).astype(np.uint8)
    vein_mask = ((vein_mask * fade) >> 8).astype(np.uint8)
    _paint(img, artery_mask, _ARTERY, 0.85, blur=0.5)
    _paint(img, vein_mask, _VEIN, 0.9, blur=0.5)

    red = np.zeros((H, W), np.uint8)
    # --- retinal vein occlusion: flame haemorrhages along the occluded vein(s)
    if occluded:
        occ = [vessels[i] for i in sorted(occluded)]
        for k in range(n_flame):
            v = occ[k % len(occ)]
            pts = v.points
            j = min(len(pts) - 2, int(len(pts) * (0.1 + 0.75 * flame_u[k, 0])))
            (x0, y0, _), (x1, y1, _) = pts[j], pts[j + 1]
            ang = math.atan2(y1 - y0, x1 - x0)
            off = (2 * flame_u[k, 1] - 1) * 0.07 * r
            x = x0 - off * math.sin(ang)
            y = y0 + off * math.cos(ang)
            length = (0.035 + 0.04 * flame_u[k, 2]) * r
            _ellipse(red, x, y, length, (0.010 + 0.008 * flame_u[k, 3]) * r,
                     math.degrees(ang) + 25 * (2 * flame_u[k, 4] - 1))

    # --- diabetic retinopathy (nested pools: a higher grade only adds lesions)
    drng = _stream(ss, "dr")
    g = disease.dr_grade
    u = drng.random(len(_DR_COUNTS))
    counts = {k: _n(v[g], u[i]) for i, (k, v) in enumerate(_DR_COUNTS.items())}
    pools = {k: _n(v[4], 1.0) for k, v in _DR_COUNTS.items()}

    def posterior_pole(n):
        # positions within the posterior pole, away from the disc
        ang = drng.uniform(0, 2 * math.pi, n)
        rad = np.sqrt(drng.uniform(0.02, 0.72, n)) * r
        return fx + side * 0.15 * r + rad * np.cos(ang), fy + rad * np.sin(ang)

    ma_x, ma_y = posterior_pole(pools["microaneurysm"])
    ma_s = drng.uniform(0.011, 0.017, pools["microaneurysm"]) * r
    hx, hy = posterior_pole(pools["haemorrhage"])
    hs = drng.uniform(0.022, 0.05, pools["haemorrhage"]) * r
    hblob = drng.uniform(-1, 1, (pools["haemorrhage"], 3, 3))
    ex_c = posterior_pole(pools["exudate_cluster"])
    ex_pts = drng.uniform(-1, 1, (pools["exudate_cluster"], 12, 3))
    cw_x, cw_y = posterior_pole(pools["cotton_wool"])
    cw_s = drng.uniform(0.035, 0.055, (pools["cotton_wool"], 2)) * r
    cw_a = drng.uniform(0, 180, pools["cotton_wool"])
    nv_c = drng.integers(0, 1 << 30, pools["nv_tuft"])
    for i in range(counts["microaneurysm"]):
        _disk(red, ma_x[i], ma_y[i], ma_s[i])
    for i in range(counts["haemorrhage"]):
        # blot haemorrhage: a few overlapping disks
        for b in range(3):
            _disk(red, hx[i] + hblob[i, b, 0] * hs[i] * 0.6, hy[i] + hblob[i, b, 1] * hs[i] * 0.6,
                  hs[i] * (0.55 + 0.25 * hblob[i, b, 2]))
    for i in range(counts["nv_tuft"]):
        # neovascular tuft: a tangle of fine tortuous vessels near the disc or an arcade
        trng = np.random.default_rng(int(nv_c[i]))
        ang = trng.uniform(0, 2 * math.pi)
        cx = dx + math.cos(ang) * trng.uniform(1.3, 3.0) * disc_r
        cy = dy + math.sin(ang) * trng.uniform(1.3, 3.0) * disc_r
        for _ in range(14):
            x, y, h = cx, cy, trng.uniform(0, 2 * math.pi)
            for _ in range(8):
                h += trng.normal(0, 0.9)
                nx, ny = x + 0.02 * r * math.cos(h), y + 0.02 * r * math.sin(h)
                cv2.line(red, _pt(x, y), _pt(nx, ny), 255, max(1, int(round(0.007 * r))),
                         cv2.LINE_AA, _SHIFT)
                x, y = nx, ny
    _paint(img, red, _RED_LESION, 0.92, blur=0.004 * r)

    yellow = np.zeros((H, W), np.uint8)
    for i in range(counts["exudate_cluster"]):
        # hard exudates: clusters / partial rings of small bright yellow dots
        for k in range(12):
            ex, ey, es = ex_pts[i, k]
            _disk(yellow, ex_c[0][i] + ex * 0.07 * r, ex_c[1][i] + ey * 0.07 * r,
                  (0.013 + 0.008 * es) * r)
    _paint(img, yellow, _EXUDATE, 0.95, blur=0.002 * r)

    white = np.zeros((H, W), np.uint8)
    for i in range(counts["cotton_wool"]):
        _ellipse(white, cw_x[i], cw_y[i], cw_s[i, 0], cw_s[i, 1], cw_a[i])
    _paint(img, white, _COTTON_WOOL, 0.8, blur=0.012 * r)

    # --- AMD: drusen clustered around the fovea, sometimes geographic atrophy
    arng = _stream(ss, "amd")
    n_dr = int(arng.integers(25, 55))
    dr_ang = arng.uniform(0, 2 * math.pi, n_dr)
    dr_rad = np.abs(arng.normal(0, 0.14, n_dr)) * r + 0.02 * r
    dr_s = arng.uniform(0.014, 0.034, n_dr) * r
    ga = arng.random() < 0.3
    ga_s = arng.uniform(0.06, 0.10) * r
    if disease.amd:
        drusen = np.zeros((H, W), np.uint8)
        for i in range(n_dr):
            _disk(drusen, fx + dr_rad[i] * math.cos(dr_ang[i]), fy + dr_rad[i] * math.sin(dr_ang[i]),
                  dr_s[i])
        if ga:
            _disk(drusen, fx, fy, ga_s)
        _paint(img, drusen, _DRUSEN, 0.9, blur=0.006 * r)

    # --- camera noise, then the acquisition defect
    nrng = _stream(ss, "noise")
    img += nrng.standard_normal((H, W, 1), dtype=np.float32) * 0.008
    img = _apply_defect(img, defect, _stream(ss, "defect"), cam, xx, yy, dist)

    # --- the camera mask: exactly black outside the FOV (anti-aliased 1 px inside the rim)
    fov = np.clip(r - dist, 0.0, 1.0)
    if cam.fov_top is not None:
        fov[: cam.fov_top] = 0
    if cam.fov_bottom is not None:
        fov[cam.fov_bottom + 1:] = 0
    if cam.notch_angle is not None:
        nx = cam.fov_cx + math.cos(cam.notch_angle) * r
        ny = cam.fov_cy + math.sin(cam.notch_angle) * r
        notch = np.zeros((H, W), np.uint8)
        cv2.fillConvexPoly(notch, np.array([_pt(nx + 0.06 * r * math.cos(cam.notch_angle + a),
                                                ny + 0.06 * r * math.sin(cam.notch_angle + a))
                                            for a in (2.2, math.pi, -2.2, 0.0)], np.int32),
                           1, cv2.LINE_8, _SHIFT)
        fov[notch > 0] = 0
    img *= fov[..., None]
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

    truth = Truth(
        kind="fundus", width=W, height=H, eye=eye, defect=defect, disease=disease,
        fov_cx=cam.fov_cx, fov_cy=cam.fov_cy, fov_r=cam.fov_r, fov_top=cam.fov_top,
        fov_bottom=cam.fov_bottom, disc_x=float(dx), disc_y=float(dy), disc_r=float(disc_r),
        cup_to_disc=float(cdr), fovea_x=float(fx), fovea_y=float(fy),
        extra={"pigment": pigment, "notch_angle": cam.notch_angle,
               "rvo_central": bool(disease.rvo and rvo_central)},
    )
    return out, truth


def _apply_defect(img: np.ndarray, defect: str, rng: np.random.Generator, cam: Camera,
                  xx: np.ndarray, yy: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Acquisition defects of real screening photographs (drawn before the camera mask)."""
    r = cam.fov_r
    u = rng.random(6)
    if defect == "blur":  # defocus / media opacity
        return cv2.GaussianBlur(img, (0, 0), (0.018 + 0.014 * u[0]) * r)
    if defect == "dark":  # under-exposure
        return img * (0.16 + 0.14 * u[0])
    if defect == "bright":  # over-exposure: washed out towards white
        k = 0.25 + 0.2 * u[0]
        return 1.0 - (1.0 - np.clip(img * 1.6, 0, 1)) * k
    if defect == "uneven":  # strong illumination gradient plus a haze at one rim
        ang = u[0] * 2 * math.pi
        t = ((xx - cam.fov_cx) * math.cos(ang) + (yy - cam.fov_cy) * math.sin(ang)) / r
        gain = np.clip(0.65 + 0.55 * t, 0.12, 1.3)
        haze = _gauss(xx, yy, cam.fov_cx + math.cos(ang) * r, cam.fov_cy + math.sin(ang) * r,
                      0.35 * r) * (0.45 + 0.3 * u[1])
        out = img * gain[..., None] + haze[..., None] * np.array([0.9, 0.85, 0.8], np.float32)
        return out.astype(np.float32)
    if defect == "shadow":  # eyelid / eyelash shadow from the top or bottom of the FOV
        top = u[0] < 0.7
        edge = cam.fov_cy + (-1 if top else 1) * r * (0.35 + 0.3 * u[1])
        s = (edge - yy) if top else (yy - edge)
        band = 1.0 / (1.0 + np.exp(-s / (0.04 * r)))  # 1 inside the shadow
        gain = 1.0 - (0.75 + 0.15 * u[2]) * band
        lash = np.zeros(dist.shape, np.uint8)
        for k in range(int(12 + 10 * u[3])):
            x0 = cam.fov_cx + (rng.random() * 1.6 - 0.8) * r
            y0 = cam.fov_cy + (-1 if top else 1) * r
            bend = rng.uniform(-0.3, 0.3) * r
            pts = [(x0 + bend * (t ** 2), y0 - (-1 if top else 1) * t * rng.uniform(0.45, 0.8) * r)
                   for t in np.linspace(0, 1, 6)]
            for (a, b), (c, d) in zip(pts[:-1], pts[1:]):
                cv2.line(lash, _pt(a, b), _pt(c, d), 255, max(2, int(0.02 * r)), cv2.LINE_AA, _SHIFT)
        out = img * gain[..., None]
        _paint(out, lash, np.array([0.03, 0.02, 0.02], np.float32), 0.85, blur=0.01 * r)
        return out
    return img


# ----------------------------------------------------------------------------- non-fundus
def render_non_fundus(seed: SeedLike, kind: str | None = None,
                      scale: float = 1.0) -> tuple[np.ndarray, Truth]:
    """Draw an image that is not a fundus photograph (no circular FOV): a natural-looking
    outdoor scene or a document page. ``kind`` is drawn from the seed when None."""
    ss = _seed_sequence(seed)
    rng = _stream(ss, "non_fundus")
    u_kind = rng.random()
    kind = kind if kind is not None else NON_FUNDUS_KINDS[int(u_kind * len(NON_FUNDUS_KINDS))]
    if kind not in NON_FUNDUS_KINDS:
        raise ValueError(f"kind must be one of {NON_FUNDUS_KINDS}, got {kind!r}")
    aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
    W = int(round(rng.integers(320, 481) * scale))
    H = int(round(W * ah / aw))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    if kind == "scene":
        horizon = H * rng.uniform(0.35, 0.6) + 0.05 * H * _smooth_noise(rng, (1, W), 6)[0]
        t = (yy / H)[..., None]
        sky = np.array([0.35, 0.55, 0.9], np.float32) * (1 - t) + np.array([0.8, 0.88, 0.95], np.float32) * t
        ground_c = np.array([0.25, 0.45, 0.15], np.float32) + rng.uniform(-0.08, 0.08, 3).astype(np.float32)
        tex = 0.12 * _smooth_noise(rng, (H, W), 60) + 0.1 * _smooth_noise(rng, (H, W), 12)
        ground = ground_c * (1 + tex[..., None])
        img = np.where((yy >= horizon[None, :])[..., None], ground, sky).astype(np.float32)
        blobs = np.zeros((H, W), np.uint8)
        for _ in range(int(rng.integers(4, 10))):
            _ellipse(blobs, rng.uniform(0, W), rng.uniform(0.3, 0.8) * H, rng.uniform(0.03, 0.12) * W,
                     rng.uniform(0.05, 0.2) * H, rng.uniform(0, 180))
        _paint(img, blobs, np.array([0.12, 0.25, 0.08], np.float32), 0.9, blur=2)
        img += 0.02 * rng.standard_normal((H, W, 1), dtype=np.float32)
    else:
        paper = np.array([0.95, 0.94, 0.9], np.float32) * (1 - 0.06 * _smooth_noise(rng, (H, W), 4)[..., None])
        img = np.ascontiguousarray(paper, dtype=np.float32)
        ink = np.zeros((H, W), np.uint8)
        y = H * rng.uniform(0.06, 0.12)
        line_h = H * rng.uniform(0.025, 0.04)
        while y < H * 0.92:
            x = W * 0.08
            end = W * rng.uniform(0.6, 0.92)
            while x < end:
                wlen = W * rng.uniform(0.02, 0.09)
                cv2.rectangle(ink, _pt(x, y), _pt(min(x + wlen, end), y + line_h * 0.55), 255, -1,
                              cv2.LINE_AA, _SHIFT)
                x += wlen + W * 0.012
            y += line_h * rng.uniform(1.5, 2.4)
        _paint(img, ink, np.array([0.12, 0.12, 0.15], np.float32), 0.85, blur=0.6)
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out, Truth(kind="non_fundus", width=W, height=H, eye="U", defect="non_fundus",
                      disease=None, extra={"non_fundus_kind": kind})
