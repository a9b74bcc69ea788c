"""Quality scores respond to graded defects of a real photograph; retina() is Good."""

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from fundusfm.preprocess import crop
from fundusfm.preprocess.fov import detect_fov
from fundusfm.preprocess.quality import QualityThresholds, grade, quality_scores


@pytest.fixture(scope="module")
def retina():
    return data.retina()


def scores_of(img):
    fov = detect_fov(img)
    assert fov.found, fov.reason
    out = crop.crop_resize(Image.fromarray(img), fov, 512)
    mask = crop.fov_mask(fov, 512)
    out = crop.apply_mask(out, mask)
    return quality_scores(out, mask, crop.frame_coverage(fov, img.shape[1], img.shape[0]))


def test_real_photograph_is_good(retina):
    q, reasons = grade(scores_of(retina))
    assert q == "good", reasons


def test_sharpness_falls_with_blur(retina):
    s = [scores_of(cv2.GaussianBlur(retina, (0, 0), sig) if sig else retina)["sharpness"] for sig in (0, 1, 2, 4, 8)]
    assert all(a > b for a, b in zip(s, s[1:])), s
    q, reasons = grade(scores_of(cv2.GaussianBlur(retina, (0, 0), 8)))
    assert q == "reject" and "blurred" in reasons[0]


def test_under_exposure_grows_with_darkening(retina):
    s = [scores_of((retina * g).astype(np.uint8))["under_exposed"] for g in (1.0, 0.2, 0.14, 0.11)]
    assert all(a < b for a, b in zip(s, s[1:])), s
    assert grade(scores_of((retina * 0.1).astype(np.uint8)))[0] == "reject"


def test_over_exposure_grows_with_gain(retina):
    def wash(g):  # brighten towards white: all channels clip
        return np.clip(retina.astype(np.float32) * g + 60 * (g - 1), 0, 255).astype(np.uint8) * (retina.max(2, keepdims=True) > 10)
    s = [scores_of(wash(g))["over_exposed"] for g in (1.0, 1.4, 1.7, 2.0)]
    assert all(a < b for a, b in zip(s, s[1:])), s
    q, reasons = grade(scores_of(wash(2.0)))
    assert q == "reject" and any("over-exposed" in r for r in reasons)


def test_contrast_falls_with_haze(retina):
    mean = retina[retina.max(2) > 30].mean(0)
    fov = retina.max(2, keepdims=True) > 20

    def haze(a):
        return ((retina * a + (1 - a) * mean) * fov).astype(np.uint8)
    s = [scores_of(haze(a))["contrast"] for a in (1.0, 0.6, 0.35, 0.15)]
    assert all(a > b for a, b in zip(s, s[1:])), s
    assert grade(scores_of(haze(0.15)))[0] == "reject"


def test_illumination_unevenness_grows_with_shadow(retina):
    h, w = retina.shape[:2]
    xx = np.arange(w)[None, :]

    def shadow(k):  # a dark crescent creeping in from the right, as from an eyelash / pupil
        ramp = 1 - k * np.clip((xx - 0.3 * w) / (0.7 * w), 0, 1)
        return (retina * ramp[..., None]).astype(np.uint8)
    s = [scores_of(shadow(k))["illumination"] for k in (0.0, 0.3, 0.5, 0.7)]
    assert all(a < b for a, b in zip(s, s[1:])), s
    assert grade(scores_of(shadow(0.7)))[0] != "good"


def test_coverage_falls_when_fov_is_cut(retina):
    cov = []
    for frac in (0.0, 0.1, 0.2):
        img = retina.copy()
        cut = int(frac * img.shape[0])
        if cut:
            img[:cut] = 0
            img[-cut:] = 0
        cov.append(scores_of(img)["fov_coverage"])
    assert all(a > b for a, b in zip(cov, cov[1:])), cov


def test_grade_names_value_and_threshold():
    t = QualityThresholds()
    s = dict(sharpness=0.05, under_exposed=0.0, over_exposed=0.0, contrast=0.2, illumination=0.1, fov_coverage=1.0)
    q, reasons = grade(s, t)
    assert q == "reject" and reasons == [f"blurred (sharpness 0.05 < {t.reject_min_sharpness:g})"]
    s["sharpness"] = (t.reject_min_sharpness + t.usable_min_sharpness) / 2
    assert grade(s, t)[0] == "usable"
