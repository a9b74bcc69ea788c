"""Cross-dataset duplicates are found by perceptual hash and named, and can be excluded."""

from __future__ import annotations

import pathlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fixtures_datasets as fx
from fundusfm.data.adapters import read_dataset
from fundusfm.data.cli import overlap_main
from fundusfm.data.overlap import exclusion_list, find_overlaps, hamming_pairs, hash_qc_table


def fake_preprocess(name: str, tmp_path, reject: tuple[str, ...] = ()) -> "pathlib.Path":
    """A minimal QC table + processed images (square resize), standing in for `fundusfm preprocess`."""
    cfg = fx.build(name, tmp_path / "data" / name)
    manifest, _ = read_dataset(name, cfg)
    out = tmp_path / "pre" / name
    (out / "images").mkdir(parents=True)
    rows = []
    for r in manifest.itertuples():
        ok = r.image_id not in reject
        proc = f"images/{r.image_id}.png" if ok else ""
        if ok:
            Image.open(tmp_path / "data" / name / r.path).convert("RGB").resize((64, 64)).save(out / proc)
        rows.append({"image_id": r.image_id, "path": r.path, "status": "ok" if ok else "rejected",
                     "reason": "" if ok else "blurry", "processed_path": proc})
    pd.DataFrame(rows).to_csv(out / "qc.csv", index=False)
    return out / "qc.csv"


def test_hamming_pairs_counts_bits():
    a = np.array([0b1011, 0], dtype=np.uint64)
    b = np.array([0b0011, 0b1111_0000], dtype=np.uint64)
    i, j, d = hamming_pairs(a, b, threshold=2)
    assert sorted(zip(i.tolist(), j.tolist(), d.tolist())) == [(0, 0, 1), (1, 0, 2)]


def test_eyeq_reuse_of_eyepacs_is_caught_with_ids(tmp_path):
    qc = {"eyepacs": fake_preprocess("eyepacs", tmp_path), "eyeq": fake_preprocess("eyeq", tmp_path),
          "aptos2019": fake_preprocess("aptos2019", tmp_path)}
    pairs = find_overlaps(qc, upstream=["eyepacs"], evaluation=["eyeq", "aptos2019"], threshold=4)
    cross = pairs[pairs["kind"] == "cross"]
    found = set(zip(cross["dataset_a"], cross["image_id_a"], cross["dataset_b"], cross["image_id_b"]))
    expected = {("eyepacs", n.rsplit(".", 1)[0], "eyeq", n.rsplit(".", 1)[0]) for n, _, _ in fx.EYEQ_TRAIN + fx.EYEQ_TEST}
    assert found == expected  # every EyeQ image, nothing from APTOS
    ex = exclusion_list(pairs)
    assert set(ex["image_id"]) == {"10_left", "10_right", "13_right", "3_left"} and (ex["dataset"] == "eyepacs").all()
    assert ex["reason"].str.contains("matches eyeq:").all()


def test_near_duplicate_after_reencoding_and_within_set_duplicates(tmp_path):
    qc_a = fake_preprocess("aptos2019", tmp_path)
    qc_g = fake_preprocess("glaucoma_fundus", tmp_path, reject=("normal_control__3",))
    pre = qc_g.parent
    # plant: an APTOS image re-encoded as a lossy JPEG-through-PNG copy in glaucoma_fundus
    src = Image.open(qc_a.parent / "images" / "0083ee8054ee.png")
    src.save(tmp_path / "tmp.jpg", quality=40)
    Image.open(tmp_path / "tmp.jpg").save(pre / "images" / "normal_control__2.png")
    # plant: an exact copy inside the evaluation side
    Image.open(pre / "images" / "advanced_glaucoma__1.png").save(pre / "images" / "early_glaucoma__2.png")
    hashes = pd.concat([hash_qc_table("aptos2019", qc_a), hash_qc_table("glaucoma_fundus", qc_g)])
    assert len(hashes) == len(fx.APTOS_TRAIN) + 5  # the rejected image is not hashed
    pairs = find_overlaps(hashes, ["aptos2019"], ["glaucoma_fundus"], threshold=4)
    cross = pairs[pairs["kind"] == "cross"]
    assert cross[["image_id_a", "image_id_b"]].values.tolist() == [["0083ee8054ee", "normal_control__2"]]
    within = pairs[pairs["kind"] == "within_evaluation"]
    assert within[["image_id_a", "image_id_b"]].values.tolist() == [["advanced_glaucoma__1", "early_glaucoma__2"]]


def test_overlap_cli_writes_pairs_and_exclusions(tmp_path):
    qe, qq = fake_preprocess("eyepacs", tmp_path), fake_preprocess("eyeq", tmp_path)
    out, ex = tmp_path / "overlap.csv", tmp_path / "overlap_exclude.csv"
    rc = overlap_main(["--qc", f"eyepacs={qe}", f"eyeq={qq}", "--upstream", "eyepacs", "--evaluation", "eyeq",
                       "--out", str(out), "--exclude-out", str(ex), "--threshold", "4"])
    assert rc == 0
    pairs = pd.read_csv(out, dtype=str)
    assert (pairs["kind"] == "cross").sum() == 4
    assert sorted(pd.read_csv(ex)["image_id"]) == ["10_left", "10_right", "13_right", "3_left"]


def test_overlap_unknown_dataset(tmp_path):
    with pytest.raises(KeyError, match="nope"):
        find_overlaps(pd.DataFrame({"dataset": ["a"], "image_id": ["x"], "hash": [np.uint64(1)]}), ["a"], ["nope"])
