"""A release tampered with after export is refused before any image is read, never a silent prediction."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from test_release import CLASSES, make_release  # noqa: E402

import fundusfm.preprocess.pipeline as pipeline  # noqa: E402
from fundusfm.release import load_model  # noqa: E402
from fundusfm.release.loading import ReleaseError, sign_config  # noqa: E402
from fundusfm.release.cli import predict_main  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("tamper"), "timm")


def _del_files(cfg):
    del cfg["fundusfm"]["files"]


def _swap_classes(cfg):
    cfg["fundusfm"]["model"]["classes"] = cfg["fundusfm"]["model"]["classes"][::-1]


def _task_type(cfg):
    cfg["fundusfm"]["model"]["task_type"] = "multilabel"


def _mean(cfg):
    cfg["fundusfm"]["model"]["mean"] = [0.5, 0.5, 0.5]


def _std_zero(cfg):
    cfg["fundusfm"]["model"]["std"] = [0.0, 0.0, 0.0]


def _extra_class(cfg):
    cfg["fundusfm"]["model"]["classes"] = [*CLASSES, "glaucoma"]


# (edit, what the refusal says when the tamperer also recomputed the signature)
TAMPERING = {
    "delete fundusfm.files": (_del_files, r"fundusfm\.files\.model\.safetensors\.sha256' missing"),
    "swap classes": (_swap_classes, r"label_names|differ from fundusfm\.model\.task"),
    "change task_type": (_task_type, r"task_type' is 'multilabel' but fundusfm\.model\.task\.type is 'binary'"),
    "change mean": (_mean, r"'pretrained_cfg\.mean' is .* but fundusfm\.model says \[0\.5, 0\.5, 0\.5\]"),
    "std = 0": (_std_zero, r"std' \[0\.0, 0\.0, 0\.0\] must be > 0"),
    "len(classes) != num_classes": (_extra_class, r"num_classes' is 2 but 'classes' names 3"),
}


def _tampered(release: Path, tmp_path: Path, edit, resign: bool) -> Path:
    copy = tmp_path / "release"
    shutil.copytree(release, copy)
    cfg = json.loads((copy / "config.json").read_text())
    edit(cfg)
    if resign:  # someone who knows the scheme and recomputes the digest
        cfg = sign_config(cfg)
    (copy / "config.json").write_text(json.dumps(cfg, indent=2))
    return copy


@pytest.fixture
def photo(tmp_path):
    from fundusfm.synth.draw import render_fundus

    path = tmp_path / "photo.jpg"
    Image.fromarray(render_fundus(3)[0]).save(path, quality=92)
    return path


@pytest.fixture
def no_image_read(monkeypatch):
    """Fails the test if preprocessing touches an image."""

    def refuse(*a, **k):
        raise AssertionError("an image was read although the release is refused")

    monkeypatch.setattr(pipeline, "process_image", refuse)


def _predict(model: Path, photo: Path, out: Path) -> int:
    return predict_main(["--model", str(model), str(photo), "--out", str(out), "--device", "cpu", "--no-progress"])


def test_untampered_release_predicts(release, photo, tmp_path):
    assert _predict(release, photo, tmp_path / "pred.csv") == 0
    assert (tmp_path / "pred.csv").is_file()


@pytest.mark.parametrize("name", list(TAMPERING))
def test_tampered_release_is_refused_by_its_signature(release, photo, tmp_path, name, no_image_read, capsys):
    copy = _tampered(release, tmp_path, TAMPERING[name][0], resign=False)
    with pytest.raises(ReleaseError, match=r"config\.json: (changed after export|key 'fundusfm\.signature)"):
        load_model(copy)
    out = tmp_path / "pred.csv"
    assert _predict(copy, photo, out) == 1
    err = capsys.readouterr().err
    assert "fundusfm predict: " in err and "changed after export" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("name", list(TAMPERING))
def test_tampered_and_resigned_release_fails_the_sanity_checks(release, photo, tmp_path, name, no_image_read,
                                                              capsys):
    edit, message = TAMPERING[name]
    copy = _tampered(release, tmp_path, edit, resign=True)
    with pytest.raises(ReleaseError, match=message):
        load_model(copy)
    out = tmp_path / "pred.csv"
    assert _predict(copy, photo, out) == 1
    assert "Traceback" not in capsys.readouterr().err and not out.exists()


def test_unsigned_release_is_refused_not_unchecked(release, tmp_path):
    def unsign(cfg):
        del cfg["fundusfm"]["signature"]
        cfg["fundusfm"]["format_version"] = 1

    copy = _tampered(release, tmp_path, unsign, resign=False)
    with pytest.raises(ReleaseError, match=r"'fundusfm\.signature' missing.*unsigned"):
        load_model(copy)


def test_weights_with_more_outputs_than_classes_are_refused_before_loading(release, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = _tampered(release, tmp_path, lambda cfg: None, resign=False)
    state = load_file(str(copy / "model.safetensors"))
    state["fc.weight"] = torch.cat([state["fc.weight"], state["fc.weight"][:1]])
    state["fc.bias"] = torch.cat([state["fc.bias"], state["fc.bias"][:1]])
    save_file(state, str(copy / "model.safetensors"))
    cfg = json.loads((copy / "config.json").read_text())
    from fundusfm.hashing import sha256_file

    cfg["fundusfm"]["files"]["model.safetensors"]["sha256"] = sha256_file(copy / "model.safetensors")
    (copy / "config.json").write_text(json.dumps(sign_config(cfg)))
    with pytest.raises(ReleaseError, match=r"does not fit .* 2 classes .*fc\.weight: \(3, \d+\) vs \(2, \d+\)"):
        load_model(copy)


def test_edited_model_card_is_reported_not_refused(release, tmp_path, caplog):
    copy = _tampered(release, tmp_path, lambda cfg: None, resign=False)
    with open(copy / "README.md", "a") as fh:
        fh.write("\nIntended use: anything.\n")
    with caplog.at_level(logging.WARNING, logger="fundusfm.release"):
        rel = load_model(copy)
    assert rel.classes == CLASSES
    assert "README.md differs from the model card exported" in caplog.text
