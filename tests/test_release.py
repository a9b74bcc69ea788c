"""The release: export -> load -> predict, plain-timm loading, no pickle, MLflow registry."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from fundusfm.models.factory import create
from fundusfm.preprocess.pipeline import PreprocessSpec
from fundusfm.release import load_model
from fundusfm.release.export import export
from fundusfm.release.loading import RELEASE_FILES, ReleaseError
from fundusfm.release.cli import predict_main
from fundusfm.release.predict import expand_inputs

REPO = Path(__file__).resolve().parents[1]
ARCH, IMG, SIZE = "resnet10t", 48, 64
CLASSES = ["normal", "abnormal"]
torch.set_num_threads(1)


# ----------------------------------------------------------------------------- a trained model, small

def make_run(root: Path, head: str, seed: int = 0, arch: str = ARCH, img: int = IMG) -> Path:
    """A training output of the contract (model.safetensors + model.json) of a real timm model."""
    torch.manual_seed(seed)
    model = create(arch, len(CLASSES), head, "random", img_size=img).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    run = root / f"run_{head}_{arch}"
    run.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    meta = {"arch": arch, "head": head, "num_classes": 2, "classes": CLASSES, "task_type": "binary",
            "task": {"type": "binary", "label": "abnormal", "classes": CLASSES, "name": "pretrain"},
            "img_size": img, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "init": "random"}
    (run / "model.json").write_text(json.dumps(meta))
    return run


def make_release(root: Path, head: str) -> Path:
    spec = root / "preprocess_spec.json"
    spec.write_text(json.dumps(asdict(PreprocessSpec(size=SIZE))))
    return export(make_run(root, head), root / f"release_{head}", preprocess_spec=spec, n_boot=0)


@pytest.fixture(scope="module")
def paper_release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("paper"), "paper")


@pytest.fixture(scope="module")
def timm_release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("timm"), "timm")


def _fundus_jpeg(path: Path, seed: int) -> Path:
    from fundusfm.synth.draw import render_fundus

    Image.fromarray(render_fundus(seed)[0]).save(path, quality=92)
    return path


# ----------------------------------------------------------------------------- release contents

def test_release_folder_holds_only_safetensors_json_and_markdown(paper_release):
    names = sorted(p.name for p in paper_release.iterdir())
    assert names == sorted(RELEASE_FILES)
    for p in paper_release.iterdir():
        head = p.read_bytes()[:2]
        assert head[:1] != b"\x80", f"{p} starts like a pickle"
    cfg = json.loads((paper_release / "config.json").read_text())
    assert cfg["architecture"] == ARCH and cfg["num_classes"] == 2 and cfg["label_names"] == CLASSES
    assert cfg["pretrained_cfg"]["input_size"] == [3, IMG, IMG]
    assert cfg["pretrained_cfg"]["classifier"] == "fc"
    assert cfg["fundusfm"]["preprocessing"]["preprocess_spec"]["size"] == SIZE
    assert "dr_grade" in cfg["fundusfm"]["label_vocabulary"]
    assert cfg["fundusfm"]["versions"]["export"]["timm"] == timm.__version__


def test_load_model_never_unpickles(paper_release, monkeypatch):
    def no_pickle(*a, **k):
        raise AssertionError("torch.load called while loading a release")

    monkeypatch.setattr(torch, "load", no_pickle)
    rel = load_model(paper_release)
    assert rel.classes == CLASSES and not rel.model.training


def test_load_model_refuses_changed_weights(paper_release, tmp_path):
    copy = tmp_path / "rel"
    shutil.copytree(paper_release, copy)
    from safetensors.torch import load_file

    state = load_file(str(copy / "model.safetensors"))
    state["conv1.0.weight"] = state["conv1.0.weight"] + 1
    save_file(state, str(copy / "model.safetensors"))
    with pytest.raises(ReleaseError, match="SHA-256"):
        load_model(copy)


def test_export_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "release_timm").mkdir()
    (tmp_path / "release_timm" / "notes.txt").write_text("mine")
    with pytest.raises(ReleaseError, match="notes.txt"):
        make_release(tmp_path, "timm")


def test_model_card_says_intended_use_licence_and_preprocessing(paper_release):
    card = (paper_release / "README.md").read_text()
    for text in ("## Intended use", "## Not intended use", "Not a medical device", "CC-BY-NC-4.0",
                 "## Preprocessing", f"size {SIZE}", "## Limitations", torch.__version__):
        assert text in card, text


# ----------------------------------------------------------------------------- plain timm


def test_plain_timm_rebuilds_a_vit_release_at_its_trained_size(tmp_path):
    """A ViT has a fixed input size: plain timm would build the arch's default (160 px for
    test_vit) and refuse the trained 64 px, so config.json carries model_args.img_size."""
    spec = tmp_path / "preprocess_spec.json"
    spec.write_text(json.dumps(asdict(PreprocessSpec(size=SIZE))))
    rel_dir = export(make_run(tmp_path, "timm", arch="test_vit", img=64), tmp_path / "rel", preprocess_spec=spec,
                     n_boot=0)
    assert json.loads((rel_dir / "config.json").read_text())["model_args"] == {"img_size": 64}
    plain = timm.create_model(f"local-dir:{rel_dir}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(plain(x), load_model(rel_dir).model(x), atol=1e-6)

def test_plain_timm_loads_the_full_classifier_with_identical_logits(timm_release):
    rel = load_model(timm_release)
    plain = timm.create_model(f"local-dir:{timm_release}", pretrained=True).eval()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(plain(x), rel.model(x))
    # the pretrained_cfg_overlay route with the same number of classes
    over = timm.create_model(ARCH, pretrained=True, num_classes=2, pretrained_cfg_overlay=dict(
        file=str(timm_release / "model.safetensors"), num_classes=2)).eval()
    with torch.no_grad():
        assert torch.equal(over(x), rel.model(x))


@pytest.mark.parametrize("num_classes", [0, 7])
def test_plain_timm_reuses_the_backbone_with_a_new_head(paper_release, num_classes):
    rel = load_model(paper_release)
    new = timm.create_model(ARCH, pretrained=True, num_classes=num_classes,
                            pretrained_cfg_overlay=dict(file=str(paper_release / "model.safetensors")))
    ours = rel.model.state_dict()
    theirs = new.state_dict()
    backbone = [k for k in ours if not k.startswith("fc.")]
    assert backbone and all(torch.equal(ours[k], theirs[k]) for k in backbone)
    assert new.num_classes == num_classes
    local = timm.create_model(f"local-dir:{paper_release}", pretrained=True, num_classes=0).eval()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.allclose(local(x), rel.model.forward_head(rel.model.forward_features(x), pre_logits=True))


# ----------------------------------------------------------------------------- predict

def test_predict_gives_one_row_per_input_with_its_status(paper_release, tmp_path):
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    _fundus_jpeg(folder / "a_good.jpg", 11)
    _fundus_jpeg(folder / "b_good.jpg", 12)
    Image.fromarray(data.retina()).save(folder / "c_retina.jpg", quality=92)
    good = (folder / "a_good.jpg").read_bytes()
    (folder / "d_corrupt.jpg").write_bytes(good[: len(good) // 3])
    (folder / "e_text.jpg").write_text("this is not an image\n")
    (folder / "f_notes.txt").write_text("visit notes\n")
    Image.fromarray(data.astronaut()).save(folder / "g_astronaut.jpg", quality=92)
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    missing = tmp_path / "nowhere.jpg"
    out = tmp_path / "pred.csv"
    rc = predict_main(["--model", str(paper_release), str(folder), str(missing), "--out", str(out),
                       "--device", "cpu", "--batch-size", "2", "--no-progress"])
    assert rc == 0
    df = pd.read_csv(out, keep_default_na=False)
    status = dict(zip(df["path"].map(lambda p: Path(p).name), df["status"]))
    assert status == {"a_good.jpg": "ok", "b_good.jpg": "ok", "c_retina.jpg": "ok", "d_corrupt.jpg": "error",
                      "e_text.jpg": "error", "f_notes.txt": "error", "g_astronaut.jpg": "rejected",
                      "nowhere.jpg": "error"}
    assert list(df.columns[:7]) == ["path", "status", "reason", "quality", "fov_cx", "fov_cy", "fov_r"]
    ok = df[df["status"] == "ok"]
    bad = df[df["status"] != "ok"]
    assert (bad["reason"] != "").all() and (bad["predicted"] == "").all()
    probs = ok[["prob_normal", "prob_abnormal"]].apply(pd.to_numeric).to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert set(ok["predicted"]) <= set(CLASSES)
    assert (pd.to_numeric(ok["fov_r"]) > 0).all()


@pytest.mark.slow
def test_predict_with_workers_batches_and_cams_gives_the_same_rows(paper_release, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for s in range(3):
        _fundus_jpeg(folder / f"f{s}.jpg", 20 + s)
    (folder / "bad.jpg").write_text("not an image")
    out, cams = tmp_path / "pred.csv", tmp_path / "cams"
    assert predict_main(["--model", str(paper_release), str(folder), "--out", str(out), "--device", "cpu",
                         "--batch-size", "1", "--cam", str(cams), "--no-progress"]) == 0
    df = pd.read_csv(out, keep_default_na=False)
    ok = df["status"] == "ok"
    assert ok.sum() == 3
    for p in df.loc[ok, "cam"]:
        cam = np.asarray(Image.open(p))
        assert cam.shape == (IMG, IMG, 3) and cam.std() > 0
    assert (df.loc[~ok, "cam"] == "").all()
    out2 = tmp_path / "pred2.csv"
    assert predict_main(["--model", str(paper_release), str(folder), "--out", str(out2), "--device", "cpu",
                         "--batch-size", "16", "--workers", "2", "--no-progress"]) == 0
    df2 = pd.read_csv(out2, keep_default_na=False).set_index("path")
    a = df.set_index("path").loc[df2.index]
    assert (a["status"] == df2["status"]).all()
    np.testing.assert_allclose(pd.to_numeric(a["prob_abnormal"], errors="coerce"),
                               pd.to_numeric(df2["prob_abnormal"], errors="coerce"), atol=1e-6)


def test_csv_inputs_resolve_relative_paths_and_bad_csv_names_the_column(tmp_path):
    (tmp_path / "imgs").mkdir()
    lst = tmp_path / "list.csv"
    lst.write_text("image,eye\nimgs/x.jpg,L\n/abs/y.jpg,R\n")
    assert expand_inputs([str(lst)]) == [str(tmp_path / "imgs" / "x.jpg"), "/abs/y.jpg"]
    bad = tmp_path / "bad.csv"
    bad.write_text("foo\nx.jpg\n")
    with pytest.raises(ValueError, match="--path-column"):
        expand_inputs([str(bad)])


# ----------------------------------------------------------------------------- the study round trip

@pytest.fixture(scope="module")
def study(tiny_study):
    """The tiny study run by the real workflow, up to the release and its registration."""
    return tiny_study


@pytest.mark.slow
def test_round_trip_matches_the_study_predictions_on_raw_photographs(study, tmp_path):
    res = study / "results"
    cfg = json.loads((res / "release" / "config.json").read_text())
    run = Path(cfg["fundusfm"]["source"]["run_dir"])
    study_pred = pd.read_csv(study / run / "predictions_test.csv", dtype={"image_id": str})
    manifests = {ds: pd.read_csv(res / "manifests" / f"{ds}.csv", dtype=str).set_index("image_id")
                 for ds in study_pred["dataset"].unique()}
    raw = [str(study / "data" / ds / manifests[ds].loc[i, "path"]) for ds, i in
           zip(study_pred["dataset"], study_pred["image_id"])]
    out = tmp_path / "pred.csv"
    assert predict_main(["--model", str(res / "release"), *raw, "--out", str(out), "--device", "cpu",
                         "--no-progress"]) == 0
    ours = pd.read_csv(out)
    assert (ours["status"] == "ok").all(), ours[ours["status"] != "ok"]
    cols = [f"prob_{c}" for c in cfg["fundusfm"]["model"]["classes"]]
    np.testing.assert_allclose(ours[cols].to_numpy(), study_pred[cols].to_numpy(), atol=1e-5)
    # the same through the Python API
    rel = load_model(res / "release")
    row, x = rel.preprocess(raw[0])
    assert row["status"] == "ok"
    np.testing.assert_allclose(rel.predict(x[None])[0], study_pred[cols].to_numpy()[0], atol=1e-5)


@pytest.mark.slow
def test_study_release_card_config_and_registry(study):
    res = study / "results"
    rel = res / "release"
    assert sorted(p.name for p in rel.iterdir()) == sorted(RELEASE_FILES)
    cfg = json.loads((rel / "config.json").read_text())
    ff = cfg["fundusfm"]
    assert ff["source"]["run_dir"].endswith("pretrain/random")
    spec_on_disk = json.loads((res / "preprocessed" / "up" / "preprocess_spec.json").read_text())
    assert ff["preprocessing"]["preprocess_spec"] == spec_on_disk
    up = ff["training"]["datasets"]["up"]
    assert up["manifest"]["n_images"] == len(pd.read_csv(res / "manifests" / "up.csv"))
    assert ff["training"]["training_datasets"] == ["up"]
    assert set(ff["metrics"]["study"]) == {"multi", "grade"}
    own = ff["metrics"]["released_model_test"]
    assert own["n_images"] > 0 and "auroc" in own["metrics"]
    card = (rel / "README.md").read_text()
    assert "**multi**" in card and "**grade**" in card and "| fundus |" in card
    # the registry holds a version pointing at the logged release, tagged with the metrics
    record = json.loads((res / "mlflow" / "release.json").read_text())
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{study}/results/mlflow.db")
    mv = client.get_model_version(record["name"], record["version"])
    assert mv.tags["fundusfm.weights_sha256"] == ff["files"]["model.safetensors"]["sha256"]
    assert any(k.startswith("study.multi.") for k in mv.tags)
    # registering again reuses the version
    from fundusfm.tracking.registry import register

    again = register(rel, record["name"], uri=f"sqlite:///{study}/results/mlflow.db")
    assert again["version"] == record["version"] and again["created"] is False
