"""Quality scores respond to graded defects of a real photograph; retina() is Good."""

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

import fov_cases
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


@pytest.fixture(scope="module")
def frame1024(retina):
    img, _ = fov_cases.paste(retina, fov_cases.RETINA_TRUTH, (1024, 1024), 980, (0, 0))
    return img


def test_sharpness_falls_with_blur_and_heavy_blur_is_caught(frame1024):
    """Graded Gaussian blur of the real photograph on a 1024-px frame, stored as JPEG."""
    sigmas = (0, 2, 4, 8, 12, 25)
    s = [scores_of(fov_cases.jpeg(cv2.GaussianBlur(frame1024, (0, 0), sig) if sig else frame1024))
         for sig in sigmas]
    sharp = [x["sharpness"] for x in s]
    assert all(a > b for a, b in zip(sharp, sharp[1:])), sharp
    for sig, x in zip(sigmas, s):
        q, reasons = grade(x)
        if sig >= 8:  # the case is sigma = 25: vessels gone
            assert q in ("reject", "usable") and "blurred" in reasons[0], (sig, q, reasons)
        if sig >= 12:
            assert q == "reject", (sig, q, reasons)
        if sig <= 2:
            assert q == "good", (sig, q, reasons)


@pytest.mark.parametrize("side", [250, 300, 400])
def test_sharp_small_photograph_is_not_blurred(retina, side):
    small = fov_cases.jpeg(cv2.resize(retina, (side, side), interpolation=cv2.INTER_AREA), 92)
    q, reasons = grade(scores_of(small))
    assert not any("blurred" in r for r in reasons), reasons


def test_sharpness_is_scale_normalised(retina):
    """The same photo at 250 px and at 3000 px scores alike (within 20 %), and blur at the
    same fraction of the field scores alike at both sizes."""
    def at(side, blur_frac=0.0):
        im = cv2.resize(retina, (side, side), interpolation=cv2.INTER_AREA if side < 1411 else cv2.INTER_CUBIC)
        if blur_frac:
            im = cv2.GaussianBlur(im, (0, 0), blur_frac * side)
        return scores_of(fov_cases.jpeg(im, 92))["sharpness"]
    for frac in (0.0, 0.008):
        small, big = at(250, frac), at(3000, frac)
        assert abs(small - big) / big < 0.2, (frac, small, big)


def test_sharpness_does_not_depend_on_brightness(frame1024):
    s = [scores_of(fov_cases.jpeg((frame1024 * g).astype(np.uint8)))["sharpness"] for g in (1.0, 0.4, 0.2)]
    assert max(s) / min(s) < 1.25, s


def test_under_exposure_grows_with_darkening(retina):
    s = [scores_of((retina * g).astype(np.uint8))["under_exposed"] for g in (1.0, 0.1, 0.07, 0.05)]
    assert all(a < b for a, b in zip(s, s[1:])), s
    assert grade(scores_of((retina * 0.04).astype(np.uint8)))[0] == "reject"
    # 3 stops under is dark but gradable: not rejected
    assert grade(scores_of((retina * 0.125).astype(np.uint8)))[0] != "reject"


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
    s = dict(sharpness=0.005, under_exposed=0.0, over_exposed=0.0, contrast=0.2, illumination=0.1, fov_coverage=1.0)
    q, reasons = grade(s, t)
    assert q == "reject" and reasons == [f"blurred (sharpness 0.005 < {t.reject_min_sharpness:g})"]
    s["sharpness"] = (t.reject_min_sharpness + t.usable_min_sharpness) / 2
    assert grade(s, t)[0] == "usable"


@pytest.mark.parametrize("name", ["vignetted", "underexposed", "window", "rectangle"])
def test_scores_monotone_on_hard_cases(name):
    """The graded defects on the other real-photo variants of the development set: blur
    lowers sharpness, a growing shadow raises unevenness, at 400 px; none is blurred sharp."""
    img, _ = fov_cases.make_case(name, 400)
    sharp = [scores_of(fov_cases.jpeg(cv2.GaussianBlur(img, (0, 0), s) if s else img))["sharpness"]
             for s in (0, 1, 2, 4)]
    assert all(a > b for a, b in zip(sharp, sharp[1:])), sharp
    assert not any("blurred" in r for r in grade(scores_of(fov_cases.jpeg(img)))[1])
    xx = np.arange(img.shape[1])[None, :, None] / img.shape[1]
    ramp = np.clip((xx - 0.3) / 0.7, 0, 1)  # a shadow creeping in from the right
    ill = [scores_of(fov_cases.jpeg((img * (1 - k * ramp)).astype(np.uint8)))["illumination"] for k in (0.0, 0.4, 0.8)]
    assert all(a < b for a, b in zip(ill, ill[1:])), ill
