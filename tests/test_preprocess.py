"""The preprocess stage end to end: bad-input corpus, QC table, CLI, manifest, re-runs."""

import json
import struct
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from fundusfm.preprocess.cli import preprocess_main as main
from fundusfm.preprocess.gallery import make_gallery
from fundusfm.preprocess.pipeline import QC_COLUMNS, PreprocessSpec, TooManyRejects, preprocess_many, process_image


def fundus_on_frame(w=800, h=560, diam=520, dx=0, dy=0):
    src = Image.fromarray(data.retina()).resize((diam, diam), Image.LANCZOS)
    im = Image.new("RGB", (w, h))
    im.paste(src, ((w - diam) // 2 + dx, (h - diam) // 2 + dy))
    return im


def png_bomb(path: Path, w=100_000, h=100_000):
    """A tiny PNG whose header claims w x h pixels (decompression bomb)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Every kind of input listed in the issue, with the status it must get."""
    d = tmp_path_factory.mktemp("corpus")
    good = fundus_on_frame()
    cases = {}

    def add(name, status):
        cases[name] = (str(d / name), status)

    good.save(d / "good.jpg", quality=92); add("good.jpg", "ok")
    raw = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(raw[: len(raw) // 3]); add("truncated.jpg", "error")
    corrupt = bytearray(raw); corrupt[200:4000] = b"\x00" * 3800
    (d / "corrupt.jpg").write_bytes(bytes(corrupt[:600])); add("corrupt.jpg", "error")
    (d / "empty.jpg").write_bytes(b""); add("empty.jpg", "error")
    (d / "notimage.png").write_text("this is a text file, not a PNG\n" * 20); add("notimage.png", "error")
    # monochrome (red-free) photographs are rejected by default (preprocess.monochrome)
    good.convert("L").save(d / "gray.png"); add("gray.png", "rejected")
    a16 = (np.asarray(good.convert("L")).astype(np.uint16) * 257)
    Image.fromarray(a16).save(d / "sixteen.png"); add("sixteen.png", "rejected")
    rgba = good.convert("RGBA"); rgba.save(d / "rgba.png"); add("rgba.png", "ok")
    good.convert("CMYK").save(d / "cmyk.jpg", quality=92); add("cmyk.jpg", "ok")
    rot = good.rotate(90, expand=True)  # stored rotated; EXIF says rotate back
    exif = Image.Exif(); exif[0x0112] = 8
    rot.save(d / "exif_rotated.jpg", quality=92, exif=exif); add("exif_rotated.jpg", "ok")
    good.resize((40, 28)).save(d / "tiny.png"); add("tiny.png", "rejected")
    png_bomb(d / "bomb.png"); add("bomb.png", "error")
    Image.fromarray(data.astronaut()).save(d / "astronaut.jpg"); add("astronaut.jpg", "rejected")
    Image.fromarray(data.coffee()).save(d / "coffee.jpg"); add("coffee.jpg", "rejected")
    cases["missing.jpg"] = (str(d / "missing.jpg"), "error")
    return d, cases


def test_bad_input_corpus_gives_one_row_each_with_right_status(corpus, tmp_path):
    d, cases = corpus
    inputs = [(Path(n).stem, p) for n, (p, _) in cases.items()]
    qc = preprocess_many(inputs, tmp_path / "out", PreprocessSpec(size=128), progress=False)
    assert list(qc.columns) == QC_COLUMNS
    assert len(qc) == len(cases) and list(qc["image_id"]) == [i for i, _ in inputs]
    got = dict(zip(qc["image_id"], qc["status"]))
    want = {Path(n).stem: s for n, (_, s) in cases.items()}
    assert got == want, qc[["image_id", "status", "reason"]].to_string()
    bad = qc[qc["status"] != "ok"]
    assert (bad["reason"].str.len() > 0).all()
    assert "decompression-bomb" in qc.set_index("image_id").loc["bomb", "reason"]
    assert "no field of view" in qc.set_index("image_id").loc["astronaut", "reason"]
    ok = qc[qc["status"] == "ok"]
    for rel in ok["processed_path"]:
        im = Image.open(tmp_path / "out" / rel)
        assert im.size == (128, 128) and im.mode == "RGB"
    assert (qc.loc[qc["status"] != "ok", "processed_path"].fillna("") == "").all()
    on_disk = pd.read_csv(tmp_path / "out" / "qc.csv", dtype={"image_id": str})
    assert len(on_disk) == len(cases)


def test_exif_rotated_image_is_reported_in_upright_coordinates(corpus):
    d, cases = corpus
    row, img = process_image(cases["exif_rotated.jpg"][0], PreprocessSpec(size=64))
    ref, _ = process_image(cases["good.jpg"][0], PreprocessSpec(size=64))
    assert (row["width"], row["height"]) == (800, 560)
    assert row["fov_cx"] == pytest.approx(ref["fov_cx"], abs=2.0)
    assert row["fov_cy"] == pytest.approx(ref["fov_cy"], abs=2.0)


def test_processed_image_is_centred_masked_square(tmp_path):
    fundus_on_frame(dx=90, dy=-20).save(tmp_path / "a.jpg", quality=95)
    row, img = process_image(tmp_path / "a.jpg", PreprocessSpec(size=256))
    assert row["status"] == "ok" and img.shape == (256, 256, 3)
    assert img[:8, :8].max() == 0 and img[-8:, -8:].max() == 0  # corners outside the FOV
    lit = img.max(2) > 20
    ys, xs = np.nonzero(lit)
    assert abs(xs.mean() - 127.5) < 4 and abs(ys.mean() - 127.5) < 4
    assert xs.min() <= 4 and xs.max() >= 251  # FOV fills the square


@pytest.mark.parametrize("method", ["ben_graham", "clahe"])
def test_normalisations_change_pixels_inside_fov_only(tmp_path, method):
    fundus_on_frame().save(tmp_path / "a.jpg", quality=95)
    _, base = process_image(tmp_path / "a.jpg", PreprocessSpec(size=128))
    _, norm = process_image(tmp_path / "a.jpg", PreprocessSpec(size=128, normalise=method))
    assert norm.shape == base.shape and not np.array_equal(norm, base)
    assert norm[:4, :4].max() == 0


def test_spec_roundtrips_through_json():
    spec = PreprocessSpec(size=384, normalise="clahe", format="jpg")
    again = PreprocessSpec.from_dict(json.loads(json.dumps(asdict(spec))))
    assert again == spec and again.key() == spec.key()
    with pytest.raises(ValueError, match="unknown preprocessing spec key"):
        PreprocessSpec.from_dict({"size": 512, "colour": "x"})
    with pytest.raises(ValueError, match="normalise"):
        PreprocessSpec(normalise="zscore")


def test_reject_fraction_fails_after_writing_qc(corpus, tmp_path):
    d, cases = corpus
    inputs = [(Path(n).stem, p) for n, (p, _) in cases.items()]
    with pytest.raises(TooManyRejects, match=r"\d+ of \d+ images .*qc.csv"):
        preprocess_many(inputs, tmp_path / "o", PreprocessSpec(size=64), max_reject_fraction=0.2, progress=False)
    assert len(pd.read_csv(tmp_path / "o" / "qc.csv")) == len(cases)


def test_rerun_with_same_settings_reuses_results(tmp_path, monkeypatch):
    fundus_on_frame().save(tmp_path / "a.jpg", quality=95)
    inputs = [("a", str(tmp_path / "a.jpg"))]
    first = preprocess_many(inputs, tmp_path / "o", PreprocessSpec(size=64), progress=False)
    import fundusfm.preprocess.pipeline as pl

    def boom(*a, **k):
        raise AssertionError("re-processed although nothing changed")
    monkeypatch.setattr(pl, "process_image", boom)
    again = preprocess_many(inputs, tmp_path / "o", PreprocessSpec(size=64), progress=False)
    pd.testing.assert_frame_equal(first, again)
    monkeypatch.undo()
    other = preprocess_many(inputs, tmp_path / "o", PreprocessSpec(size=96), progress=False)  # new settings
    assert Image.open(tmp_path / "o" / other.loc[0, "processed_path"]).size == (96, 96)


def test_duplicate_image_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="duplicate image_id 'x'"):
        preprocess_many([("x", "a.jpg"), ("x", "b.jpg")], tmp_path, progress=False)


def test_cli_on_folder_writes_qc_and_gallery(corpus, tmp_path):
    d, cases = corpus
    out = tmp_path / "out"
    rc = main([str(d), "--out", str(out), "--size", "64", "--format", "jpg", "--workers", "2",
               "--gallery", str(out / "gallery.png"), "--no-progress",
               "--thresholds", json.dumps({"usable_min_sharpness": 0.15})])
    assert rc == 0
    qc = pd.read_csv(out / "qc.csv")
    on_disk = [n for n in cases if (d / n).exists()]
    assert len(qc) == len(on_disk)
    assert Image.open(out / "gallery.png").size[0] > 0
    assert json.loads((out / "preprocess_spec.json").read_text())["thresholds"]["usable_min_sharpness"] == 0.15


def test_cli_manifest_mode_names_missing_files(tmp_path):
    root = tmp_path / "ds"
    (root / "img").mkdir(parents=True)
    fundus_on_frame().save(root / "img" / "p1.jpg", quality=95)
    man = tmp_path / "m.csv"
    pd.DataFrame({"image_id": ["p1", "p2"], "path": ["img/p1.jpg", "img/p2.jpg"], "patient_id": ["1", "2"]}).to_csv(man, index=False)
    rc = main(["--manifest", str(man), "--root", str(root), "--out", str(tmp_path / "o"), "--size", "64",
               "--no-progress", "--max-reject-fraction", "0.6"])
    assert rc == 0
    qc = pd.read_csv(tmp_path / "o" / "qc.csv", keep_default_na=False).set_index("image_id")
    assert qc.loc["p1", "status"] == "ok" and qc.loc["p1", "processed_path"] == "images/p1.jpg"
    assert qc.loc["p2", "status"] == "error" and "p2.jpg" in qc.loc["p2", "reason"]
    rc = main(["--manifest", str(man), "--root", str(root), "--out", str(tmp_path / "o"), "--size", "64",
               "--no-progress", "--max-reject-fraction", "0.4"])
    assert rc == 1


def test_gallery_groups_by_reason(tmp_path):
    qc = pd.DataFrame([
        dict(image_id="a", path="nowhere.jpg", status="error", reason="x: empty file", quality=""),
        dict(image_id="b", path="nowhere2.jpg", status="rejected", reason="blurred (sharpness 0.05 < 0.11)", quality="reject"),
        dict(image_id="c", path="n3.jpg", status="ok", reason="", quality="good"),
    ])
    out = make_gallery(qc, tmp_path / "g.png", tile=64)
    assert Image.open(out).size[1] >= 2 * 64


def test_reduced_jpeg_decode_matches_pillow_and_reduces_odd_sizes(tmp_path):
    from fundusfm.preprocess.io import read_image

    fundus_on_frame(w=1411, h=1001, diam=900).save(tmp_path / "odd.jpg", quality=95)
    dec = read_image(tmp_path / "odd.jpg", min_side=200)  # 1/4 keeps the short side >= 200
    assert dec.image.shape == (251, 353, 3) and (dec.width, dec.height) == (1411, 1001)
    assert dec.scale == pytest.approx(1411 / 353)
    with Image.open(tmp_path / "odd.jpg") as im:  # Pillow's own DCT-scaled decode
        im.draft("RGB", (1411 // 4, 1001 // 4))
        ref = np.asarray(im.convert("RGB"))
    assert ref.shape == dec.image.shape
    assert np.abs(ref.astype(int) - dec.image).max() <= 1


@pytest.mark.parametrize("diam", [300, 900])  # reduction < 2 (one warp) and >= 2 (box + warp)
def test_crop_resize_centres_a_subpixel_disc(diam):
    from fundusfm.preprocess import crop
    from fundusfm.preprocess.fov import FOV

    h, w, cx, cy, r = 1000, 1200, 611.3, 497.8, diam / 2
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (np.clip(r - np.hypot(xx - cx, yy - cy) + 0.5, 0, 1) * 200).astype(np.uint8)
    img = np.dstack([disc] * 3)
    out = crop.crop_resize(img, FOV(True, cx, cy, r), 256)[..., 0].astype(float)
    ys, xs = np.mgrid[0:256, 0:256]
    m = out.sum()
    assert (xs * out).sum() / m == pytest.approx(127.5, abs=0.15)
    assert (ys * out).sum() / m == pytest.approx(127.5, abs=0.15)
    assert m / 200 == pytest.approx(np.pi * 128 ** 2, rel=0.01)  # the disc fills the square


def test_hard_cases_are_kept_and_rejects_shown_in_gallery(tmp_path):
    """The issue-15 development set through the stage: every hard real-photo case is kept
    (the rectangular one through the bright-region fallback, recorded in fov_method), a
    heavily blurred photo and non-fundus frames are rejected, and the gallery has one row
    per fallback / reject reason."""
    import cv2

    import fov_cases
    from fundusfm.preprocess.gallery import reason_group

    paths = []
    for name in fov_cases.CASES:
        img, _ = fov_cases.make_case(name, 400)
        p = tmp_path / f"{name}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append((name, str(p)))
    frame = np.asarray(fundus_on_frame(1024, 1024, 980))
    Image.fromarray(cv2.GaussianBlur(frame, (0, 0), 25)).save(tmp_path / "blur25.jpg", quality=90)
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.jpg")
    Image.fromarray(np.full((500, 700, 3), 252, np.uint8)).save(tmp_path / "blank.png")
    paths += [(n, str(tmp_path / f)) for n, f in (("blur25", "blur25.jpg"), ("coffee", "coffee.jpg"),
                                                   ("blank", "blank.png"))]
    qc = preprocess_many(paths, tmp_path / "out", progress=False).set_index("image_id")
    for name in fov_cases.CASES:
        assert qc.loc[name, "status"] == "ok", (name, qc.loc[name, "reason"])
    assert qc.loc["rectangle", "fov_method"] == "mask"
    assert "bright region" in qc.loc["rectangle", "reason"]
    assert (qc.loc[["vignetted", "underexposed", "inscribed", "window"], "fov_method"] == "circle").all()
    assert qc.loc["window", "fov_left"] > 0 and qc.loc["window", "fov_right"] < 400
    assert qc.loc["blur25", "status"] == "rejected" and "blurred" in qc.loc["blur25", "reason"]
    for n in ("coffee", "blank"):
        assert qc.loc[n, "status"] == "rejected" and qc.loc[n, "reason"].startswith("no field of view")
    groups = {reason_group(r) for r in qc.reset_index().to_dict("records")}
    fallback = ": fallback: bright-region mask, circle through the visible rim arcs"
    assert any(g.endswith(fallback) for g in groups), groups
    assert any(g.startswith("rejected: blurred") for g in groups)
    assert any(g.startswith("rejected: no field of view: ") for g in groups)
    out = make_gallery(qc.reset_index(), tmp_path / "g.png", tile=64)
    assert Image.open(out).size[1] >= 3 * 64


def test_fov_fallback_can_be_switched_off(tmp_path):
    import fov_cases

    img, _ = fov_cases.make_case("rectangle", 400)
    p = tmp_path / "rect.jpg"
    Image.fromarray(img).save(p, quality=90)
    row, out = process_image(p, PreprocessSpec())
    assert row["status"] == "ok" and row["fov_method"] == "mask" and out is not None
    # the crop is the bounding box's square: the 4:3 frame fills the width
    assert out[:, 5].max() > 0 and out[5, :].max() == 0
    assert main([str(p), "--out", str(tmp_path / "o"), "--no-fov-fallback", "--no-progress"]) == 0
    qc = pd.read_csv(tmp_path / "o" / "qc.csv")
    assert qc.loc[0, "status"] == "rejected" and qc.loc[0, "reason"].startswith("no field of view")
