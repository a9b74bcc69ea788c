"""Synthetic fundus generator: determinism, layout, and that each sign/defect shows."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from fundusfm.synth.adapter import MANIFEST_LABELS, read_manifest
from fundusfm.synth.cli import synth_main
from fundusfm.synth.dataset import LABEL_COLUMNS, make_dataset, parse_prevalence, plan_dataset
from fundusfm.synth.draw import Disease, render_fundus, render_non_fundus, sample_camera


def _dist(truth, shape):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(xx - truth.fov_cx, yy - truth.fov_cy)


def _inside(truth, shape, frac=0.95):
    return _dist(truth, shape) < frac * truth.fov_r


def _lum(img):
    return img.astype(np.float32).mean(axis=2)


# ----------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_pixels_and_truth():
    a, ta = render_fundus((3, 14), Disease(dr_grade=3, amd=True), "L", "shadow")
    b, tb = render_fundus((3, 14), Disease(dr_grade=3, amd=True), "L", "shadow")
    c, _ = render_fundus((3, 15), Disease(dr_grade=3, amd=True), "L", "shadow")
    assert np.array_equal(a, b) and ta == tb
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_seed_sequence_object_can_be_reused():
    ss = np.random.SeedSequence([1, 2])
    assert np.array_equal(render_fundus(ss)[0], render_fundus(ss)[0])


def test_dataset_is_identical_for_any_worker_count(tmp_path):
    kw = dict(n_patients=5, seed=11, defect_rate=0.3, n_non_fundus=1, progress=False)
    one = make_dataset(tmp_path / "w1", workers=1, **kw)
    two = make_dataset(tmp_path / "w2", workers=2, **kw)
    assert (tmp_path / "w1/labels.csv").read_bytes() == (tmp_path / "w2/labels.csv").read_bytes()
    pd.testing.assert_frame_equal(one, two)
    for f in one["file"]:
        assert (tmp_path / "w1" / f).read_bytes() == (tmp_path / "w2" / f).read_bytes()


def test_existing_dataset_is_not_overwritten_silently(tmp_path):
    make_dataset(tmp_path, 1, 0, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_dataset(tmp_path, 1, 0, progress=False)
    make_dataset(tmp_path, 1, 1, overwrite=True, progress=False)


# ----------------------------------------------------------------------------- labels
def test_labels_csv_has_columns_and_two_eyes_per_patient(tmp_path):
    df = make_dataset(tmp_path, 4, 5, prevalence="dr=1", n_non_fundus=2, progress=False)
    disk = pd.read_csv(tmp_path / "labels.csv")
    assert list(disk.columns) == LABEL_COLUMNS
    fundus = disk[disk["defect"] != "non_fundus"]
    eyes = fundus.groupby("patient_id")["eye"].apply(lambda e: "".join(sorted(e)))
    assert (eyes == "LR").all() and len(eyes) == 4
    assert fundus["patient_id"].str.fullmatch(r"P\d{5}").all()
    assert (fundus["abnormal"] == 1 - fundus["normal"]).all()
    assert (fundus["dr_grade"] > 0).any()
    for f in df["file"]:
        assert (tmp_path / f).is_file()
    nf = disk[disk["defect"] == "non_fundus"]
    assert len(nf) == 2
    assert nf[["dr_grade", "glaucoma", "normal", "abnormal", "fov_cx", "fov_r"]].isna().all().all()


def test_patient_dr_grades_differ_by_at_most_one_between_eyes():
    specs = plan_dataset(400, 2, prevalence={"dr": 0.6}, defect_rate=0.0)
    grades = pd.DataFrame({"pid": [s.patient_id for s in specs], "g": [s.disease.dr_grade for s in specs]})
    spread = grades.groupby("pid")["g"].agg(lambda g: g.max() - g.min())
    assert spread.max() <= 1
    assert set(grades["g"]) == {0, 1, 2, 3, 4}


def test_prevalence_is_per_patient_and_configurable():
    specs = plan_dataset(1500, 3, prevalence="dr=0.3,glaucoma=0.0,amd=0.5", defect_rate=0.1)
    by_patient = pd.DataFrame({"pid": [s.patient_id for s in specs],
                               "dr": [s.disease.dr_grade > 0 for s in specs],
                               "glaucoma": [s.disease.glaucoma for s in specs],
                               "amd": [s.disease.amd for s in specs],
                               "defect": [s.defect != "none" for s in specs]})
    per_patient = by_patient.groupby("pid").max()
    assert abs(per_patient["amd"].mean() - 0.5) < 0.05
    # at least one eye of every DR patient is graded >= 1 (the other may be one grade lower)
    assert abs(per_patient["dr"].mean() - 0.3) < 0.05
    assert not per_patient["glaucoma"].any()
    assert abs(by_patient["defect"].mean() - 0.1) < 0.03


@pytest.mark.parametrize("bad", ["cataract=0.1", "dr=1.5", "dr=abc", "dr"])
def test_bad_prevalence_is_rejected_with_its_key(bad):
    with pytest.raises(ValueError, match="dr|cataract"):
        parse_prevalence(bad)


# ----------------------------------------------------------------------------- disease signs
def _pale(img):
    f = img.astype(np.int16)
    return (f[..., 0] > 225) & (f[..., 1] > 190) & (f[..., 2] > 150)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_glaucoma_enlarges_the_pale_cup(seed):
    normal, t = render_fundus(seed, Disease())
    glauc, tg = render_fundus(seed, Disease(glaucoma=True))
    near_disc = np.hypot(*np.mgrid[0 : normal.shape[0], 0 : normal.shape[1]][::-1]
                         - np.array([t.disc_x, t.disc_y])[:, None, None]) < 1.3 * t.disc_r
    assert tg.cup_to_disc > 0.6 > t.cup_to_disc
    assert (_pale(glauc) & near_disc).sum() > 2 * (_pale(normal) & near_disc).sum()


def _red_lesion_pixels(img, base):
    diff = base.astype(np.int16) - img.astype(np.int16)
    # darker, especially in green: haemorrhage / microaneurysm red
    return int(((diff[..., 1] > 12) & (diff.sum(axis=2) > 40)).sum())


@pytest.mark.parametrize("seed", [0, 7])
def test_dr_grade_increases_red_lesion_pixels_monotonically(seed):
    base, _ = render_fundus(seed, Disease(dr_grade=0))
    counts = [_red_lesion_pixels(render_fundus(seed, Disease(dr_grade=g))[0], base) for g in range(5)]
    assert counts[0] == 0
    assert all(b > a for a, b in zip(counts, counts[1:])), counts


def test_advanced_dr_has_bright_exudates():
    base, _ = render_fundus(4, Disease())
    dr3, _ = render_fundus(4, Disease(dr_grade=3))
    brighter = (dr3.astype(np.int16) - base.astype(np.int16)).sum(axis=2) > 120
    assert brighter.sum() > 50


def _changed(a, b, thr=40):
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).sum(axis=2) > thr


@pytest.mark.parametrize("seed", [0, 5])
def test_drusen_cluster_around_the_macula(seed):
    base, t = render_fundus(seed, Disease())
    amd, _ = render_fundus(seed, Disease(amd=True))
    ys, xs = np.nonzero(_changed(amd, base))
    assert len(xs) > 100
    dist = np.hypot(xs - t.fovea_x, ys - t.fovea_y) / t.fov_r
    assert np.median(dist) < 0.3
    # and the yellow drusen are brighter than the retina they cover
    assert amd[ys, xs].astype(int).sum() > base[ys, xs].astype(int).sum()


def test_myopia_tessellates_the_whole_fundus_and_adds_atrophy_at_the_disc():
    base, t = render_fundus(2, Disease())
    myo, _ = render_fundus(2, Disease(myopia=True))
    inside = _inside(t, base.shape, 0.9)
    changed = _changed(myo, base, 30) & inside
    assert changed.sum() > 0.3 * inside.sum()  # tessellation covers the fundus
    # mid-frequency texture (band-pass at the scale of choroidal vessels) grows
    band = lambda im: (cv2.GaussianBlur(_lum(im), (0, 0), 2) - cv2.GaussianBlur(_lum(im), (0, 0), 8))[inside].std()  # noqa: E731
    assert band(myo) > 1.2 * band(base)
    # peripapillary atrophy: pale pixels around the disc
    yy, xx = np.mgrid[0 : base.shape[0], 0 : base.shape[1]]
    ring = (np.hypot(xx - t.disc_x, yy - t.disc_y) > t.disc_r * 1.1) & (
        np.hypot(xx - t.disc_x, yy - t.disc_y) < t.disc_r * 2.2)
    assert (_lum(myo)[ring] > _lum(base)[ring] + 20).sum() > 0.15 * ring.sum()


def test_vein_occlusion_adds_flame_haemorrhages():
    base, t = render_fundus(6, Disease())
    rvo, tr = render_fundus(6, Disease(rvo=True))
    assert _red_lesion_pixels(rvo, base) > 0.004 * np.pi * t.fov_r**2


def test_disc_is_on_the_nasal_side_right_eye_right():
    _, right = render_fundus(8, eye="R")
    _, left = render_fundus(8, eye="L")
    assert right.disc_x > right.fovea_x and left.disc_x < left.fovea_x


# ----------------------------------------------------------------------------- FOV truth
@pytest.mark.parametrize("seed", range(12))
def test_pixels_outside_the_recorded_fov_are_black(seed):
    img, t = render_fundus(seed, Disease(dr_grade=seed % 5), defect=["none", "bright", "uneven"][seed % 3])
    outside = _dist(t, img.shape) > t.fov_r + 0.5
    assert img[outside].max() == 0
    assert img[_inside(t, img.shape)].mean() > 20


def _cut_seed():
    for s in range(200):
        if sample_camera(np.random.default_rng(s)).fov_top is not None:
            return s
    raise AssertionError("no cut-edge camera in 200 seeds")


def test_cut_edge_camera_has_black_rows_beyond_the_cut():
    cam = sample_camera(np.random.default_rng(_cut_seed()))
    img, t = render_fundus(1, camera=cam)
    assert t.fov_top is not None and t.fov_bottom is not None and t.fov_r > img.shape[0] / 2
    assert t.fov_top > 0 and img[: t.fov_top].max() == 0 and img[t.fov_bottom + 1 :].max() == 0
    cx = int(round(t.fov_cx))
    assert img[t.fov_top, cx - 5 : cx + 5].min() > 0  # the cut is a straight bright edge
    assert img[t.fov_bottom, cx - 5 : cx + 5].min() > 0


def test_camera_frames_vary_in_size_and_aspect():
    cams = [sample_camera(np.random.default_rng(s)) for s in range(60)]
    assert len({round(c.width / c.height, 2) for c in cams}) >= 3
    assert min(c.width for c in cams) >= 320 and max(c.width for c in cams) <= 480
    assert any(c.notch_angle is not None for c in cams)
    big = sample_camera(np.random.default_rng(0), scale=2.0)
    assert big.width >= 640


# ----------------------------------------------------------------------------- defects
def _defect_pair(defect, seed=9):
    good, t = render_fundus(seed, Disease())
    bad, _ = render_fundus(seed, Disease(), defect=defect)
    return good, bad, _inside(t, good.shape, 0.9)


def test_blur_lowers_laplacian_variance():
    good, bad, m = _defect_pair("blur")
    lap = lambda im: cv2.Laplacian(_lum(im), cv2.CV_32F)[m].var()  # noqa: E731
    assert lap(bad) < 0.3 * lap(good)


def test_dark_and_bright_move_the_mean_inside_the_fov():
    good, dark, m = _defect_pair("dark")
    _, bright, _ = _defect_pair("bright")
    assert _lum(dark)[m].mean() < 0.5 * _lum(good)[m].mean()
    assert _lum(bright)[m].mean() > 1.5 * _lum(good)[m].mean()


def test_uneven_illumination_spreads_the_low_frequency_brightness():
    good, bad, m = _defect_pair("uneven")
    low = lambda im: cv2.GaussianBlur(_lum(im), (0, 0), 15)[m].std()  # noqa: E731
    assert low(bad) > 1.5 * low(good)


def test_lid_shadow_darkens_a_band_of_rows():
    good, bad, m = _defect_pair("shadow")
    rows = [(_lum(im) * m).sum(1)[m.sum(1) > 20] / m.sum(1)[m.sum(1) > 20] for im in (good, bad)]
    ratio = rows[1] / np.maximum(rows[0], 1)
    assert ratio.min() < 0.4 and ratio.max() > 0.9  # some rows shadowed, others not


def test_non_fundus_images_have_no_fov_truth():
    for kind in ("scene", "document"):
        img, t = render_non_fundus(4, kind)
        assert t.kind == "non_fundus" and t.fov_r is None and t.disease is None and t.eye == "U"
        corners = img[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.max() > 30  # no black camera frame
    with pytest.raises(ValueError, match="kind"):
        render_non_fundus(0, "cat")


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="eye"):
        render_fundus(0, eye="X")
    with pytest.raises(ValueError, match="defect"):
        render_fundus(0, defect="smudge")
    with pytest.raises(ValueError, match="dr_grade"):
        Disease(dr_grade=5)


# ----------------------------------------------------------------------------- adapter, CLI
def test_read_manifest_follows_the_manifest_contract(tmp_path):
    make_dataset(tmp_path, 3, 1, n_non_fundus=1, progress=False)
    m = read_manifest(tmp_path, "synthA")
    assert list(m.columns[:6]) == ["image_id", "path", "patient_id", "eye", "split", "dataset"]
    assert list(m.columns[6:-1]) == MANIFEST_LABELS and m.columns[-1] == "source_label"
    assert (m["split"] == "").all() and (m["dataset"] == "synthA").all()
    assert all((tmp_path / p).is_file() for p in m["path"])
    nf = m[m["image_id"].str.startswith("X")]
    assert len(nf) == 1 and nf[MANIFEST_LABELS].isna().all().all() and nf["eye"].iloc[0] == "U"
    assert str(m["dr_grade"].dtype) == "Int64"


def test_read_manifest_names_missing_images_and_bad_labels(tmp_path):
    make_dataset(tmp_path, 2, 1, progress=False)
    (tmp_path / "images/P00001_L.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="P00001_L"):
        read_manifest(tmp_path, "d")
    make_dataset(tmp_path, 2, 1, overwrite=True, progress=False)
    df = pd.read_csv(tmp_path / "labels.csv")
    df.loc[2, "glaucoma"] = 7
    df.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(ValueError, match=r"line 4 .*glaucoma"):
        read_manifest(tmp_path, "d")
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        read_manifest(tmp_path / "nowhere", "d")


def test_cli_writes_dataset_and_prints_counts(tmp_path, capsys):
    rc = synth_main(["--out", str(tmp_path), "--patients", "2", "--seed", "3", "--non-fundus", "1",
                     "--prevalence", "dr=1", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "images=5" in out and "non_fundus=1" in out
    assert len(pd.read_csv(tmp_path / "labels.csv")) == 5
    assert synth_main(["--out", str(tmp_path / "b"), "--patients", "1", "--seed", "0",
                       "--prevalence", "flu=0.2"]) == 2
