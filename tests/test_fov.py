"""FOV detection on real photographs (skimage retina) placed on black camera frames."""

import math

import numpy as np
import pytest
from PIL import Image
from skimage import data

from fundusfm.preprocess.fov import detect_fov, robust_circle

# Source circle of skimage's retina.jpg measured independently by the peer benchmark
# (/work/shared/bench/peer_preprocess_bench.py: 1440-ray 50 % crossings, MAD-trimmed fit).
RETINA_TRUTH = (704.155, 702.898, 695.245)


@pytest.fixture(scope="module")
def retina():
    return data.retina()


def paste(src, truth, canvas, diam, offset):
    """Scale ``src`` so its FOV has diameter ``diam``, paste it on a black ``canvas`` with
    the FOV centre ``offset`` from the canvas centre; return image and true circle."""
    w, h = canvas
    sw = src.shape[1]
    n = int(round(sw * diam / (2 * truth[2])))
    s = n / sw
    scaled = Image.fromarray(src).resize((n, n), Image.LANCZOS)
    fcx, fcy = (truth[0] + 0.5) * s - 0.5, (truth[1] + 0.5) * s - 0.5
    ox, oy = int(round(w / 2 + offset[0] - fcx)), int(round(h / 2 + offset[1] - fcy))
    im = Image.new("RGB", (w, h))
    im.paste(scaled, (ox, oy))
    return np.asarray(im), (fcx + ox, fcy + oy, truth[2] * s)


def errors(fov, truth):
    return math.hypot(fov.cx - truth[0], fov.cy - truth[1]), abs(fov.r - truth[2]) / truth[2]


def test_fov_matches_independent_fit_on_real_photograph(retina):
    fov = detect_fov(retina)
    assert fov.found, fov.reason
    ce, re = errors(fov, RETINA_TRUTH)
    assert ce < 1.0 and re < 0.002


@pytest.mark.parametrize("canvas,diam,offset", [
    ((1072, 712), 680, (0, 0)),        # centred, IDRiD proportions at 1/4 scale
    ((1072, 712), 600, (-120, 30)),    # off-centre
    ((536, 356), 330, (40, -10)),      # small
])
def test_fov_found_on_black_camera_frame(retina, canvas, diam, offset):
    img, truth = paste(retina, RETINA_TRUTH, canvas, diam, offset)
    fov = detect_fov(img)
    assert fov.found, fov.reason
    ce, re = errors(fov, truth)
    assert ce < 0.5 and re < 0.003
    assert fov.top is None and fov.bottom is None


def test_fov_found_on_cut_edge_camera_frame(retina):
    img, truth = paste(retina, RETINA_TRUTH, (1072, 712), 825, (0, 0))  # circle taller than frame
    fov = detect_fov(img)
    assert fov.found, fov.reason
    ce, re = errors(fov, truth)
    assert ce < 0.75 and re < 0.003
    assert fov.top == pytest.approx(-0.5) and fov.bottom == pytest.approx(711.5)


def test_fov_finds_flat_camera_cut_inside_frame(retina):
    img, truth = paste(retina, RETINA_TRUTH, (900, 800), 700, (0, 0))
    img = img.copy()
    y_top, y_bot = int(truth[1] - 0.8 * truth[2]), int(truth[1] + 0.85 * truth[2])
    img[:y_top] = 0
    img[y_bot:] = 0
    fov = detect_fov(img)
    assert fov.found, fov.reason
    ce, re = errors(fov, truth)
    assert ce < 1.0 and re < 0.003
    assert fov.top == pytest.approx(y_top - 0.5, abs=1.0)
    assert fov.bottom == pytest.approx(y_bot - 0.5, abs=1.0)


@pytest.mark.parametrize("variant", ["gray", "dark", "very_dark"])
def test_fov_found_on_grayscale_and_dark_photographs(retina, variant):
    img, truth = paste(retina, RETINA_TRUTH, (1072, 712), 680, (50, 0))
    if variant == "gray":
        img = np.asarray(Image.fromarray(img).convert("L"))
    else:
        img = (img * (0.3 if variant == "dark" else 0.12)).astype(np.uint8)
    fov = detect_fov(img)
    assert fov.found, fov.reason
    ce, re = errors(fov, truth)
    assert ce < 1.0 and re < 0.005


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera", "moon"])
def test_no_fov_on_non_fundus_photograph(name):
    fov = detect_fov(getattr(data, name)())
    assert not fov.found
    assert fov.reason.startswith("no field of view")


def test_no_fov_on_blank_images():
    for img in (np.zeros((300, 400, 3), np.uint8), np.full((300, 400), 200, np.uint8)):
        fov = detect_fov(img)
        assert not fov.found and "no field of view" in fov.reason


def test_robust_circle_ignores_notch_outliers():
    th = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    x, y = 100 + 50 * np.cos(th), 80 + 50 * np.sin(th)
    notch = (th > 0.3) & (th < 0.9)  # a notch cut into the rim: 10 % of the points
    x[notch] = 100 + 44 * np.cos(th[notch])
    y[notch] = 80 + 44 * np.sin(th[notch])
    cx, cy, r, keep, rms = robust_circle(x, y)
    assert (cx, cy, r) == pytest.approx((100, 80, 50), abs=1e-6)
    assert not keep[notch].any()


def test_scaled_fov_maps_pixel_centres(retina):
    img, truth = paste(retina, RETINA_TRUTH, (1072, 712), 680, (0, 0))
    small = np.asarray(Image.fromarray(img).resize((536, 356), Image.BOX))
    fov = detect_fov(small).scaled(2.0)
    ce, re = errors(fov, truth)
    assert ce < 0.75 and re < 0.003
