"""Inputs taken for what they are and cached files proved (issue 23): monochrome
(red-free) photographs, transparency, formula-like names, one suffix list for predict and
preprocess, bounded decoding, a QC cache keyed on content and processed images checked
against their recorded digest when training reads them."""

from __future__ import annotations

import ast
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).parent))
from test_preprocess import fundus_on_frame  # noqa: E402

from fundusfm.preprocess.cli import preprocess_main  # noqa: E402
from fundusfm.preprocess.io import ImageReadError, read_image  # noqa: E402
from fundusfm.preprocess.pipeline import PreprocessSpec, preprocess_many, process_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FORMULA = ("=", "+", "-", "@")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    good = fundus_on_frame()
    good.save(d / "colour.jpg", quality=92)
    good.convert("L").save(d / "grey.png")  # a red-free photograph stored as grey-scale
    g = np.asarray(good)[..., 1]
    Image.fromarray(np.stack([np.zeros_like(g), g, np.zeros_like(g)], -1)).save(d / "green_only.png")
    grey_rgb = good.convert("L").convert("RGB")
    grey_rgb.save(d / "grey_rgb.jpg", quality=92)  # red = green = blue, JPEG-rounded
    rgba = good.convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:40, :, 3] = 0  # a transparent band at the top
    Image.fromarray(a, "RGBA").save(d / "transparent.png")
    good.save(d / "colour.gif")
    return d


@pytest.mark.parametrize("name", ["grey.png", "green_only.png", "grey_rgb.jpg"])
def test_monochrome_photographs_are_rejected_with_their_own_reason(photos, name):
    row, img = process_image(photos / name, PreprocessSpec(size=128))
    assert row["status"] == "rejected" and img is None
    assert row["reason"].startswith("monochrome photograph") and "preprocess.monochrome: keep" in row["reason"]


def test_monochrome_photographs_are_kept_where_the_config_expects_them(photos):
    row, img = process_image(photos / "grey.png", PreprocessSpec(size=128, monochrome="keep"))
    assert row["status"] == "ok" and img is not None and "monochrome photograph" in row["reason"]
    row, _ = process_image(photos / "colour.jpg", PreprocessSpec(size=128))
    assert row["status"] == "ok" and "monochrome" not in row["reason"]


def test_transparency_is_flattened_with_a_reason_or_refused(photos, caplog):
    row, img = process_image(photos / "transparent.png", PreprocessSpec(size=128))
    assert row["status"] == "ok" and "transparency flattened onto black" in row["reason"]
    assert "transparent pixels flattened" in caplog.text
    row, img = process_image(photos / "transparent.png", PreprocessSpec(size=128, alpha="refuse"))
    assert row["status"] == "rejected" and "preprocess.alpha: refuse" in row["reason"] and img is None


@pytest.mark.slow
def test_one_suffix_list_a_gif_is_an_error_row_in_preprocess_and_predict(photos, tmp_path):
    qc = preprocess_many([("g", str(photos / "colour.gif"))], tmp_path / "out", PreprocessSpec(size=128),
                         progress=False)
    assert qc.loc[0, "status"] == "error" and "'.gif' files are not read as photographs" in qc.loc[0, "reason"]
    from test_release import make_release

    from fundusfm.release.cli import predict_main

    (tmp_path / "rel").mkdir()
    release = make_release(tmp_path / "rel", "timm")
    out = tmp_path / "p.csv"
    assert predict_main([str(photos / "colour.gif"), str(photos / "grey.png"), "--model", str(release), "--out",
                         str(out), "--no-progress"]) == 0
    rows = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert rows.loc[str(photos / "colour.gif"), "status"] == "error"
    assert "'.gif' files are not read as photographs" in rows.loc[str(photos / "colour.gif"), "reason"]
    grey = rows.loc[str(photos / "grey.png")]
    assert grey["status"] == "rejected" and grey["reason"].startswith("monochrome")  # never prob 1.000
    assert grey["prob_abnormal"] == ""


def test_a_formula_file_name_is_neutralised_in_every_table(photos, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.open(photos / "colour.jpg").save(src / "=cmd|calc.jpg", quality=92)
    Image.open(photos / "colour.jpg").save(src / "@SUM(A1).jpg", quality=92)
    assert preprocess_main([str(src), "--out", str(tmp_path / "out"), "--size", "64", "--no-progress"]) == 0
    qc = pd.read_csv(tmp_path / "out" / "qc.csv", dtype=str, keep_default_na=False)
    cells = [v for v in qc.to_numpy().ravel() if isinstance(v, str)]
    assert not [v for v in cells if v.startswith(FORMULA)], qc.to_string()
    assert set(qc["image_id"]) == {"'=cmd|calc", "'@SUM(A1)"}  # shown as text by a spreadsheet
    assert (qc["status"] == "ok").all()
    for rel in qc["processed_path"]:
        assert (tmp_path / "out" / rel).is_file()  # the neutralised id still names its file


def test_neutralised_paths_still_name_the_same_file(tmp_path):
    from fundusfm.fileio import neutralise_cell, write_csv

    df = pd.DataFrame({"image_id": ["=a", "-1.5", "b", "+x"], "path": ["=a.jpg", "x/-b.png", "-c.jpg", "/abs/=d"],
                       "n": [-1, 2, 3, 4]})
    write_csv(tmp_path / "t.csv", df)
    back = pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False)
    assert list(back["image_id"]) == ["'=a", "-1.5", "b", "'+x"]
    assert list(back["path"]) == ["./=a.jpg", "x/-b.png", "./-c.jpg", "/abs/=d"]
    assert list(back["n"]) == ["-1", "2", "3", "4"]
    assert neutralise_cell(neutralise_cell("=x")) == "'=x"  # idempotent


def test_every_table_is_written_through_the_neutralising_writer():
    """No module writes a CSV past fundusfm.fileio (``DataFrame.to_csv`` elsewhere would
    skip the neutralisation)."""
    offenders = []
    for path in (REPO / "src" / "fundusfm").rglob("*.py"):
        if path.name == "fileio.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "to_csv":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def _bmp_pair(d: Path) -> tuple[Path, Path]:
    """Two BMPs of equal size in bytes: a colour photograph and a grey one."""
    good = fundus_on_frame()
    good.save(d / "a.bmp")
    good.convert("L").convert("RGB").save(d / "b.bmp")
    assert (d / "a.bmp").stat().st_size == (d / "b.bmp").stat().st_size
    return d / "a.bmp", d / "b.bmp"


def test_a_raw_image_replaced_with_the_same_size_and_mtime_is_redone(tmp_path):
    a, b = _bmp_pair(tmp_path)
    spec = PreprocessSpec(size=64)
    target = tmp_path / "photo.bmp"
    target.write_bytes(a.read_bytes())
    st = target.stat()
    first = preprocess_many([("x", str(target))], tmp_path / "out", spec, progress=False)
    assert first.loc[0, "status"] == "ok"
    target.write_bytes(b.read_bytes())  # replaced in place: same size, time stamp restored
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    second = preprocess_many([("x", str(target))], tmp_path / "out", spec, progress=False)
    assert second.loc[0, "status"] == "rejected" and second.loc[0, "reason"].startswith("monochrome")
    assert not (tmp_path / "out" / "images" / "x.jpg").exists()  # its old processed copy is gone


def test_processed_images_carry_their_digest_and_a_replaced_one_is_redone(photos, tmp_path):
    from fundusfm.hashing import fast_digest_file

    qc = preprocess_many([("c", str(photos / "colour.jpg"))], tmp_path / "out", PreprocessSpec(size=64),
                         progress=False)
    out = tmp_path / "out" / qc.loc[0, "processed_path"]
    assert qc.loc[0, "processed_xxh3"] == fast_digest_file(out)
    out.write_text("not an image any more\n")
    again = preprocess_many([("c", str(photos / "colour.jpg"))], tmp_path / "out", PreprocessSpec(size=64),
                            progress=False)
    assert fast_digest_file(out) == again.loc[0, "processed_xxh3"] == qc.loc[0, "processed_xxh3"]


@pytest.mark.slow
def test_a_processed_image_replaced_by_text_is_refused_when_training_reads_it(tmp_path, capsys):
    """The task table carries each processed image's digest (image_xxh3, from the QC
    table); a file replaced after preprocessing stops training with one line naming it."""
    import torch

    from test_train_helpers import BINARY_TASK, make_task_table, tiny_hparams

    from fundusfm.hashing import fast_digest_file
    from fundusfm.train.cli import train_main

    torch.set_num_threads(1)
    table = make_task_table(tmp_path, n=24, n_external=0)
    df = pd.read_csv(table)
    df["image_xxh3"] = [fast_digest_file(p) for p in df["image"]]
    df.to_csv(table, index=False)
    victim = df.loc[df["fold0"] == "train", "image"].iloc[3]
    Path(victim).write_text("this was a processed image\n")
    rc = train_main(["--table", str(table), "--fold", "0", "--seed", "0", "--task-json", BINARY_TASK, "--init",
                     "random", "--hparams-json", tiny_hparams(epochs=1), "--gpus", "0", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert victim in err[0] and "not the file preprocessing wrote" in err[0] and "snakemake --forcerun preprocess" in err[0]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def _png_header(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims w x h pixels (the pixels are never read)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def test_large_images_decode_bounded(tmp_path):
    """A 12000x12000 PNG (under the 150 MP bomb guard) is refused from its header by the
    lower decode limit; a JPEG of that size decodes DCT-scaled within it."""
    _png_header(tmp_path / "big.png", 12000, 12000)
    with pytest.raises(ImageReadError, match="decodes at full size to 144 MP, more than max_decode_pixels 40 MP"):
        read_image(tmp_path / "big.png", min_side=512, max_decode_pixels=40_000_000)
    row, _ = process_image(tmp_path / "big.png", PreprocessSpec(size=128))
    assert row["status"] == "error" and "preprocess.max_decode_pixels" in row["reason"]
    Image.fromarray(np.zeros((12000, 12000, 3), np.uint8)).save(tmp_path / "big.jpg", quality=50)
    dec = read_image(tmp_path / "big.jpg", min_side=512, max_decode_pixels=40_000_000)
    assert dec.image.shape == (1500, 1500, 3) and (dec.width, dec.height) == (12000, 12000)
