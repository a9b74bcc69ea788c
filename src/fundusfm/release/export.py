"""``fundusfm export``: a trained model as a self-describing release folder.

Reads a training output (``model.safetensors``, ``model.json``, ``train_config.json``,
``predictions_test.csv``), the task table and manifests it was trained from, the
preprocessing spec the study used and the study tables, and writes
``model.safetensors`` (the same tensors, re-saved with release metadata), ``config.json``
and ``README.md`` (model card) into the release folder. Optionally registers the
release in the MLflow model registry with ``fundusfm register``
(:mod:`fundusfm.tracking.registry`).
"""

from __future__ import annotations

import json
import logging
import math
import platform
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from fundusfm import layout
from fundusfm.fileio import write_safetensors, write_text
from fundusfm.hashing import sha256_file
from fundusfm.release.loading import (CARD_FILE, CONFIG_FILE, FORMAT, FORMAT_VERSION, META_KEYS, RELEASE_FILES,
                                      WEIGHTS_FILE, ReleaseError, authorship_block, check_model_meta, sign_config)

log = logging.getLogger("fundusfm.export")

DEFAULT_LICENCE = "CC-BY-NC-4.0"
SPEC_FILE = "preprocess_spec.json"
TRAINING_ROLES = ("train", "val")
# headline metrics shown in the model card, first present wins per task type
HEADLINE = ("auroc", "kappa_quadratic", "accuracy", "aupr", "balanced_accuracy", "f1_macro")


# ----------------------------------------------------------------------------- reading inputs

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReleaseError(f"{path} missing") from None
    except json.JSONDecodeError as e:
        raise ReleaseError(f"{path}: not valid JSON ({e})") from None


def read_run(run_dir: str | Path) -> tuple[dict, dict]:
    """``model.json`` and ``train_config.json`` of a finished training output."""
    run_dir = Path(run_dir)
    for name in (WEIGHTS_FILE, "model.json"):
        if not (run_dir / name).is_file():
            raise ReleaseError(f"{run_dir / name} missing: is {run_dir} a finished training output?")
    meta = _read_json(run_dir / "model.json")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ReleaseError(f"{run_dir / 'model.json'}: key(s) {missing} missing")
    train_cfg = _read_json(run_dir / "train_config.json") if (run_dir / "train_config.json").is_file() else {}
    return meta, train_cfg


def training_data(train_cfg: dict, results: str | Path | None = None) -> tuple[dict, dict | None]:
    """Summary of the data the model was trained on, and the preprocessing spec used.

    From the task table of ``train_cfg['table']`` (fold ``train_cfg['fold']``): per dataset
    the images and patients per role; the dataset's manifest (``<results>/manifests``: rows,
    patients, SHA-256) and ``preprocess_spec.json`` next to its processed images. The
    specs of all datasets must agree (the model expects one preprocessing).
    """
    table = train_cfg.get("table")
    if not table:
        return {"note": "train_config.json names no task table; training data unknown"}, None
    table = Path(table)
    if not table.is_file():
        raise ReleaseError(f"task table {table} (train_config.json key 'table') missing; run from the "
                           "study's working directory")
    fold = int(train_cfg.get("fold", 0))
    df = pd.read_csv(table, dtype=str, keep_default_na=False)
    col = f"fold{fold}"
    for c in ("dataset", "image_id", "patient_id", "image", col):
        if c not in df.columns:
            raise ReleaseError(f"{table}: column {c!r} missing (task table contract)")
    summary: dict = {"task_table": str(table), "task_table_sha256": sha256_file(table), "fold": fold,
                     "label_fraction": train_cfg.get("fraction"), "seed": train_cfg.get("seed"),
                     "n_images_used": train_cfg.get("n_images"), "datasets": {}}
    specs: dict[str, dict] = {}
    for ds, sub in df.groupby("dataset", sort=True):
        roles = sub[col].value_counts().to_dict()
        entry = {"images_by_role": {k: int(v) for k, v in sorted(roles.items())},
                 "n_images": int(len(sub)), "n_patients": int(sub["patient_id"].nunique())}
        ok_images = [p for p in sub["image"] if p]
        if ok_images:
            pre_dir = Path(ok_images[0]).parent.parent  # <results>/preprocessed/<ds>/images/<id>.png
            spec_path = pre_dir / SPEC_FILE
            if spec_path.is_file():
                specs[ds] = _read_json(spec_path)
                entry["preprocess_spec"] = str(spec_path)
            res = Path(results) if results else pre_dir.parent.parent
            manifest = res / "manifests" / f"{ds}.csv"
            if manifest.is_file():
                man = pd.read_csv(manifest, dtype=str, keep_default_na=False)
                entry["manifest"] = {"path": str(manifest), "sha256": sha256_file(manifest), "n_images": int(len(man)),
                                     "n_patients": int(man["patient_id"].nunique()) if "patient_id" in man else None}
        summary["datasets"][ds] = entry
    used = [ds for ds, e in summary["datasets"].items() if any(e["images_by_role"].get(r) for r in TRAINING_ROLES)]
    summary["training_datasets"] = used
    distinct = {json.dumps(s, sort_keys=True) for ds, s in specs.items() if ds in used}
    if len(distinct) > 1:
        raise ReleaseError(f"the training datasets {used} were preprocessed with different specs "
                           f"({', '.join(summary['datasets'][d].get('preprocess_spec', '?') for d in used)}); "
                           "a release needs one preprocessing")
    spec = json.loads(distinct.pop()) if distinct else None
    return summary, spec


def _num(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def study_tables(paths) -> dict:
    """Headline rows of study tables (``results/tables/<task>.csv``), per task:
    ``{task: [{set, init, adaptation, fraction, n_runs, metric, mean, sd, ci_lo, ci_hi}, ...]}``
    (``adaptation`` is ``finetune`` for tables written before the grid had one)."""
    out: dict[str, list[dict]] = {}
    for p in map(Path, paths):
        df = pd.read_csv(p)
        for c in ("set", "init", "fraction"):
            if c not in df.columns:
                raise ReleaseError(f"{p}: column {c!r} missing (study table contract)")
        metric = next((m for m in HEADLINE if f"{m}__mean" in df.columns), None)
        rows = []
        for r in df.to_dict("records"):
            if metric is None:
                break
            # the headline interval (runs and patients) first, else the across-run t interval,
            # else a single run's bootstrap CI (fundusfm.evaluate.tables)
            lo, hi = _num(r.get(f"{metric}__hl_lo")), _num(r.get(f"{metric}__hl_hi"))
            if lo is None:
                lo, hi = _num(r.get(f"{metric}__ci_lo")), _num(r.get(f"{metric}__ci_hi"))
            if lo is None:
                lo, hi = _num(r.get(f"{metric}__boot_lo")), _num(r.get(f"{metric}__boot_hi"))
            adaptation = r.get("adaptation") if isinstance(r.get("adaptation"), str) else "finetune"
            rows.append({"set": r["set"], "init": r["init"], "adaptation": adaptation, "fraction": _num(r["fraction"]),
                         "n_runs": int(r["n_runs"]) if _num(r.get("n_runs")) is not None else None,
                         "metric": metric, "mean": _num(r.get(f"{metric}__mean")),
                         "sd": _num(r.get(f"{metric}__sd")), "ci_lo": lo, "ci_hi": hi})
        out[p.stem] = rows
    return out


def run_kind(run_dir: Path, meta: dict) -> tuple[str, str]:
    """``("foundation", "pretrain")`` for a pretraining output, else ``("fine-tuned", <task>)``
    (the task from the folder's place in the results tree, :mod:`fundusfm.layout`, or
    from ``model.json`` for a folder elsewhere)."""
    try:
        ident = layout.parse_key(layout.run_key(run_dir)[0])
    except ValueError:
        return "fine-tuned", (meta.get("task") or {}).get("name", "task")
    if ident["kind"] == layout.PRETRAIN:
        return "foundation", "pretrain"
    return "fine-tuned", ident["task"]


def own_test_metrics(run_dir: Path, meta: dict, n_boot: int, seed: int) -> dict | None:
    """Metrics with patient-bootstrap CIs of the released model on its own held-out test set."""
    pred = run_dir / "predictions_test.csv"
    if not pred.is_file() or not meta.get("task"):
        return None
    from fundusfm.evaluate.record import evaluate_run

    val = run_dir / "predictions_val.csv"
    info = dict(task=run_kind(run_dir, meta)[1], init=meta.get("init", ""), fold=int(meta.get("fold", 0)),
                fraction=float(meta.get("fraction", 1.0)), seed=int(meta.get("seed", 0)), set="test")
    try:
        rec = evaluate_run(pred, meta["task"], info, val if val.is_file() else None, n_boot=n_boot, seed=seed)
    except Exception as e:  # noqa: BLE001 - a card without these numbers beats no release
        log.warning("metrics of %s could not be computed: %s", pred, e)
        return None
    return {k: rec[k] for k in ("n_images", "n_patients", "metrics", "ci", "undefined", "bootstrap")}


def versions() -> dict:
    """Versions of the software that produced and runs the release."""
    import timm
    import torch

    import fundusfm

    return {"fundusfm": fundusfm.__version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


# ----------------------------------------------------------------------------- the config

def timm_config(meta: dict, num_features: int | None, licence: str) -> dict:
    """The timm-readable part of ``config.json`` (``timm.create_model('local-dir:DIR')``)."""
    import timm

    base = dict(timm.models.get_pretrained_cfg(meta["arch"]).to_dict()) if timm.models.get_pretrained_cfg(
        meta["arch"]) else {}
    size = int(meta["img_size"])
    pcfg = {k: base[k] for k in ("first_conv", "classifier", "pool_size") if base.get(k) is not None}
    pcfg.update(tag="fundusfm", custom_load=False, input_size=[3, size, size], fixed_input_size=False,
                interpolation="bilinear", crop_pct=1.0, crop_mode="center",
                mean=[float(x) for x in meta["mean"]], std=[float(x) for x in meta["std"]],
                num_classes=int(meta["num_classes"]), license=licence.lower())
    if "pool_size" in pcfg:
        pcfg.pop("pool_size")  # depends on the input size; timm recomputes what it needs
    out = {"architecture": meta["arch"], "num_classes": int(meta["num_classes"]), "num_features": num_features,
           "label_names": list(meta["classes"]), "pretrained_cfg": pcfg}
    args = dict(meta.get("model_args") or {})  # the model's definition (e.g. global_pool), as trained
    if base.get("fixed_input_size"):  # ViTs: timm rebuilds them at the trained size, not the arch's default
        args["img_size"] = size
    if args:
        out["model_args"] = args
    return out


def build_config(meta: dict, spec: dict, *, num_features: int | None, training: dict, metrics: dict,
                 licence: str, source: dict, software: dict, files: dict, authorship: dict | None = None) -> dict:
    """``config.json`` of a release (pure: everything comes in as arguments)."""
    from fundusfm.data.vocab import LABELS
    from fundusfm.preprocess.io import FORMATS
    from fundusfm.preprocess.pipeline import ALGORITHM_VERSION

    cfg = timm_config(meta, num_features, licence)
    model = {k: meta[k] for k in META_KEYS}
    model.update(task=meta.get("task"), init=meta.get("init"))
    if meta.get("model_args"):  # the timm arguments of the model's definition (e.g. global_pool)
        model["model_args"] = dict(meta["model_args"])
    cfg["fundusfm"] = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": model,
        "preprocessing": {
            "preprocess_spec": spec, "algorithm_version": ALGORITHM_VERSION,
            "steps": [
                "decode (EXIF orientation applied; 16-bit rescaled; transparency -> black)",
                "detect the circular field of view (FOV), including cut top/bottom edges",
                f"crop the FOV square, resize to {spec['size']} px, black outside the FOV",
                "quality grade (thresholds in preprocess_spec); 'reject' grade -> not predicted",
                f"normalise: {spec['normalise']}",
                f"encode as {spec['format']}: {FORMATS.get(spec['format'], '?')} (as the study stored its training copies)",
                f"decode (OpenCV), resize to {meta['img_size']} px (area filter when shrinking, bilinear when enlarging), scale 1/255, subtract mean, divide by std (RGB)",
                "softmax (single-label) or independent sigmoids (multilabel)",
            ],
            "model_input": meta.get("preprocessing"),
        },
        "label_vocabulary": {k: {"values": list(v.values), "description": v.description} for k, v in LABELS.items()},
        "training": training, "metrics": metrics, "licence": licence, "source": source,
        "versions": software, "files": files,
        "authorship": authorship or authorship_block(None),
    }
    return cfg


# ----------------------------------------------------------------------------- writing

def export(run_dir: str | Path, out_dir: str | Path, *, results: str | Path | None = None,
           tables=(), licence: str = DEFAULT_LICENCE, study: str | None = None,
           preprocess_spec: str | Path | None = None, n_boot: int = 200, seed: int = 0,
           sign_key: str | Path | None = None) -> Path:
    """Write the release of the training output ``run_dir`` into ``out_dir``.

    ``sign_key``: an Ed25519 private key file (:mod:`fundusfm.release.signing`); the
    release is then signed by it, else it carries its integrity digest only (``integrity
    only, unsigned``, as the card says). Returns ``out_dir``. Files appear only complete
    (temporary name, then rename); the folder holds exactly :data:`RELEASE_FILES`; the
    same inputs give the same bytes.
    """
    from safetensors import safe_open

    from fundusfm.preprocess.pipeline import PreprocessSpec
    from fundusfm.release import signing
    from fundusfm.release.card import render_card

    private_key = signing.load_private_key(sign_key) if sign_key else None  # a bad key fails before any work
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    meta, train_cfg = read_run(run_dir)
    training, spec = training_data(train_cfg, results)
    if preprocess_spec is not None:
        spec = _read_json(Path(preprocess_spec))
    if spec is None:
        raise ReleaseError(f"no {SPEC_FILE} found for the training data of {run_dir} (next to the processed "
                           "images of its task table); pass --preprocess-spec FILE")
    spec = asdict(PreprocessSpec.from_dict(spec))  # validated, defaults filled
    metrics = {"released_model_test": own_test_metrics(run_dir, meta, n_boot, seed),
               "study": study_tables(tables)}
    with safe_open(str(run_dir / WEIGHTS_FILE), "pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    num_features = _num_features(meta, state)
    kind, task_name = run_kind(run_dir, meta)
    source = {"run_dir": str(run_dir), "kind": kind, "task": task_name, "init": meta.get("init"), "study": study,
              "weights_sha256_in_run": sha256_file(run_dir / WEIGHTS_FILE),
              "best_epoch": meta.get("best_epoch"), "monitor": meta.get("monitor"), "best_value": meta.get("best_value")}
    software = {"export": versions(), "training": train_cfg.get("versions", {})}

    out_dir.mkdir(parents=True, exist_ok=True)
    stray = sorted(p.name for p in out_dir.iterdir() if p.name not in RELEASE_FILES and not p.name.startswith("."))
    if stray:
        raise ReleaseError(f"{out_dir} holds other files {stray[:5]}; export into an empty folder or a previous release")
    weights = out_dir / WEIGHTS_FILE
    # the same tensors; the header's metadata says what they are (str -> str only)
    header = {"format": "pt", "architecture": meta["arch"], "head": meta["head"],
              "num_classes": str(meta["num_classes"]), "fundusfm_release": str(FORMAT_VERSION)}
    write_safetensors(weights, state, metadata=header)  # sorted header: the same tensors give the same bytes
    files = {WEIGHTS_FILE: {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}}
    cfg = build_config(meta, spec, num_features=num_features, training=training, metrics=metrics, licence=licence,
                       source=source, software=software, files=files, authorship=authorship_block(private_key))
    card = render_card(cfg)
    write_text(out_dir / CARD_FILE, card)
    files[CARD_FILE] = {"sha256": sha256_file(out_dir / CARD_FILE), "bytes": (out_dir / CARD_FILE).stat().st_size}
    # signed as it reads back (JSON types), so that loading recomputes the same digest
    cfg = sign_config(json.loads(json.dumps(cfg, allow_nan=False)), private_key)
    check_model_meta(cfg, out_dir / CONFIG_FILE)  # never write a release that loading refuses
    write_text(out_dir / CONFIG_FILE, json.dumps(cfg, indent=2, allow_nan=False) + "\n")
    log.info("release of %s (%s, %s head, classes %s) -> %s; %s", run_dir, meta["arch"], meta["head"],
             meta["classes"], out_dir, cfg["fundusfm"]["authorship"]["statement"])
    return out_dir


def _num_features(meta: dict, state: dict) -> int | None:
    """Backbone feature width: input width of the first head layer in the state dict."""
    import timm

    clf = (timm.models.get_pretrained_cfg(meta["arch"]).to_dict() if timm.models.get_pretrained_cfg(meta["arch"])
           else {}).get("classifier")
    for key in (f"{clf}.weight", f"{clf}.0.weight"):
        if clf and key in state and state[key].ndim == 2:
            return int(state[key].shape[1])
    return None
