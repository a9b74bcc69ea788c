"""``fundusfm export``: a trained model as a self-describing release folder.

Reads a training output (``model.safetensors``, ``model.json``, ``train_config.json``,
``predictions_test.csv``), the task table and manifests it was trained from, the
preprocessing spec the study used and the study tables, and writes
``model.safetensors`` (the same tensors, re-saved with release metadata), ``config.json``
and ``README.md`` (model card) into the release folder. Optionally registers the
release in the MLflow model registry (a version whose source is the release folder
logged as run artifacts; no pickled model is logged).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from fundusfm.release.loading import (CARD_FILE, CONFIG_FILE, FORMAT, FORMAT_VERSION, META_KEYS, RELEASE_FILES,
                                      WEIGHTS_FILE, ReleaseError, sha256_file)

log = logging.getLogger("fundusfm.export")

DEFAULT_LICENCE = "CC-BY-NC-4.0"
DEFAULT_REGISTERED_NAME = "fundusfm-foundation"
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
    ``{task: [{set, init, fraction, n_runs, metric, mean, sd, ci_lo, ci_hi}, ...]}``."""
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
            lo, hi = _num(r.get(f"{metric}__ci_lo")), _num(r.get(f"{metric}__ci_hi"))
            if lo is None:  # a single run: its bootstrap CI
                lo, hi = _num(r.get(f"{metric}__boot_lo")), _num(r.get(f"{metric}__boot_hi"))
            rows.append({"set": r["set"], "init": r["init"], "fraction": _num(r["fraction"]),
                         "n_runs": int(r["n_runs"]) if _num(r.get("n_runs")) is not None else None,
                         "metric": metric, "mean": _num(r.get(f"{metric}__mean")),
                         "sd": _num(r.get(f"{metric}__sd")), "ci_lo": lo, "ci_hi": hi})
        out[p.stem] = rows
    return out


def run_kind(run_dir: Path, meta: dict) -> tuple[str, str]:
    """``("foundation", "pretrain")`` for a pretraining output, else ``("fine-tuned", <task>)``
    (the task from ``finetune/<task>/<init>/...`` or ``model.json``)."""
    parts = Path(run_dir).resolve().parts
    if "pretrain" in parts[-2:]:
        return "foundation", "pretrain"
    if "finetune" in parts:
        i = len(parts) - 1 - parts[::-1].index("finetune")
        if i + 1 < len(parts):
            return "fine-tuned", parts[i + 1]
    return "fine-tuned", (meta.get("task") or {}).get("name", "task")


def own_test_metrics(run_dir: Path, meta: dict, n_boot: int, seed: int) -> dict | None:
    """Metrics with patient-bootstrap CIs of the released model on its own held-out test set."""
    pred = run_dir / "predictions_test.csv"
    if not pred.is_file() or not meta.get("task"):
        return None
    from fundusfm.evaluate.cli import evaluate_run

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
    return {"architecture": meta["arch"], "num_classes": int(meta["num_classes"]), "num_features": num_features,
            "label_names": list(meta["classes"]), "pretrained_cfg": pcfg}


def build_config(meta: dict, spec: dict, *, num_features: int | None, training: dict, metrics: dict,
                 licence: str, source: dict, software: dict, files: dict) -> dict:
    """``config.json`` of a release (pure: everything comes in as arguments)."""
    from fundusfm.data.vocab import LABELS
    from fundusfm.preprocess.pipeline import ALGORITHM_VERSION

    cfg = timm_config(meta, num_features, licence)
    model = {k: meta[k] for k in META_KEYS}
    model.update(task=meta.get("task"), init=meta.get("init"))
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
                f"encode as {spec['format']} (as the study stored processed images)",
                f"resize bilinear to {meta['img_size']} px, scale 1/255, subtract mean, divide by std (RGB)",
                "softmax (single-label) or independent sigmoids (multilabel)",
            ],
            "model_input": meta.get("preprocessing"),
        },
        "label_vocabulary": {k: {"values": list(v.values), "description": v.description} for k, v in LABELS.items()},
        "training": training, "metrics": metrics, "licence": licence, "source": source,
        "versions": software, "files": files,
    }
    return cfg


# ----------------------------------------------------------------------------- writing

def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def export(run_dir: str | Path, out_dir: str | Path, *, results: str | Path | None = None,
           tables=(), licence: str = DEFAULT_LICENCE, study: str | None = None,
           preprocess_spec: str | Path | None = None, n_boot: int = 200, seed: int = 0) -> Path:
    """Write the release of the training output ``run_dir`` into ``out_dir``.

    Returns ``out_dir``. Files appear only complete (temporary name, then rename); the
    folder holds exactly :data:`RELEASE_FILES`.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from fundusfm.preprocess.pipeline import PreprocessSpec
    from fundusfm.release.card import render_card

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
    _atomic_write(weights, lambda p: save_file({k: v.contiguous() for k, v in state.items()}, str(p), metadata=header))
    files = {WEIGHTS_FILE: {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}}
    cfg = build_config(meta, spec, num_features=num_features, training=training, metrics=metrics, licence=licence,
                       source=source, software=software, files=files)
    text = json.dumps(cfg, indent=2, allow_nan=False) + "\n"
    _atomic_write(out_dir / CONFIG_FILE, lambda p: p.write_text(text))
    card = render_card(cfg)
    _atomic_write(out_dir / CARD_FILE, lambda p: p.write_text(card))
    log.info("release of %s (%s, %s head, classes %s) -> %s", run_dir, meta["arch"], meta["head"],
             meta["classes"], out_dir)
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


# ----------------------------------------------------------------------------- MLflow registry

def _flat_metrics(cfg: dict) -> dict[str, float]:
    """Study metrics as MLflow metric names -> values."""
    out: dict[str, float] = {}
    own = cfg["fundusfm"]["metrics"].get("released_model_test") or {}
    for k, v in (own.get("metrics") or {}).items():
        if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
            out[f"test.{k}"] = float(v)
    for task, rows in cfg["fundusfm"]["metrics"].get("study", {}).items():
        for r in rows:
            if r["mean"] is not None:
                out[f"study.{task}.{r['set']}.{r['init']}.frac{r['fraction']:g}.{r['metric']}"] = float(r["mean"])
    import re

    return {re.sub(r"[^\w.\- /]", "_", k): v for k, v in out.items()}


def register(release_dir: str | Path, name: str = DEFAULT_REGISTERED_NAME, *, uri: str | None = None,
             results: str | Path = "results", study: str | None = None) -> dict | None:
    """Log the release folder as artifacts of an MLflow run and register a model version
    pointing at it, tagged with the study metrics. Idempotent: a version with the same
    weights digest is reused. Returns ``{name, version, run_id, source, tracking_uri}``, or
    ``None`` with a warning when the store cannot be reached (never raises for that)."""
    from fundusfm import tracking

    release_dir = Path(release_dir)
    cfg = json.loads((release_dir / CONFIG_FILE).read_text())
    digest = cfg["fundusfm"]["files"][WEIGHTS_FILE]["sha256"]
    uri = tracking.tracking_uri(uri, results)  # MLFLOW_TRACKING_URI wins, then uri, then sqlite
    study = study or cfg["fundusfm"]["source"].get("study") or "fundusfm"
    metrics = _flat_metrics(cfg)
    try:
        from mlflow import MlflowClient

        exp_id = tracking.ensure_experiment(study, uri)
        if exp_id is None:
            raise tracking.TrackingUnavailable(f"experiment {study!r} could not be set up")
        client = MlflowClient(tracking_uri=uri)
        try:
            client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST
            client.create_registered_model(name, description="fundusfm release: see the model card README.md")
        for mv in client.search_model_versions(f"name='{name}'"):
            if (mv.tags or {}).get("fundusfm.weights_sha256") == digest:
                log.info("MLflow: %s version %s already holds these weights", name, mv.version)
                return {"name": name, "version": str(mv.version), "run_id": mv.run_id, "source": mv.source,
                        "tracking_uri": tracking.redact_uri(uri), "created": False}
        run = client.create_run(exp_id, run_name="release", tags={"fundusfm.key": "release",
                                                                   "fundusfm.weights_sha256": digest})
        rid = run.info.run_id
        import time

        ts = int(time.time() * 1000)
        from mlflow.entities import Metric, Param

        items = list(metrics.items())
        for i in range(0, len(items), 1000):
            client.log_batch(rid, metrics=[Metric(k, v, ts, 0) for k, v in items[i:i + 1000]])
        model = cfg["fundusfm"]["model"]
        client.log_batch(rid, params=[Param(k, str(v)[:6000]) for k, v in
                                      {"arch": model["arch"], "head": model["head"], "img_size": model["img_size"],
                                       "classes": ",".join(model["classes"]), "init": model.get("init"),
                                       "licence": cfg["fundusfm"]["licence"]}.items()])
        client.log_artifacts(rid, str(release_dir), artifact_path="release")
        source = f"{run.info.artifact_uri.rstrip('/')}/release"
        tags = {"fundusfm.weights_sha256": digest, "licence": cfg["fundusfm"]["licence"]}
        tags.update({k: f"{v:.4f}" for k, v in metrics.items()})
        mv = client.create_model_version(name, source=source, run_id=rid, tags=tags,
                                         description=f"{model['arch']} ({model['head']} head), classes "
                                                     f"{model['classes']}; weights sha256 {digest}")
        client.set_terminated(rid)
        log.info("MLflow: registered %s version %s (source %s)", name, mv.version, source)
        return {"name": name, "version": str(mv.version), "run_id": rid, "source": source,
                "tracking_uri": tracking.redact_uri(uri), "created": True}
    except Exception as e:  # noqa: BLE001 - an unreachable registry never fails the release
        log.warning("MLflow registry at %s unreachable or refused the release (%s: %s); the release folder "
                    "is complete, register it later with `fundusfm export --register-only`",
                    tracking.redact_uri(uri), type(e).__name__, str(e)[:300])
        return None


# ----------------------------------------------------------------------------- CLI

def _default_run_dir(results: Path) -> Path:
    """The study's foundation model: ``pretrain/imagenet`` (the paper's best) else ``pretrain/random``."""
    for source in ("imagenet", "random"):
        d = results / "pretrain" / source
        if (d / "model.json").is_file():
            return d
    raise ReleaseError(f"no finished pretraining under {results / 'pretrain'} (imagenet or random); "
                       "pass --run-dir DIR")


def main(argv: list[str] | None = None) -> int:
    """``fundusfm export``: write a release folder (weights, config, model card) of a trained model."""
    p = argparse.ArgumentParser(prog="fundusfm export", description=main.__doc__)
    p.add_argument("--run-dir", help="training output to release (default: the study's foundation model, "
                                     "<results>/pretrain/imagenet, else <results>/pretrain/random)")
    p.add_argument("--results", default=None, help="results folder of the study (default: results, or "
                                                   "inferred from the task table's image paths)")
    p.add_argument("--out", default=None, help="release folder (default: <results>/release)")
    p.add_argument("--tables", nargs="*", default=None,
                   help="study tables for the model card (default: <results>/tables/*.csv)")
    p.add_argument("--preprocess-spec", help="preprocess_spec.json to use when it cannot be found next to the "
                                              "processed images of the task table")
    p.add_argument("--licence", default=DEFAULT_LICENCE, help=f"licence of the weights [{DEFAULT_LICENCE}]")
    p.add_argument("--study", default=None, help="study name (MLflow experiment; model card)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the test-set CIs [200]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--register", action="store_true", help="register the release in the MLflow model registry")
    p.add_argument("--register-only", action="store_true", help="register an existing release folder (--out)")
    p.add_argument("--registered-name", default=DEFAULT_REGISTERED_NAME)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (MLFLOW_TRACKING_URI wins)")
    p.add_argument("--registry-json", default=None, help="write the registration record (or its absence) here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = Path(a.results or "results")
    out = Path(a.out) if a.out else results / "release"
    try:
        if not a.register_only:
            run_dir = Path(a.run_dir) if a.run_dir else _default_run_dir(results)
            # <task>.csv are the study tables; <task>_comparisons.csv etc. are not
            tables = a.tables if a.tables is not None else sorted(
                str(t) for t in (results / "tables").glob("*.csv") if "_" not in t.stem or
                (results / "tables" / f"{t.stem}.md").is_file())
            export(run_dir, out, results=a.results, tables=tables, licence=a.licence, study=a.study,
                   preprocess_spec=a.preprocess_spec, n_boot=a.n_boot, seed=a.seed)
        record = None
        if a.register or a.register_only:
            record = register(out, a.registered_name, uri=a.tracking_uri, results=results, study=a.study)
        if a.registry_json:
            Path(a.registry_json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.registry_json).write_text(json.dumps(record or {"registered": False}, indent=2) + "\n")
    except (ReleaseError, ValueError, KeyError) as e:
        print(f"fundusfm export: {e}", file=sys.stderr)
        return 1
    return 0
