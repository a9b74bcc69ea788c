"""Loading a release folder: the model, its preprocessing and its prediction path.

The model's input is produced exactly as in the study: ``process_image`` (decode, FOV
crop, resize, mask, quality grade, normalisation) gives the processed image the study
wrote to disk; it is encoded in the study's format and read back through the training
engine's ``load_image`` (resize to ``img_size``), then ``predict_batch`` (scale, mean/std,
softmax or sigmoid). Reusing those functions rather than copies of them keeps the
probabilities of a release equal to the study's own predictions.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fundusfm.hashing import sha256_file
from fundusfm.models.io import resolve_device
from fundusfm.preprocess.pipeline import PreprocessSpec, process_image

log = logging.getLogger("fundusfm.release")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
RELEASE_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
FORMAT = "fundusfm-release"
FORMAT_VERSION = 3  # 2: config.json carries its integrity digest; 3: and its authorship (fundusfm.authorship)
# what fundusfm.train.infer.predict_batch and the model factory need from the config
META_KEYS = ("arch", "head", "num_classes", "classes", "task_type", "img_size", "mean", "std")
TASK_TYPES = ("binary", "multiclass", "ordinal", "multilabel")
SIGNATURE_SCOPE = ("SHA-256 of config.json without fundusfm.signature, as JSON with sorted keys and no "
                   "whitespace; it covers fundusfm.files, so the SHA-256 of every release file")
ED25519_SCOPE = "Ed25519 signature (RFC 8032) of the same bytes the SHA-256 digest is taken of"


class ReleaseError(ValueError):
    """A release folder is incomplete or inconsistent (the message names file and key)."""


def read_config(release_dir: str | Path) -> dict:
    """``config.json`` of a release, checked for the keys loading needs."""
    path = Path(release_dir) / CONFIG_FILE
    if not path.is_file():
        raise ReleaseError(f"{path} missing: is {release_dir} a release folder (fundusfm export)?")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReleaseError(f"{path}: not valid JSON ({e})") from None
    ff = cfg.get("fundusfm") if isinstance(cfg, dict) else None
    if not isinstance(ff, dict) or ff.get("format") != FORMAT:
        raise ReleaseError(f"{path}: key 'fundusfm.format' is not {FORMAT!r}; not a fundusfm release")
    version = ff.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ReleaseError(f"{path}: format_version {version!r} is newer than this fundusfm "
                           f"understands ({FORMAT_VERSION}); upgrade fundusfm")
    model = ff.get("model")
    missing = [f"fundusfm.model.{k}" for k in META_KEYS if not isinstance(model, dict) or k not in model]
    if not isinstance(ff.get("preprocessing"), dict) or "preprocess_spec" not in ff["preprocessing"]:
        missing.append("fundusfm.preprocessing.preprocess_spec")
    if missing:
        raise ReleaseError(f"{path}: key(s) {missing} missing")
    return cfg


# ----------------------------------------------------------------------------- integrity

def signed_bytes(cfg: dict) -> bytes:
    """The bytes the digest and the signature of ``config.json`` are taken of: the config
    as data without ``fundusfm.signature`` (see :data:`SIGNATURE_SCOPE`), independent of
    indentation and key order, sensitive to every value, the file list with the weights'
    SHA-256 included."""
    body = dict(cfg, fundusfm={k: v for k, v in cfg["fundusfm"].items() if k != "signature"})
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def config_digest(cfg: dict) -> str:
    """SHA-256 of :func:`signed_bytes`."""
    return hashlib.sha256(signed_bytes(cfg)).hexdigest()


def authorship_block(private_key=None) -> dict:
    """``fundusfm.authorship`` of a release (part of the signed content, shown in the
    model card): who signed it, or :data:`fundusfm.release.signing.UNSIGNED`."""
    from fundusfm.release import signing

    if private_key is None:
        return {"signed": False, "statement": signing.UNSIGNED}
    kid = signing.key_id(private_key.public_key())
    return {"signed": True, "algorithm": signing.ALGORITHM, "key_id": kid,
            "statement": f"signed with Ed25519 key {kid}; verify with `fundusfm predict --trusted-key PUBLIC_KEY`"}


def sign_config(cfg: dict, private_key=None) -> dict:
    """``cfg`` (as it reads back from JSON) with ``fundusfm.signature`` set: the integrity
    digest, and with ``private_key`` (Ed25519) the authorship signature of the same bytes."""
    from fundusfm.release import signing

    message = signed_bytes(cfg)
    sig = {"algorithm": "sha256", "scope": SIGNATURE_SCOPE, "digest": hashlib.sha256(message).hexdigest()}
    if private_key is not None:
        sig["ed25519"] = dict(signing.sign(message, private_key), scope=ED25519_SCOPE)
    cfg["fundusfm"]["signature"] = sig
    return cfg


def verify_release(release_dir: str | Path, cfg: dict, trusted=None) -> str:
    """Refuse a release whose ``config.json`` or weights changed after export, or (with
    trusted keys) that no trusted key signed; returns what was established, e.g.
    ``signed by trusted key ed25519:...`` or ``integrity only, unsigned``.

    Integrity: ``fundusfm.signature.digest`` must match the config (a changed class order,
    task type, mean, a removed file list: any edit), and ``model.safetensors`` its SHA-256
    in ``fundusfm.files``; a missing entry is an error, never a skipped check. A changed
    model card (README.md) is only reported: it does not change predictions.

    Authorship (``trusted``: :class:`fundusfm.release.signing.TrustedKey` list): the Ed25519
    signature must verify with one of them; an unsigned release, one signed by another key,
    or one re-signed after an edit is refused. Without trusted keys nothing is claimed
    beyond integrity.
    """
    release_dir = Path(release_dir)
    path = release_dir / CONFIG_FILE
    ff = cfg["fundusfm"]
    redo = "re-export it with `fundusfm export` from the training output, or restore the original folder"
    sig = ff.get("signature")
    if not isinstance(sig, dict) or sig.get("algorithm") != "sha256" or not isinstance(sig.get("digest"), str):
        raise ReleaseError(f"{path}: key 'fundusfm.signature' missing or not a sha256 digest: the release is unsigned "
                           f"(format_version 1 predates signing) or was edited, so it cannot be checked; {redo}")
    try:
        digest = config_digest(cfg)
    except ValueError as e:  # NaN / inf smuggled in: never written by export
        raise ReleaseError(f"{path}: not a config export writes ({e}); {redo}") from None
    if digest != sig["digest"]:
        raise ReleaseError(f"{path}: changed after export: its content no longer matches fundusfm.signature (a value "
                           f"such as classes, task_type, mean, std or the file list was edited); {redo}")
    files = ff.get("files")
    entry = files.get(WEIGHTS_FILE) if isinstance(files, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise ReleaseError(f"{path}: key 'fundusfm.files.{WEIGHTS_FILE}.sha256' missing: the weights cannot be "
                           f"checked; {redo}")
    weights = release_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ReleaseError(f"{weights} missing")
    if sha256_file(weights) != entry["sha256"]:
        raise ReleaseError(f"{weights}: SHA-256 differs from {path} (fundusfm.files); the weights were changed or "
                           "the copy is incomplete")
    card, card_entry = release_dir / CARD_FILE, files.get(CARD_FILE)
    if isinstance(card_entry, dict) and card.is_file() and sha256_file(card) != card_entry.get("sha256"):
        log.warning("%s differs from the model card exported with these weights (%s fundusfm.files): it was edited",
                    card, path)
    return _authorship(path, cfg, sig, list(trusted or []))


def _authorship(path: Path, cfg: dict, sig: dict, trusted: list) -> str:
    from fundusfm.release import signing

    block = sig.get("ed25519")
    claimed = cfg["fundusfm"].get("authorship") or {}
    if block is not None and (not isinstance(block, dict) or claimed.get("key_id") != block.get("key_id")):
        raise ReleaseError(f"{path}: key 'fundusfm.signature.ed25519' does not match fundusfm.authorship (key "
                           f"{claimed.get('key_id')!r}): the signature was replaced; ask its author for the release")
    ids = ", ".join(f"{k.key_id} ({k.source})" for k in trusted)
    if not trusted:
        if block is None:
            return signing.UNSIGNED
        return (f"signed by key {block.get('key_id')}, not verified: no trusted key given (--trusted-key or "
                f"${signing.KEYRING_ENV}); integrity only")
    if block is None:
        raise ReleaseError(f"{path}: the release is unsigned ({signing.UNSIGNED}) but trusted keys were given "
                           f"({ids}): refused; ask its author for an export signed with `fundusfm export --sign-key`")
    key = signing.verify(signed_bytes(cfg), block, trusted)
    if key is None:
        if block.get("key_id") in {k.key_id for k in trusted}:
            raise ReleaseError(f"{path}: the Ed25519 signature of trusted key {block.get('key_id')} does not verify: "
                               "the release was changed after it was signed (and re-signed without the key); "
                               "refused: get the release again from its author")
        raise ReleaseError(f"{path}: signed by key {block.get('key_id')}, which is none of the trusted keys ({ids}): "
                           "refused; add its public key with --trusted-key only if you trust its author")
    return f"signed by trusted key {key.key_id} ({key.source})"


def check_model_meta(cfg: dict, path: str | Path) -> dict:
    """The model keys of ``config.json`` checked for sanity (whatever the signature says):
    classes named once each and as many as outputs, a known task type, a positive image
    size, finite mean in [0, 1] and std > 0 per RGB channel, and the timm-readable copies
    (``num_classes``, ``label_names``, ``pretrained_cfg.mean/std``) equal to them."""
    meta = dict(cfg["fundusfm"]["model"])
    where = f"{path}: key 'fundusfm.model."
    classes, k = meta["classes"], meta["num_classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise ReleaseError(f"{where}classes' must be a list of class names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ReleaseError(f"{where}classes' names a class twice: {classes}")
    if not isinstance(k, int) or isinstance(k, bool) or k != len(classes):
        raise ReleaseError(f"{where}num_classes' is {k!r} but 'classes' names {len(classes)}: {classes}")
    if meta["task_type"] not in TASK_TYPES:
        raise ReleaseError(f"{where}task_type' is {meta['task_type']!r}, not one of {list(TASK_TYPES)}")
    if meta["task_type"] == "binary" and k != 2:
        raise ReleaseError(f"{where}task_type' is binary but there are {k} classes {classes}")
    task = meta.get("task")
    if isinstance(task, dict) and task.get("type") not in (None, meta["task_type"]):
        raise ReleaseError(f"{where}task_type' is {meta['task_type']!r} but fundusfm.model.task.type is "
                           f"{task.get('type')!r}")
    if isinstance(task, dict) and (task.get("classes") or task.get("labels")) not in (None, classes):
        raise ReleaseError(f"{where}classes' {classes} differ from fundusfm.model.task "
                           f"{task.get('classes') or task.get('labels')}")
    size = meta["img_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ReleaseError(f"{where}img_size' must be a positive integer, got {size!r}")
    for key, low in (("mean", None), ("std", 0.0)):
        v = meta[key]
        ok = isinstance(v, list) and len(v) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
        if not ok:
            raise ReleaseError(f"{where}{key}' must be 3 finite numbers (RGB), got {v!r}")
        if low is None and not all(0.0 <= x <= 1.0 for x in v):
            raise ReleaseError(f"{where}mean' {v} is outside [0, 1] (inputs are scaled to [0, 1] first)")
        if low is not None and not all(x > low for x in v):
            raise ReleaseError(f"{where}std' {v} must be > 0 per channel (a zero std divides by zero: NaN "
                               "probabilities)")
    pcfg = cfg.get("pretrained_cfg") or {}
    for name, have, want in (("num_classes", cfg.get("num_classes"), k),
                             ("label_names", cfg.get("label_names"), classes),
                             ("pretrained_cfg.mean", pcfg.get("mean"), meta["mean"]),
                             ("pretrained_cfg.std", pcfg.get("std"), meta["std"])):
        if have is not None and have != want:
            raise ReleaseError(f"{path}: key {name!r} is {have!r} but fundusfm.model says {want!r}")
    return meta


def model_input(processed: np.ndarray, spec: PreprocessSpec, img_size: int) -> torch.Tensor:
    """uint8 CHW model input of a processed image, as the study's training engine read it.

    The study wrote processed images in ``spec.format`` (PNG: lossless; JPEG: q95) and its
    engine read them with ``load_image``; encoding in memory and reading back through
    the same function reproduces that input bit for bit, whatever the format.
    """
    from fundusfm.preprocess.io import encode_image
    from fundusfm.train.data import load_image

    return load_image(io.BytesIO(encode_image(processed, spec.format)), int(img_size))


@dataclass
class ReleasedModel:
    """A released model on ``device`` (eval mode) with its preprocessing.

    ``model``: the timm model; ``config``: ``config.json``; ``meta``: the model keys
    used by the prediction path; ``spec``: the preprocessing the study used.
    """

    model: nn.Module
    config: dict
    meta: dict
    spec: PreprocessSpec
    device: torch.device
    path: Path
    authenticity: str = "integrity only, unsigned"

    @property
    def classes(self) -> list[str]:
        """Output names, in output order."""
        return list(self.meta["classes"])

    @property
    def multilabel(self) -> bool:
        return self.meta["task_type"] == "multilabel"

    def preprocess(self, image_path: str | Path) -> tuple[dict, torch.Tensor | None]:
        """QC row (``status`` ok / rejected / error, ``reason``, ``quality``, FOV circle)
        and the uint8 CHW model input (``None`` unless ok) of one photograph."""
        row, processed = process_image(image_path, self.spec)
        if processed is None:
            return row, None
        return row, model_input(processed, self.spec, self.meta["img_size"])

    def predict(self, x_uint8: torch.Tensor) -> np.ndarray:
        """Probabilities (N, classes) of a uint8 NCHW batch from :meth:`preprocess`."""
        from fundusfm.train.infer import predict_batch

        return predict_batch(self.model, self.meta, x_uint8, self.device)

    def predict_files(self, paths) -> list[tuple[dict, np.ndarray | None]]:
        """(QC row, probabilities or ``None``) per image file, in order (no batching)."""
        out = []
        for p in paths:
            row, x = self.preprocess(p)
            out.append((row, None if x is None else self.predict(x[None])[0]))
        return out


def load_model(release_dir: str | Path, device: str | torch.device = "cpu", trusted_keys=None) -> ReleasedModel:
    """Load a release folder written by ``fundusfm export``.

    Checks the integrity digest of ``config.json`` and the SHA-256 of
    ``model.safetensors`` and, with ``trusted_keys`` (public key files or folders; the
    keyring of ``$FUNDUSFM_TRUSTED_KEYS`` is added), its Ed25519 authorship
    (:func:`verify_release`); ``authenticity`` of the result says what was established
    (``integrity only, unsigned`` without a signature). Then the sanity of the model keys (:func:`check_model_meta`),
    rebuilds the architecture from the config (timm + head), checks that the weights'
    shapes fit it (the head's outputs are the classes), loads them strictly (no pickle is
    ever read), and returns a :class:`ReleasedModel` whose ``preprocess`` / ``predict``
    reproduce the study's prediction path. Everything is checked before any image is read.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from fundusfm.models.factory import create

    from fundusfm.release import signing

    release_dir = Path(release_dir)
    try:
        trusted = signing.keyring(trusted_keys or ())
    except signing.SigningKeyError as e:
        raise ReleaseError(str(e)) from None
    cfg = read_config(release_dir)
    ff = cfg["fundusfm"]
    authenticity = verify_release(release_dir, cfg, trusted)
    if not authenticity.startswith("signed by trusted key"):
        log.warning("release %s: %s", release_dir, authenticity)
    else:
        log.info("release %s: %s", release_dir, authenticity)
    meta = check_model_meta(cfg, release_dir / CONFIG_FILE)
    weights = release_dir / WEIGHTS_FILE
    try:
        spec = PreprocessSpec.from_dict(ff["preprocessing"]["preprocess_spec"])
    except (TypeError, ValueError, KeyError) as e:
        raise ReleaseError(f"{release_dir / CONFIG_FILE}: key 'fundusfm.preprocessing.preprocess_spec': {e}") from None
    dev = resolve_device(device)
    try:
        model = create(meta["arch"], int(meta["num_classes"]), meta["head"], "random", img_size=meta["img_size"],
                       model_args=meta.get("model_args"))
    except (RuntimeError, ValueError, KeyError) as e:
        raise ReleaseError(f"{release_dir / CONFIG_FILE}: the model of fundusfm.model (arch {meta['arch']!r}, head "
                           f"{meta['head']!r}) cannot be built: {e}") from None
    try:
        with safe_open(str(weights), "pt") as fh:
            shapes = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}
            header = fh.metadata() or {}
    except SafetensorError as e:
        raise ReleaseError(f"{weights}: not a readable safetensors file ({e})") from None
    if header.get("num_classes") not in (None, str(meta["num_classes"])) or \
            header.get("architecture") not in (None, meta["arch"]) or header.get("head") not in (None, meta["head"]):
        raise ReleaseError(f"{weights}: its header says {header.get('architecture')} with the {header.get('head')} "
                           f"head and {header.get('num_classes')} outputs, {release_dir / CONFIG_FILE} says "
                           f"{meta['arch']} / {meta['head']} / {meta['num_classes']} classes {meta['classes']}")
    want = {key: tuple(v.shape) for key, v in model.state_dict().items()}
    wrong = [f"{key}: {shapes[key]} vs {want[key]}" for key in want if key in shapes and shapes[key] != want[key]]
    if wrong:
        raise ReleaseError(f"{weights} does not fit {meta['arch']} with the {meta['head']} head and "
                           f"{meta['num_classes']} classes {meta['classes']} (shapes, weights vs config: "
                           f"{wrong[:3]})")
    result = model.load_state_dict(load_file(str(weights)), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ReleaseError(f"{weights} does not match {meta['arch']} with the {meta['head']} head: "
                           f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    return ReleasedModel(model=model.to(dev).eval(), config=cfg, meta=meta, spec=spec, device=dev, path=release_dir,
                         authenticity=authenticity)
