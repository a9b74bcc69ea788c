"""Releases you can verify (issue 23): Ed25519 authorship on top of the integrity digest,
and the same bytes (and digest) from the same training output."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_release import SIZE, make_run  # noqa: E402

from fundusfm.preprocess.pipeline import PreprocessSpec  # noqa: E402
from fundusfm.release import load_model  # noqa: E402
from fundusfm.release.cli import export_main, keygen_main, predict_main  # noqa: E402
from fundusfm.release.loading import ReleaseError, sign_config  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A training output, its preprocessing spec and an Ed25519 key pair (openssl's format)."""
    root = tmp_path_factory.mktemp("signing")
    run = make_run(root, "timm")
    spec = root / "preprocess_spec.json"
    spec.write_text(json.dumps(asdict(PreprocessSpec(size=SIZE))))
    assert keygen_main(["--out", str(root / "author")]) == 0
    assert keygen_main(["--out", str(root / "someone_else")]) == 0
    return root, run, spec


def _export(made, out: Path, *extra: str) -> Path:
    root, run, spec = made
    assert export_main(["--run-dir", str(run), "--out", str(out), "--preprocess-spec", str(spec), "--n-boot", "0",
                        *extra]) == 0
    return out


@pytest.fixture(scope="module")
def signed(made, tmp_path_factory):
    return _export(made, tmp_path_factory.mktemp("signed") / "release", "--sign-key", str(made[0] / "author.pem"))


@pytest.fixture(scope="module")
def unsigned(made, tmp_path_factory):
    return _export(made, tmp_path_factory.mktemp("unsigned") / "release")


def _resigned(release: Path, tmp_path: Path, edit) -> Path:
    """What the issue's attacker did: edit config.json, recompute the (unkeyed) digest."""
    copy = tmp_path / "release"
    shutil.copytree(release, copy)
    cfg = json.loads((copy / "config.json").read_text())
    edit(cfg)
    block = cfg["fundusfm"]["signature"].get("ed25519")
    cfg = sign_config(cfg)  # no private key: the attacker does not have it
    if block:
        cfg["fundusfm"]["signature"]["ed25519"] = block  # the old signature, kept
    (copy / "config.json").write_text(json.dumps(cfg, indent=2))
    return copy


def _swap_classes(cfg):
    m = cfg["fundusfm"]["model"]
    m["classes"] = m["classes"][::-1]
    m["task"]["classes"] = m["classes"]
    cfg["label_names"] = m["classes"]


def _std(cfg):
    cfg["fundusfm"]["model"]["std"] = [0.02, 0.02, 0.02]
    cfg["pretrained_cfg"]["std"] = [0.02, 0.02, 0.02]


def _new_weights(copy: Path):
    """New weights in the release copy, their SHA-256 written into the config (the issue's third case)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(copy / "model.safetensors"))
    state = {k: (v * 1.5 if v.is_floating_point() else v) for k, v in state.items()}
    save_file(state, str(copy / "model.safetensors"), metadata={"format": "pt"})
    data = (copy / "model.safetensors").read_bytes()

    def edit(cfg):
        cfg["fundusfm"]["files"]["model.safetensors"]["sha256"] = hashlib.sha256(data).hexdigest()
    return edit


def test_a_genuine_signed_release_loads_under_its_trusted_key(made, signed):
    rel = load_model(signed, trusted_keys=[made[0] / "author.pub"])
    assert rel.authenticity.startswith("signed by trusted key ed25519:")
    cfg = json.loads((signed / "config.json").read_text())
    assert cfg["fundusfm"]["authorship"]["signed"] is True
    assert "**Signed** with Ed25519 key" in (signed / "README.md").read_text()


@pytest.mark.parametrize("edit", ["swap classes", "std 0.02"])
def test_a_release_re_signed_without_the_key_is_refused_under_the_trusted_key(made, signed, tmp_path, edit):
    tampered = _resigned(signed, tmp_path, {"swap classes": _swap_classes, "std 0.02": _std}[edit])
    load_model(tampered)  # integrity alone cannot tell: the digest was recomputed
    with pytest.raises(ReleaseError, match="does not verify: the release was changed after it was signed"):
        load_model(tampered, trusted_keys=[made[0] / "author.pub"])


def test_an_unsigned_or_foreign_release_is_refused_under_a_trusted_key(made, signed, unsigned, tmp_path):
    with pytest.raises(ReleaseError, match=r"unsigned \(integrity only, unsigned\) but trusted keys were given"):
        load_model(unsigned, trusted_keys=[made[0] / "author.pub"])
    with pytest.raises(ReleaseError, match="which is none of the trusted keys"):
        load_model(signed, trusted_keys=[made[0] / "someone_else.pub"])
    stripped = _resigned(signed, tmp_path, lambda cfg: cfg["fundusfm"].update(
        authorship={"signed": False, "statement": "integrity only, unsigned"}))
    cfg = json.loads((stripped / "config.json").read_text())
    del cfg["fundusfm"]["signature"]["ed25519"]
    (stripped / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ReleaseError, match="unsigned"):
        load_model(stripped, trusted_keys=[made[0] / "author.pub"])


def test_the_keyring_variable_verifies_too(made, signed, tmp_path, monkeypatch):
    tampered = _resigned(signed, tmp_path, _swap_classes)
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(made[0] / "author.pub", keys / "author.pub")
    monkeypatch.setenv("FUNDUSFM_TRUSTED_KEYS", str(keys))
    assert load_model(signed).authenticity.startswith("signed by trusted key")
    with pytest.raises(ReleaseError, match="does not verify"):
        load_model(tampered)


def test_unsigned_release_says_integrity_only_in_card_and_predict(unsigned, tmp_path, capsys, caplog):
    assert "**Integrity only, unsigned.**" in (unsigned / "README.md").read_text()
    with caplog.at_level(logging.WARNING):
        rel = load_model(unsigned)
    assert rel.authenticity == "integrity only, unsigned" and "integrity only, unsigned" in caplog.text
    (tmp_path / "x.jpg").write_bytes(b"not an image")
    assert predict_main([str(tmp_path / "x.jpg"), "--model", str(unsigned), "--out", str(tmp_path / "p.csv"),
                         "--no-progress"]) == 0
    assert f"(release {unsigned}): integrity only, unsigned" in capsys.readouterr().err


def test_predict_refuses_a_re_signed_release_under_trusted_key(made, signed, tmp_path, capsys):
    staging = tmp_path / "staging"
    shutil.copytree(signed, staging)
    tampered = _resigned(staging, tmp_path, _new_weights(staging))
    load_model(tampered)  # integrity alone: the new weights' digest was written in
    rc = predict_main([str(tmp_path), "--model", str(tampered), "--out", str(tmp_path / "p.csv"),
                       "--trusted-key", str(made[0] / "author.pub"), "--no-progress"])
    assert rc == 1 and "does not verify" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_a_bad_signing_key_is_one_line_before_any_work(made, tmp_path, capsys):
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    root, run, spec = made
    rc = export_main(["--run-dir", str(run), "--out", str(tmp_path / "rel"), "--preprocess-spec", str(spec),
                      "--sign-key", str(tmp_path / "key.pem")])
    err = capsys.readouterr().err
    assert rc == 1 and "signing key" in err and str(tmp_path / "key.pem") in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rel").exists()


@pytest.mark.slow
def test_openssl_keys_sign_and_verify(made, tmp_path):
    """Keys from `openssl genpkey -algorithm ed25519` (the documented way) work as they are."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl binary")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(tmp_path / "k.pem")], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(tmp_path / "k.pem"), "-pubout", "-out", str(tmp_path / "k.pub")],
                   check=True)
    rel = _export(made, tmp_path / "release", "--sign-key", str(tmp_path / "k.pem"))
    assert load_model(rel, trusted_keys=[tmp_path / "k.pub"]).authenticity.startswith("signed by trusted key")
