"""`fundusfm split`: manifests + QC tables -> a leak-checked task table."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fundusfm.data.cli import split_main


def write_dataset(tmp_path, name, n_patients=20, qc_status=None):
    rows = []
    for p in range(n_patients):
        for eye in "LR":
            rows.append(dict(image_id=f"{name}{p:02d}{eye}", path=f"images/{p}{eye}.jpg", patient_id=f"P{p}",
                             eye=eye, split="", dataset=name, dr_grade=p % 5, glaucoma=int(p % 3 == 0),
                             abnormal=int(p % 5 > 0 or p % 3 == 0)))
    man = pd.DataFrame(rows)
    man_path = tmp_path / f"{name}.csv"
    man.to_csv(man_path, index=False)
    qc = pd.DataFrame({"image_id": man["image_id"], "status": "ok", "reason": "",
                       "processed_path": "images/" + man["image_id"] + ".png"})
    for image_id, status in (qc_status or {}).items():
        qc.loc[qc.image_id == image_id, ["status", "processed_path"]] = [status, ""]
    qc_path = tmp_path / f"{name}_qc.csv"
    qc.to_csv(qc_path, index=False)
    return man_path, qc_path


def run(tmp_path, task, datasets, extra=("--no-near-duplicates",)):
    args = ["--task-json", json.dumps(task), "--out", str(tmp_path / "task.csv"), *extra, "--manifest"]
    args += [f"{d}={tmp_path / f'{d}.csv'}" for d in datasets] + ["--qc"]
    args += [f"{d}={tmp_path / f'{d}_qc.csv'}" for d in datasets] + ["--preprocessed"]
    args += [f"{d}={tmp_path / 'pre' / d}" if (tmp_path / "pre" / d).is_dir() else f"{d}=results/preprocessed/{d}"
             for d in datasets]
    assert split_main(args) == 0
    return pd.read_csv(tmp_path / "task.csv", dtype={"image_id": str, "patient_id": str}, keep_default_na=False)


def test_multilabel_task_derives_dr_from_grade_and_keeps_qc_failures_as_excluded(tmp_path):
    write_dataset(tmp_path, "dev", qc_status={"dev03L": "rejected"})
    write_dataset(tmp_path, "ext", n_patients=5)
    task = {"name": "t", "type": "multilabel", "labels": ["dr", "glaucoma"], "datasets": ["dev"],
            "external": ["ext"], "split": {"strategy": "kfold", "folds": 4}}
    table = run(tmp_path, task, ["dev", "ext"])
    assert len(table) == 50  # every image of both datasets, none dropped
    row = table.set_index("image_id").loc["dev03L"]
    assert row["fold0"] == "excluded" and row["exclude_reason"] == "qc:rejected" and row["image"] == ""
    assert (table.loc[table.dataset == "ext", "fold0"] == "external").all()
    dev = table[table.dataset == "dev"]
    man = pd.read_csv(tmp_path / "dev.csv")
    expected = (man.set_index("image_id")["dr_grade"] >= 1).astype(int)
    assert (dev.set_index("image_id")["dr"].astype(int) == expected.loc[dev.image_id]).all()
    ok = table[table.image_id == "dev00L"].iloc[0]
    assert ok["image"] == "results/preprocessed/dev/images/dev00L.png"


def test_missing_qc_row_and_out_of_range_class_are_named(tmp_path):
    man_path, qc_path = write_dataset(tmp_path, "dev")
    qc = pd.read_csv(qc_path)
    qc[qc.image_id != "dev05R"].to_csv(qc_path, index=False)
    task = {"name": "g", "type": "ordinal", "label": "dr_grade", "classes": ["0", "1", "2"], "datasets": ["dev"]}
    with pytest.raises(SystemExit, match="dev05R"):
        run(tmp_path, task, ["dev"])
    write_dataset(tmp_path, "dev")
    with pytest.raises(SystemExit, match=r"dev/dev03L has dr_grade=3.*outside classes 0..2"):
        run(tmp_path, task, ["dev"])


# -- near-duplicates ------------------------------------------------------------------------
# A real fundus photograph (skimage.data.retina) stands in for the planted eye; the other
# images are smooth random textures (pHashes far apart from each other and from it).

def _texture(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def _retina(size: int = 64) -> np.ndarray:
    from skimage import data
    return np.asarray(Image.fromarray(data.retina()).resize((size, size), Image.BILINEAR))


def write_processed(tmp_path, name, images: dict, labels: dict, patient_ids: dict | None = None):
    """Manifest, QC table and processed PNGs of one dataset (``images``: image_id -> array)."""
    out = tmp_path / "pre" / name
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, qc = [], []
    for image_id, arr in images.items():
        Image.fromarray(arr).save(out / "images" / f"{image_id}.png")
        pid = (patient_ids or {}).get(image_id, image_id)  # no ids: one patient per image (adapter fallback)
        rows.append(dict(image_id=image_id, path=f"{image_id}.jpg", patient_id=pid, eye="U", split="",
                         dataset=name, glaucoma=labels[image_id]))
        qc.append(dict(image_id=image_id, status="ok", reason="", processed_path=f"images/{image_id}.png"))
    pd.DataFrame(rows).to_csv(tmp_path / f"{name}.csv", index=False)
    pd.DataFrame(qc).to_csv(out / "qc.csv", index=False)
    pd.DataFrame(qc).to_csv(tmp_path / f"{name}_qc.csv", index=False)


def _reencoded(arr: np.ndarray, tmp_path) -> np.ndarray:
    """The same photograph again: brighter by 4 levels and through a quality-60 JPEG."""
    Image.fromarray(np.clip(arr.astype(int) + 4, 0, 255).astype(np.uint8)).save(tmp_path / "copy.jpg", quality=60)
    return np.asarray(Image.open(tmp_path / "copy.jpg").convert("RGB"))


def test_near_duplicates_without_patient_ids_share_a_split_group(tmp_path):
    """Issue 13 item 5: a dataset without patient ids, two photos of one eye."""
    images = {f"img{k:02d}": _texture(k) for k in range(18)}
    images["eyeA_1"] = _retina()
    images["eyeA_2"] = _reencoded(images["eyeA_1"], tmp_path)
    labels = {k: int(i % 2) for i, k in enumerate(images)}
    labels["eyeA_1"] = labels["eyeA_2"] = 1
    write_processed(tmp_path, "nopid", images, labels)
    task = {"name": "g", "type": "binary", "label": "glaucoma", "classes": ["no", "yes"], "datasets": ["nopid"],
            "split": {"strategy": "kfold", "folds": 5, "seed": 0}}
    table = run(tmp_path, task, ["nopid"], extra=()).set_index("image_id")
    a, b = table.loc["eyeA_1"], table.loc["eyeA_2"]
    assert a["split_group"] == b["split_group"] and a["group_source"] == "near-duplicate cluster"
    for k in range(5):
        assert a[f"fold{k}"] == b[f"fold{k}"]  # always on the same side
    others = table.drop(["eyeA_1", "eyeA_2"])
    assert (others["group_source"] == "image").all() and others["split_group"].is_unique


def test_same_photo_under_two_patient_ids_is_merged(tmp_path):
    images = {f"p{k:02d}": _texture(100 + k) for k in range(16)}
    images["dup_a"] = _retina()
    images["dup_b"] = _reencoded(images["dup_a"], tmp_path)
    ids = {k: f"P{k}" for k in images}
    write_processed(tmp_path, "dev", images, {k: i % 2 for i, k in enumerate(images)}, ids)
    task = {"name": "g", "type": "binary", "label": "glaucoma", "classes": ["no", "yes"], "datasets": ["dev"],
            "split": {"strategy": "kfold", "folds": 4, "seed": 0}}
    table = run(tmp_path, task, ["dev"], extra=()).set_index("image_id")
    assert table.loc["dup_a", "split_group"] == table.loc["dup_b", "split_group"] == "dev/Pdup_a"
    assert table.loc["dup_b", "group_source"] == "near-duplicate cluster + patient_id"
    assert table.loc["p00", "group_source"] == "patient_id"


def test_development_external_near_duplicate_is_excluded_and_listed(tmp_path):
    dev = {f"d{k:02d}": _texture(200 + k) for k in range(12)}
    dev["shared"] = _retina()
    dev["d00_again"] = _reencoded(dev["d00"], tmp_path)  # a near-duplicate pair inside the development data
    write_processed(tmp_path, "dev", dev, {k: i % 2 for i, k in enumerate(dev)}, {k: f"P{k}" for k in dev})
    ext = {f"e{k:02d}": _texture(300 + k) for k in range(6)}
    ext["shared_again"] = _reencoded(dev["shared"], tmp_path)
    write_processed(tmp_path, "ext", ext, {k: i % 2 for i, k in enumerate(ext)}, {k: f"Q{k}" for k in ext})
    task = {"name": "g", "type": "binary", "label": "glaucoma", "classes": ["no", "yes"], "datasets": [],
            "external": ["ext"]}
    table = run(tmp_path, task, ["ext"], extra=("--dedup-against", f"dev={tmp_path / 'pre' / 'dev' / 'qc.csv'}"))
    row = table.set_index("image_id").loc["shared_again"]
    assert row["fold0"] == "excluded" and "near-duplicate of development image dev/shared" in row["exclude_reason"]
    assert (table.loc[table.image_id != "shared_again", "fold0"] == "external").all()
    # the study's overlap report lists the pair and what was done with it
    from fundusfm.data.cli import overlap_main
    write_processed(tmp_path, "up", {f"u{k}": _texture(400 + k) for k in range(4)}, {f"u{k}": 0 for k in range(4)})
    out = tmp_path / "overlap.csv"
    assert overlap_main(["--qc", *(f"{d}={tmp_path / 'pre' / d / 'qc.csv'}" for d in ("up", "dev", "ext")),
                         "--upstream", "up", "--evaluation", "dev", "ext", "--task", "g=dev:ext",
                         "--out", str(out)]) == 0
    pairs = pd.read_csv(out, dtype=str, keep_default_na=False)
    hit = pairs[pairs["kind"] == "development_external"]
    assert hit[["task", "image_id_a", "image_id_b"]].values.tolist() == [["g", "shared", "shared_again"]]
    assert hit["action"].iloc[0] == "external image excluded from the external set"
