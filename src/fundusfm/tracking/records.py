"""Result files -> run records: what MLflow should hold about each training job.

Pure file reading, no MLflow import: :func:`read_run_dir` turns a training folder into a
:class:`RunRecord` (raises ValueError naming the file on bad input). Names of metrics and
params pass through :func:`metric_name`, the one naming rule of every MLflow write
(runs and the model registry alike).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fundusfm import layout

KEY_TAG = "fundusfm.key"  # identity of a run: the job's folder relative to results/ (layout key)
TRAIN_HASH_TAG = "fundusfm.train_hash"  # which training outputs the run mirrors
HISTORY_TAG = "fundusfm.history_hash"  # set once the per-epoch history is logged
ARTIFACTS_TAG = "fundusfm.artifacts_hash"  # set once the current artifacts are logged
CONFIG_HASH_TAG = "fundusfm.config_hash"  # parent run: which study config it holds
PARENT_TAG = "mlflow.parentRunId"
STUDY_PREFIX = "study:"

# Files of a training folder that are logged as artifacts (the weights only on request).
ARTIFACT_PATTERNS = ("model.json", "history.csv", "train_config.json", "predictions_*.csv")
MODEL_FILE = "model.safetensors"

_BAD_NAME_CHARS = re.compile(r"[^\w.\- :/]")

# MLflow limits (mlflow.utils.validation); chunks keep each request within them.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


@dataclass
class RunRecord:
    """Everything MLflow should hold about one training job, read from its files."""

    key: str
    run_dir: Path
    identity: dict
    params: dict[str, str]
    history: list[tuple[str, float, int]]  # (metric, value, epoch)
    final: dict[str, float]  # <set>_<metric>, CI bounds _lo/_hi, <set>_n_images ...
    undefined: dict[str, str]  # <set>_<metric> -> reason
    artifacts: list[tuple[Path, str | None]]  # (file, artifact sub-folder)
    tags: dict[str, str]
    train_hash: str
    artifacts_hash: str
    end_time_ms: int
    warnings: list[str] = field(default_factory=list)


def metric_name(name: str) -> str:
    """A metric/param name MLflow accepts (``auroc:dr`` is fine; other characters -> ``_``)."""
    return _BAD_NAME_CHARS.sub("_", name)


def _flatten(obj, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = obj
    return out


def _param_value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def flatten_params(obj: dict) -> dict[str, str]:
    """Nested config -> ``{"a.b": "value"}`` (lists and scalars as JSON, strings as-is)."""
    return {metric_name(k): _param_value(v) for k, v in _flatten(obj).items()}


def _sha(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    """Short content hash of a file (dataset versions: the manifest's hash)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_history(path: Path) -> list[tuple[str, float, int]]:
    """Per-epoch metrics of history.csv as ``(column, value, epoch)``; empty cells skipped."""
    out = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "epoch" not in reader.fieldnames:
            raise ValueError(f"{path}: no 'epoch' column (columns: {reader.fieldnames})")
        for row_no, row in enumerate(reader, start=2):
            try:
                epoch = int(float(row["epoch"]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}, row {row_no}: epoch {row['epoch']!r} is not a number") from None
            for col, text in row.items():
                if col == "epoch" or col is None or text in (None, ""):
                    continue
                try:
                    value = float(text)
                except ValueError:
                    raise ValueError(f"{path}, row {row_no}: column {col!r} value {text!r} is not a number") from None
                out.append((metric_name(col), value, epoch))
    return out


def read_metrics_dir(metrics_dir: Path) -> tuple[dict[str, float], dict[str, str], list[Path]]:
    """Final metrics of a run from its metrics JSONs (``<set>.json``):
    ``<set>_<metric>``, ``<set>_<metric>_lo``/``_hi`` from the CI, ``<set>_n_images``,
    ``<set>_n_patients``; undefined (null) metrics come back with their reason."""
    final: dict[str, float] = {}
    undefined: dict[str, str] = {}
    files = sorted(metrics_dir.glob("*.json")) if metrics_dir.is_dir() else []
    for path in files:
        rec = read_json(path)
        name = str(rec.get("set") or path.stem)
        metrics = rec.get("metrics")
        if not isinstance(metrics, dict):
            raise ValueError(f"{path}: key 'metrics' must be an object (see docs/architecture.md), got {metrics!r}")
        reasons = rec.get("undefined") or {}
        for m, v in metrics.items():
            k = metric_name(f"{name}_{m}")
            if v is None:
                undefined[k] = str(reasons.get(m, "undefined"))
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ValueError(f"{path}: metrics.{m} must be a number or null, got {v!r}")
            final[k] = float(v)
        for m, bounds in (rec.get("ci") or {}).items():
            if bounds is None:
                continue
            if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2):
                raise ValueError(f"{path}: ci.{m} must be [lo, hi] or null, got {bounds!r}")
            for suffix, b in zip(("lo", "hi"), bounds):
                if b is not None:
                    final[metric_name(f"{name}_{m}_{suffix}")] = float(b)
        for count in ("n_images", "n_patients"):
            if isinstance(rec.get(count), (int, float)):
                final[metric_name(f"{name}_{count}")] = float(rec[count])
    return final, undefined, files


def _prediction_datasets(paths: list[Path]) -> set[str]:
    out: set[str] = set()
    for p in paths:
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames and "dataset" in reader.fieldnames:
                out.update(row["dataset"] for row in reader if row["dataset"])
    return out


def run_datasets(identity: dict, config: dict | None, predictions: list[Path]) -> list[str]:
    """Datasets a run uses: the config's (development and external, so the tags do not
    depend on which predictions exist yet) and any other found in its predictions."""
    named: set[str] = set()
    if config:
        if identity["kind"] == "pretrain":
            named = set(config.get("pretrain", {}).get("datasets", []))
        else:
            task = config.get("tasks", {}).get(identity["task"]) or {}
            named = set(task.get("datasets", [])) | set(task.get("external", []))
    return sorted(named | _prediction_datasets(predictions))


def read_run_dir(
    run_dir: str | os.PathLike,
    identity: dict | None = None,
    metrics_dir: str | os.PathLike | None = None,
    config: dict | None = None,
    study: str | None = None,
    log_model: bool = False,
) -> RunRecord:
    """Read a finished training folder (and its metrics JSONs) into a :class:`RunRecord`.

    ``identity`` defaults to what the folder's path says; ``metrics_dir`` defaults to
    ``<results>/metrics/<task>/<init>/fold<k>/frac<f>/seed<s>`` for fine-tuning runs.
    Raises ValueError naming the file when a result file is malformed.
    """
    run_dir = Path(run_dir)
    key, results = layout.run_key(run_dir)
    ident = {**layout.parse_key(key), **(identity or {})}
    required = [run_dir / "model.json", run_dir / "history.csv"]
    missing = [p.name for p in required if not p.is_file()]
    if missing:
        raise ValueError(f"{run_dir}: training outputs missing {missing} (the job has not finished)")
    cfg_path = run_dir / "train_config.json"
    train_config = read_json(cfg_path) if cfg_path.is_file() else {}
    model_meta = read_json(run_dir / "model.json")
    if "seed" not in ident and isinstance(train_config.get("seed"), int):
        ident["seed"] = train_config["seed"]

    params = {metric_name(k): _param_value(v) for k, v in ident.items()}
    # what the job used (seconds, memory) differs between reruns: metrics, not params
    used = train_config.get("resources") or {}
    params.update(flatten_params({k: v for k, v in train_config.items() if k != "resources"}))
    warnings = []
    for k, v in list(params.items()):
        if len(v) > MAX_PARAM_VAL_LENGTH:
            params[k] = v[: MAX_PARAM_VAL_LENGTH - 3] + "..."
            warnings.append(f"param {k} truncated to {MAX_PARAM_VAL_LENGTH} chars (full value in train_config.json)")

    history = read_history(run_dir / "history.csv")

    if metrics_dir is None:
        metrics_dir = layout.metrics_dir_of_key(results, key)
    final, undefined, metric_files = read_metrics_dir(Path(metrics_dir)) if metrics_dir else ({}, {}, [])
    final.update({f"job_{k}": float(v) for k, v in used.items() if isinstance(v, (int, float))})

    predictions = sorted(run_dir.glob("predictions_*.csv"))
    artifacts: list[tuple[Path, str | None]] = []
    for pattern in ARTIFACT_PATTERNS:
        artifacts += [(p, None) for p in sorted(run_dir.glob(pattern)) if p.is_file()]
    artifacts += [(p, "metrics") for p in metric_files]
    if log_model and (run_dir / MODEL_FILE).is_file():
        artifacts.append((run_dir / MODEL_FILE, None))

    tags = {KEY_TAG: key, "fundusfm.kind": ident["kind"]}
    for k in ("task", "init", "adaptation", "fold", "fraction", "seed"):
        if k in ident:
            tags[k] = str(ident[k])
    if study:
        tags["study"] = study
    for k in ("arch", "task_type", "img_size"):
        if k in model_meta and not isinstance(model_meta[k], (dict, list)):
            tags[f"model.{k}"] = str(model_meta[k])
    datasets = run_datasets(ident, config, predictions)
    if datasets:
        tags["datasets"] = ",".join(datasets)
    for ds in datasets:
        manifest = results / "manifests" / f"{ds}.csv"
        # The manifest's hash versions the dataset as this run saw it.
        tags[f"dataset.{ds}"] = file_digest(manifest) if manifest.is_file() else "unknown"
    for k, reason in undefined.items():
        tags[f"undefined.{k}"] = reason[:MAX_TAG_VAL_LENGTH]

    train_files = [p for p in (run_dir / "model.json", run_dir / "history.csv", cfg_path) if p.is_file()]
    train_hash = _sha(train_files)
    tags[TRAIN_HASH_TAG] = train_hash
    art_hash = _sha([p for p, _ in artifacts if p.name != MODEL_FILE])
    if log_model and (run_dir / MODEL_FILE).is_file():
        art_hash = hashlib.sha256(f"{art_hash}:{file_digest(run_dir / MODEL_FILE)}".encode()).hexdigest()[:16]
    end_time_ms = int((run_dir / "history.csv").stat().st_mtime * 1000)
    return RunRecord(key, run_dir, ident, params, history, final, undefined, artifacts, tags,
                     train_hash, art_hash, end_time_ms, warnings)


def expected_keys(config: dict) -> list[str]:
    """Run keys of every training job the study config asks for."""
    from fundusfm import config as fcfg

    keys = [layout.pretrain_key(s) for s in fcfg.pretrain_sources(config)]
    return keys + [r.key for r in fcfg.runs(config)]
