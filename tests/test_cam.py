"""Activation maps: target layers, heat-map shape/range, deterministic case selection,
galleries, and the ``fundusfm cam`` command on a saved model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data, transform

from fundusfm.evaluate.cam import (compute_cams, fov_mask_from_image, overlay, select_cases, target_layers,
                                   to_tensor)

torch.set_num_threads(1)
SIZE = 64
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
BINARY = {"type": "binary", "label": "amd", "classes": ["no", "yes"]}


def fundus(size=SIZE, seed=0):
    """The real retina photograph of skimage, squared, black outside a disc, jittered."""
    img = data.retina()
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    img = (transform.resize(img, (size, size), anti_aliasing=True) * 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    disc = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5) < size / 2 - 1
    rng = np.random.default_rng(seed)
    img = np.clip(img.astype(int) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
    img[~disc] = 0
    return img, disc


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=2).eval()


def test_target_layer_is_last_stage_of_timm_cnn(model):
    layers, reshape = target_layers(model)
    assert layers[0] is model.layer4 and reshape is None


def test_target_layer_of_vit_reshapes_tokens():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=3).eval()
    layers, reshape = target_layers(vit)
    assert layers[0] is vit.blocks[-1].norm1
    assert reshape(torch.zeros(2, 1 + 4, 192)).shape == (2, 192, 2, 2)
    cams = compute_cams(vit, torch.randn(2, 3, 32, 32), [0, 2], "gradcam")
    assert cams.shape == (2, 32, 32)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "eigencam"])
def test_cam_shape_and_range(model, method):
    imgs = [fundus(seed=i)[0] for i in range(3)]
    cams = compute_cams(model, to_tensor(imgs, MEAN, STD), [1, 0, 1], method)
    assert cams.shape == (3, SIZE, SIZE) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() <= 1 and cams.max() > 0.5


def test_overlay_black_outside_fov():
    img, disc = fundus()
    mask = fov_mask_from_image(img)
    assert (mask == disc).mean() > 0.97
    cam = np.ones((SIZE, SIZE), np.float32)
    vis = overlay(img, cam, mask)
    assert vis.shape == img.shape and vis.dtype == np.uint8
    assert (vis[~mask] == 0).all() and vis[mask].max() > 0


def preds_frame(n=24, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.round(np.clip(0.5 * y + rng.uniform(0, 0.6, n), 0, 1), 2)  # rounding makes ties
    return pd.DataFrame({"image_id": [f"im{i:02d}" for i in range(n)], "dataset": "d",
                         "patient_id": [f"p{i}" for i in range(n)], "eye": "L", "label": y,
                         "prob_no": 1 - p, "prob_yes": p})


def test_selection_most_confident_and_deterministic():
    df = preds_frame()
    sel = select_cases(df, BINARY, per_group=3)
    again = select_cases(df.sample(frac=1, random_state=5), BINARY, per_group=3)  # row order must not matter
    pd.testing.assert_frame_equal(sel, again)
    tp = sel[sel["group"] == "TP"]
    cand = df[(df["label"] == 1) & (df["prob_yes"] >= 0.5)].sort_values(["prob_yes", "image_id"],
                                                                         ascending=[False, True])
    assert list(tp["image_id"]) == list(cand["image_id"][:3])
    fn = sel[sel["group"] == "FN"]
    assert (np.diff(fn["prob"]) >= 0).all()  # most confidently missed first
    fp = sel[sel["group"] == "FP"]
    assert (df.set_index("image_id").loc[fp["image_id"], "label"] == 0).all()


def test_multiclass_selection_per_class():
    task = {"type": "multiclass", "label": "x", "classes": ["a", "b", "c"]}
    P = np.array([[.8, .1, .1], [.1, .8, .1], [.1, .1, .8], [.6, .3, .1], [.2, .7, .1]])
    df = pd.DataFrame({"image_id": list("vwxyz"), "dataset": "d", "patient_id": list("vwxyz"), "eye": "L",
                       "label": [0, 1, 2, 1, 0], "prob_a": P[:, 0], "prob_b": P[:, 1], "prob_c": P[:, 2]})
    sel = select_cases(df, task, per_group=2)
    a = sel[sel["class"] == "a"]
    assert list(a[a["group"] == "TP"]["image_id"]) == ["v"]
    assert list(a[a["group"] == "FP"]["image_id"]) == ["y"]
    assert list(a[a["group"] == "FN"]["image_id"]) == ["z"]


def test_cam_cli_on_saved_model(model, tmp_path):
    from fundusfm.evaluate.cli import cam_main

    out = tmp_path / "run"
    out.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "model.json").write_text(json.dumps({
        "arch": "resnet10t", "head": "timm", "num_classes": 2, "classes": ["no", "yes"], "task_type": "binary",
        "task": {"name": "amd", **BINARY}, "img_size": SIZE, "mean": MEAN, "std": STD}))
    df = preds_frame(n=10)
    df.to_csv(out / "predictions_test.csv", index=False)
    (tmp_path / "img").mkdir()
    rows = []
    for i, r in df.iterrows():
        p = tmp_path / "img" / f"{r['image_id']}.png"
        Image.fromarray(fundus(seed=i)[0]).save(p)
        rows.append({"dataset": "d", "image_id": r["image_id"], "patient_id": r["patient_id"], "eye": "L",
                     "image": str(p), "qc_status": "ok", "amd": r["label"], "fold0": "test"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    cams = tmp_path / "cams"
    args = ["--model-dir", str(out), "--table", str(tmp_path / "table.csv"), "--fold", "0",
            "--predictions", str(out / "predictions_test.csv"), "--out-dir", str(cams), "--per-group", "2"]
    assert cam_main(args) == 0
    for name in ("gradcam_yes.png", "gradcampp_yes.png"):
        assert (cams / name).read_bytes()[:4] == b"\x89PNG" and (cams / name).stat().st_size > 5000
    sel = pd.read_csv(cams / "selection.csv")
    assert set(sel["group"]) <= {"TP", "FP", "FN"} and len(sel) <= 6
    # a training image must not get an activation map
    pd.DataFrame(rows).assign(fold0="train").to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(ValueError, match="not test/external"):
        cam_main(args)


def test_cam_refuses_a_linear_probe(tmp_path, caplog):
    """A linear probe is a logistic regression on frozen features: no network of its own to
    take activation maps from; both ways of naming one are refused with a message."""
    import logging

    from fundusfm import layout
    from fundusfm.evaluate.cam import run_cam
    from fundusfm.evaluate.cli import cam_main

    run = layout.Run("amd", "big", 0, "1", 0, "linear")
    out = tmp_path / layout.finetune_dir("results", run)
    out.mkdir(parents=True)
    preds_frame(n=6).to_csv(out / "predictions_test.csv", index=False)
    preds_frame(n=6, seed=1).to_csv(out / "predictions_val.csv", index=False)
    pd.DataFrame({"dataset": ["d"], "image_id": ["im00"], "image": ["x.png"], "fold0": ["test"]}).to_csv(
        tmp_path / "table.csv", index=False)
    common = ["--table", str(tmp_path / "table.csv"), "--out-dir", str(tmp_path / "cams")]
    with caplog.at_level(logging.ERROR):
        assert cam_main(["--model-dir", str(out), "--fold", "0", "--predictions", str(out / "predictions_test.csv"),
                         *common]) == 1
    assert any("linear run has no network weights of its own" in m for m in caplog.messages)
    with pytest.raises(ValueError, match="activation maps need a fine-tuned model"):
        run_cam(out, tmp_path / "table.csv", 0, out / "predictions_test.csv", tmp_path / "cams")
    metrics = tmp_path / "test.json"
    metrics.write_text(json.dumps({"task": "amd", "init": "big", "adaptation": "linear", "fold": 0, "fraction": 1.0,
                                   "seed": 0, "set": "test", "metrics": {"auroc": 0.9},
                                   "predictions": str(out / "predictions_test.csv")}))
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cam_main(["--best-of", str(metrics), "--task-json", json.dumps(BINARY), *common]) == 1
    assert any("no fine-tune among the 1 run(s)" in m for m in caplog.messages)
