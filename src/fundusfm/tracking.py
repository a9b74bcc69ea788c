"""MLflow mirror of the study's result files: per-job logging and an idempotent sync.

Result files are the source of truth; MLflow mirrors them. One experiment per study,
one parent run for the study (tag ``fundusfm.key = study:<name>``) and one child run per
training job (tag ``fundusfm.key`` = the job's folder relative to the results folder,
e.g. ``finetune/multi/random/fold0/frac1/seed0`` or ``pretrain/random``).

Every write is keyed by that tag and checked against what the run already holds, so
logging a job twice (right after training, then again in the final sync) completes the
existing run instead of creating a second one. A store that cannot be reached never
fails a job: the call warns and returns ``None``, and the final sync fills in the gaps.

File reading is kept apart from MLflow calls: :func:`read_run_dir` turns a training
folder into a :class:`RunRecord` (plain data, raises naming the file on bad input), and
:func:`_push` writes a record to a run.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from fundusfm.jsonargs import load_json_arg

log = logging.getLogger(__name__)

KEY_TAG = "fundusfm.key"  # identity of a run: the job's folder relative to results/
TRAIN_HASH_TAG = "fundusfm.train_hash"  # which training outputs the run mirrors
HISTORY_TAG = "fundusfm.history_hash"  # set once the per-epoch history is logged
ARTIFACTS_TAG = "fundusfm.artifacts_hash"  # set once the current artifacts are logged
CONFIG_HASH_TAG = "fundusfm.config_hash"  # parent run: which study config it holds
PARENT_TAG = "mlflow.parentRunId"
STUDY_PREFIX = "study:"

# Short HTTP timeouts: an unreachable server must cost a job seconds, not minutes
# (MLflow's defaults retry for several minutes). The user's own settings win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # MLflow parses it as an int
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}

# Files of a training folder that are logged as artifacts (the weights only on request).
ARTIFACT_PATTERNS = ("model.json", "history.csv", "train_config.json", "predictions_*.csv")
MODEL_FILE = "model.safetensors"

_FINETUNE_RE = re.compile(
    r"^finetune/(?P<task>[^/]+)/(?P<init>[^/]+)/fold(?P<fold>\d+)/frac(?P<fraction>[^/]+)/seed(?P<seed>\d+)$"
)
_PRETRAIN_RE = re.compile(r"^pretrain/(?P<init>[^/]+)$")
_BAD_NAME_CHARS = re.compile(r"[^\w.\- :/]")

# MLflow limits (mlflow.utils.validation); chunks keep each request within them.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


class TrackingUnavailable(RuntimeError):
    """The tracking store could not be reached or refused the write."""


# ---------------------------------------------------------------------------- URIs


def tracking_uri(config_uri: str | None = None, results: str | os.PathLike = "results") -> str:
    """The tracking URI to use: ``MLFLOW_TRACKING_URI`` wins, then the config's
    ``mlflow.tracking_uri``, then a SQLite file ``<results>/mlflow.db`` (absolute, so
    every job of a workflow finds the same store whatever its working directory)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    if config_uri:
        return config_uri
    return f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"


def redact_uri(uri: str) -> str:
    """The URI without a password (for logs and summary files)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _sqlite_artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store live next to the database file (MLflow's own
    default is ./mlruns of whatever folder the job happens to run in)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    if str(db) in ("", ":memory:"):
        return None
    return (db.parent / "mlflow-artifacts").resolve().as_uri()


def _quick_http() -> None:
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


# ---------------------------------------------------------------------------- client


def _is_locked(err: BaseException) -> bool:
    return "database is locked" in str(err).lower()


class _RetryingClient:
    """MlflowClient whose calls retry on SQLite's "database is locked" (parallel jobs
    writing to one SQLite file) with jittered exponential backoff."""

    def __init__(self, uri: str, attempts: int = 10):
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=uri)
        self._attempts = attempts

    def __getattr__(self, name):
        fn = getattr(self._client, name)
        if not callable(fn):
            return fn

        def call(*args, **kwargs):
            delay = 0.1
            for attempt in range(self._attempts):
                try:
                    return fn(*args, **kwargs)
                except Exception as e:  # noqa: BLE001 - only "locked" is retried
                    if not _is_locked(e) or attempt == self._attempts - 1:
                        raise
                    log.info("MLflow store busy (%s); retrying %s in %.1fs", e.__class__.__name__, name, delay)
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 5.0)

        return call


def _client(uri: str) -> _RetryingClient:
    _quick_http()
    return _RetryingClient(uri)


def _get_or_create_experiment(client, study: str, uri: str) -> str:
    from mlflow.entities import LifecycleStage
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(study)
    if exp is not None:
        if exp.lifecycle_stage == LifecycleStage.DELETED:
            log.info("MLflow experiment %r was deleted; restoring it", study)
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(study, artifact_location=_sqlite_artifact_root(uri), tags={"fundusfm.study": study})
    except MlflowException as e:
        # Another job created it between our lookup and our create.
        exp = client.get_experiment_by_name(study)
        if exp is None:
            raise
        log.debug("experiment %r created concurrently (%s)", study, e)
        return exp.experiment_id


def ensure_experiment(study: str, uri: str) -> str | None:
    """The experiment of a study (created if missing); ``None`` with a warning when the
    store cannot be reached. Run once before parallel training jobs start, so they never
    race to create it."""
    try:
        return _get_or_create_experiment(_client(uri), study, uri)
    except Exception as e:  # noqa: BLE001 - tracking must never fail the study
        log.warning("MLflow store %s unreachable, experiment %r not set up: %s", redact_uri(uri), study, _short(e))
        return None


def _short(e: BaseException, n: int = 300) -> str:
    text = f"{e.__class__.__name__}: {e}"
    return text if len(text) <= n else text[:n] + "..."


# ---------------------------------------------------------------------------- reading result files


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


def run_key(run_dir: str | os.PathLike) -> tuple[str, Path]:
    """``(key, results_dir)`` of a training folder: the key is its path from the last
    ``finetune``/``pretrain`` component on (e.g. ``finetune/t/random/fold0/frac1/seed0``)."""
    parts = Path(os.path.abspath(run_dir)).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("finetune", "pretrain"):
            key = "/".join(parts[i:])
            if _FINETUNE_RE.match(key) or _PRETRAIN_RE.match(key):
                return key, Path(*parts[:i])
    raise ValueError(
        f"{run_dir}: not a training folder (expected .../finetune/<task>/<init>/fold<k>/frac<f>/seed<s> "
        f"or .../pretrain/<source>, see docs/architecture.md)"
    )


def identity_from_key(key: str) -> dict:
    """task, init, fold, fraction, seed (and kind) of a run from its key."""
    m = _FINETUNE_RE.match(key)
    if m:
        d = m.groupdict()
        return {"kind": "finetune", "task": d["task"], "init": d["init"], "fold": int(d["fold"]),
                "fraction": d["fraction"], "seed": int(d["seed"])}
    m = _PRETRAIN_RE.match(key)
    if m:
        return {"kind": "pretrain", "task": "pretrain", "init": m["init"], "fold": 0, "fraction": "1"}
    raise ValueError(f"not a run key: {key!r}")


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


def _read_json(path: Path) -> dict:
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
        rec = _read_json(path)
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
    key, results = run_key(run_dir)
    ident = {**identity_from_key(key), **(identity or {})}
    required = [run_dir / "model.json", run_dir / "history.csv"]
    missing = [p.name for p in required if not p.is_file()]
    if missing:
        raise ValueError(f"{run_dir}: training outputs missing {missing} (the job has not finished)")
    cfg_path = run_dir / "train_config.json"
    train_config = _read_json(cfg_path) if cfg_path.is_file() else {}
    model_meta = _read_json(run_dir / "model.json")
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

    if metrics_dir is None and ident["kind"] == "finetune":
        metrics_dir = results / "metrics" / key.split("/", 1)[1]
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
    for k in ("task", "init", "fold", "fraction", "seed"):
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


def find_run_dirs(results_dir: str | os.PathLike) -> list[Path]:
    """Finished training folders under ``results/pretrain`` and ``results/finetune``
    (a folder counts once its ``model.json`` is there: outputs appear only when a job
    finished)."""
    results = Path(results_dir)
    found = []
    for meta in sorted((results / "pretrain").glob("*/model.json")) + sorted(
        (results / "finetune").glob("*/*/fold*/frac*/seed*/model.json")
    ):
        key = meta.parent.relative_to(results).as_posix()
        if _FINETUNE_RE.match(key) or _PRETRAIN_RE.match(key):
            found.append(meta.parent)
    return found


def expected_keys(config: dict) -> list[str]:
    """Run keys of every training job the study config asks for."""
    from fundusfm import config as fcfg

    keys = [f"pretrain/{s}" for s in fcfg.pretrain_sources(config)]
    return keys + [f"finetune/{r.path}" for r in fcfg.runs(config)]


# ---------------------------------------------------------------------------- writing to MLflow


def _runs_by_key(client, experiment_id: str, key: str | None = None) -> dict[str, list]:
    """Active runs of an experiment grouped by their fundusfm.key (one search, paged)."""
    filt = f"tags.`{KEY_TAG}` = '{key}'" if key and "'" not in key else ""
    out: dict[str, list] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filt, max_results=1000, page_token=token)
        for run in page:
            k = run.data.tags.get(KEY_TAG)
            if k and (key is None or k == key):
                out.setdefault(k, []).append(run)
        token = page.token
        if not token:
            return out


def _canonical(client, runs: list):
    """The oldest run of a key; later duplicates (two jobs that raced) are deleted."""
    if not runs:
        return None
    runs = sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
    for dup in runs[1:]:
        log.warning("deleting duplicate MLflow run %s of %s", dup.info.run_id, dup.data.tags.get(KEY_TAG))
        client.delete_run(dup.info.run_id)
    return runs[0]


def _batches(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _log_params(client, run_id: str, have: dict[str, str], params: dict[str, str]) -> list[str]:
    from mlflow.entities import Param

    new = {k: v for k, v in params.items() if k not in have}
    changed = sorted(k for k, v in params.items() if k in have and have[k] != v)
    for chunk in _batches([Param(k, v) for k, v in sorted(new.items())], PARAMS_PER_BATCH):
        client.log_batch(run_id, params=chunk)
    # MLflow params are immutable; a changed value is reported, the artifact holds the truth.
    return [f"param {k} changed ({have[k]!r} -> {params[k]!r}); MLflow keeps the first value" for k in changed]


def _set_tags(client, run_id: str, have: dict[str, str], tags: dict[str, str]) -> bool:
    from mlflow.entities import RunTag

    todo = [RunTag(k, v) for k, v in sorted(tags.items()) if have.get(k) != v]
    for chunk in _batches(todo, PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=chunk)
    return bool(todo)


def _log_metrics(client, run_id: str, rows: list[tuple[str, float, int]], ts: int) -> None:
    from mlflow.entities import Metric

    metrics = [Metric(k, v, ts, step) for k, v, step in rows]
    for chunk in _batches(metrics, METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)


def _push(client, experiment_id: str, rec: RunRecord, parent_run_id: str | None, existing: list) -> tuple[str, str]:
    """Make the run of ``rec.key`` hold exactly ``rec``; returns ``(run_id, action)``
    with action ``created`` / ``replaced`` / ``updated`` / ``unchanged``."""
    from mlflow.entities import RunStatus

    run = _canonical(client, existing)
    action = "unchanged"
    if run is not None and run.data.tags.get(TRAIN_HASH_TAG) != rec.train_hash:
        # The job was retrained: its old run mirrors files that no longer exist.
        log.info("%s was retrained; replacing MLflow run %s", rec.key, run.info.run_id)
        client.delete_run(run.info.run_id)
        run, action = None, "replaced"
    tags = dict(rec.tags, **{"mlflow.runName": rec.key})
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    if run is None:
        # Identity tags go in with the creation so a half-written run is still findable.
        run = client.create_run(experiment_id, run_name=rec.key,
                                tags={KEY_TAG: rec.key, TRAIN_HASH_TAG: rec.train_hash, **({PARENT_TAG: parent_run_id} if parent_run_id else {})})
        action = "created" if action == "unchanged" else action
        have_tags: dict[str, str] = dict(run.data.tags)
        have_params: dict[str, str] = {}
        have_metrics: dict[str, float] = {}
    else:
        have_tags, have_params, have_metrics = dict(run.data.tags), dict(run.data.params), dict(run.data.metrics)
    run_id = run.info.run_id
    changed = False

    rec.warnings += _log_params(client, run_id, have_params, rec.params)
    changed |= any(k not in have_params for k in rec.params)

    if have_tags.get(HISTORY_TAG) != rec.train_hash:
        # Same timestamp for a key/step on every attempt, so a retried batch dedups in the store.
        _log_metrics(client, run_id, rec.history, rec.end_time_ms)
        tags[HISTORY_TAG] = rec.train_hash
        changed = True

    final = [(k, v, 0) for k, v in sorted(rec.final.items()) if have_metrics.get(k) != v]
    if final:
        _log_metrics(client, run_id, final, rec.end_time_ms)
        changed = True

    if have_tags.get(ARTIFACTS_TAG) != rec.artifacts_hash:
        for path, sub in rec.artifacts:
            client.log_artifact(run_id, str(path), artifact_path=sub)
        tags[ARTIFACTS_TAG] = rec.artifacts_hash
        changed = True

    if rec.warnings:
        tags["fundusfm.warnings"] = "; ".join(rec.warnings)[:MAX_TAG_VAL_LENGTH]
    changed |= _set_tags(client, run_id, have_tags, tags)

    if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
        client.set_terminated(run_id, "FINISHED", end_time=max(rec.end_time_ms, run.info.start_time or 0))
        changed = True
    if action == "unchanged" and changed:
        action = "updated"
    return run_id, action


def ensure_parent(client, experiment_id: str, study: str, config: dict | None = None) -> str:
    """The study's parent run (tag ``fundusfm.key=study:<name>``), created if missing;
    holds the flattened study config as params and as the artifact study_config.json."""
    from mlflow.entities import RunStatus

    key = STUDY_PREFIX + study
    run = _canonical(client, _runs_by_key(client, experiment_id, key).get(key, []))
    if run is None:
        run = client.create_run(experiment_id, run_name=key, tags={KEY_TAG: key, "study": study, "fundusfm.kind": "study"})
    run_id = run.info.run_id
    if config:
        config = _redacted_config(config)
        text = json.dumps(config, sort_keys=True, indent=1, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        if run.data.tags.get(CONFIG_HASH_TAG) != digest:
            flat = {k: v[:MAX_PARAM_VAL_LENGTH] for k, v in flatten_params(config).items()}
            for w in _log_params(client, run_id, dict(run.data.params), flat):
                log.warning("study run: %s", w)
            client.log_text(run_id, text, "study_config.json")
            client.set_tag(run_id, CONFIG_HASH_TAG, digest)
    if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
        client.set_terminated(run_id, "FINISHED")
    return run_id


def _redacted_config(config: dict) -> dict:
    uri = (config.get("mlflow") or {}).get("tracking_uri")
    if not uri:
        return config
    return {**config, "mlflow": {**config["mlflow"], "tracking_uri": redact_uri(uri)}}


def log_run_dir(
    run_dir: str | os.PathLike,
    identity: dict | None,
    uri: str,
    experiment: str,
    parent_run_id: str | None = None,
    metrics_dir: str | os.PathLike | None = None,
    config: dict | None = None,
    log_model: bool = False,
) -> str | None:
    """Log one finished training job (idempotent by its ``fundusfm.key`` tag).

    ``experiment`` is the study name (the experiment is created if missing). A second
    call finds and completes the existing run. Returns the run id, or ``None`` with a
    warning when the store is unreachable or refuses the write: never raises for that.
    Malformed result files raise ValueError naming the file.
    """
    rec = read_run_dir(run_dir, identity, metrics_dir, config=config, study=experiment, log_model=log_model)
    try:
        client = _client(uri)
        exp_id = _get_or_create_experiment(client, experiment, uri)
        if parent_run_id:
            try:
                client.get_run(parent_run_id)
            except Exception:  # noqa: BLE001 - a stale id (e.g. a new store): find/create it
                parent_run_id = None
        if not parent_run_id:
            parent_run_id = ensure_parent(client, exp_id, experiment, config)
        existing = _runs_by_key(client, exp_id, rec.key).get(rec.key, [])
        run_id, action = _push(client, exp_id, rec, parent_run_id, existing)
    except Exception as e:  # noqa: BLE001 - tracking must never fail the job
        log.warning("MLflow store %s: %s not logged (the sync step will retry): %s", redact_uri(uri), rec.key, _short(e))
        return None
    log.info("MLflow run %s of %s: %s", run_id, rec.key, action)
    return run_id


def sync(
    results_dir: str | os.PathLike,
    study: str,
    uri: str,
    config: dict | None = None,
    log_model: bool = False,
    summary_path: str | os.PathLike | None = None,
) -> dict:
    """Mirror every finished training job under ``results_dir`` into MLflow.

    Idempotent: rerunning creates no run, and only logs what changed in the files.
    Also deletes duplicate runs of a key and re-parents every job under the study run.
    Returns (and writes to ``summary_path`` when given) a summary: tracking URI
    (password redacted), experiment and parent run ids, ``reachable``, per-run id and
    action, counts, jobs the config expects but whose outputs are missing, errors.
    """
    from fundusfm import __version__

    results = Path(results_dir)
    records = [read_run_dir(d, config=config, study=study, log_model=log_model) for d in find_run_dirs(results)]
    expected = expected_keys(config) if config and config.get("tasks") else []
    present = {r.key for r in records}
    summary: dict = {
        "study": study,
        "tracking_uri": redact_uri(uri),
        "fundusfm_version": __version__,
        "reachable": False,
        "experiment_id": None,
        "parent_run_id": None,
        "runs": {},
        "counts": {"created": 0, "replaced": 0, "updated": 0, "unchanged": 0, "failed": 0},
        "missing_outputs": sorted(set(expected) - present),
        "errors": [],
    }
    try:
        client = _client(uri)
        exp_id = _get_or_create_experiment(client, study, uri)
        parent = ensure_parent(client, exp_id, study, config)
        existing = _runs_by_key(client, exp_id)
        summary.update(reachable=True, experiment_id=exp_id, parent_run_id=parent)
    except Exception as e:  # noqa: BLE001 - an unreachable store is reported, not fatal
        log.warning("MLflow store %s unreachable; nothing synced: %s", redact_uri(uri), _short(e))
        summary["errors"].append(f"store unreachable: {_short(e)}")
        summary["counts"]["failed"] = len(records)
        records = []
    for rec in _progress(records):
        try:
            run_id, action = _push(client, exp_id, rec, parent, existing.get(rec.key, []))
        except Exception as e:  # noqa: BLE001 - one failed run must not stop the others
            log.warning("%s not synced: %s", rec.key, _short(e))
            summary["errors"].append(f"{rec.key}: {_short(e)}")
            summary["counts"]["failed"] += 1
            continue
        summary["runs"][rec.key] = {"run_id": run_id, "action": action, "final_metrics": len(rec.final)}
        summary["counts"][action] += 1
        for w in rec.warnings:
            log.warning("%s: %s", rec.key, w)
    summary["ok"] = summary["reachable"] and summary["counts"]["failed"] == 0
    log.info("MLflow sync of %s: %s", study, ", ".join(f"{k} {v}" for k, v in summary["counts"].items()))
    if summary_path:
        _write_json(summary_path, summary)
    return summary


def _progress(items: list):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return items
    return tqdm(items, desc="mlflow sync", unit="run", disable=len(items) < 2 or not sys.stderr.isatty())


def _write_json(path: str | os.PathLike, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------------------- CLI


def _json_arg(value: str) -> dict:
    try:
        return load_json_arg(value)
    except ValueError as e:
        raise ValueError(f"--config-json: {e}") from None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="fundusfm sync-mlflow",
        description="Mirror the result files into MLflow (idempotent). Never fails because the "
        "tracking store is unreachable (use --strict for that).",
    )
    ap.add_argument("--results", default="results", help="results folder (default: results)")
    ap.add_argument("--study", help="study name = MLflow experiment (default: the config's or experiment JSON's)")
    ap.add_argument("--tracking-uri", help="tracking URI (MLFLOW_TRACKING_URI wins; default: sqlite under --results)")
    ap.add_argument("--config-json", help="resolved study config (JSON text or file): parent-run params, "
                    "dataset lists, expected jobs, mlflow.enabled / mlflow.log_model")
    ap.add_argument("--run-dir", help="log just this finished training folder (used right after each job)")
    ap.add_argument("--summary", help="write the sync summary JSON here (default: <results>/mlflow/sync.json)")
    ap.add_argument("--experiment-only", action="store_true",
                    help="only create the experiment and the study's parent run, and write --experiment-json")
    ap.add_argument("--experiment-json", help="experiment record: written by --experiment-only, read otherwise "
                    "(default: <results>/mlflow/experiment.json)")
    ap.add_argument("--log-model", action="store_true", help="also log model.safetensors as an artifact")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the store is unreachable or a run failed")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def sync_main(argv: list[str] | None = None) -> int:
    """``fundusfm sync-mlflow``: see ``--help``. Exit 0 even when the store is down
    (unless ``--strict``); exit 1 for malformed result files or a bad config."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = Path(args.results)
    exp_json = Path(args.experiment_json) if args.experiment_json else results / "mlflow" / "experiment.json"
    try:
        config = _json_arg(args.config_json) if args.config_json else None
    except ValueError as e:
        log.error("%s", e)
        return 1
    record = {}
    if not args.experiment_only and exp_json.is_file():
        try:
            record = _read_json(exp_json)
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable experiment record: %s", e)
        # The study config recorded when the experiment was set up, so a job-level log
        # tags its run exactly as the final sync will.
        config = config or record.get("config")
    mcfg = (config or {}).get("mlflow") or {}
    enabled = mcfg.get("enabled", record.get("enabled", True))
    study = args.study or (config or {}).get("study") or record.get("study")
    # Same resolution as when the experiment was set up: env, then config, then results/.
    uri = tracking_uri(args.tracking_uri or mcfg.get("tracking_uri") or record.get("config_tracking_uri"), results)
    log_model = args.log_model or bool(mcfg.get("log_model", False))

    if args.experiment_only:
        if not study:
            log.error("--experiment-only needs --study or a config with 'study'")
            return 1
        out = {"study": study, "enabled": bool(enabled), "tracking_uri": redact_uri(uri),
               "config_tracking_uri": args.tracking_uri or mcfg.get("tracking_uri"),
               "experiment_id": None, "parent_run_id": None, "reachable": False, "config": config}
        if enabled:
            exp_id = ensure_experiment(study, uri)
            if exp_id is not None:
                try:
                    out["parent_run_id"] = ensure_parent(_client(uri), exp_id, study, config)
                    out.update(experiment_id=exp_id, reachable=True)
                except Exception as e:  # noqa: BLE001
                    log.warning("MLflow store %s: study run not set up: %s", redact_uri(uri), _short(e))
        else:
            log.info("mlflow.enabled is false: nothing to set up")
        _write_json(exp_json, out)
        return 1 if args.strict and enabled and not out["reachable"] else 0

    if not enabled:
        log.info("mlflow.enabled is false: nothing logged")
        if not args.run_dir:
            _write_json(args.summary or results / "mlflow" / "sync.json", {"study": study, "enabled": False, "ok": True})
        return 0

    if args.run_dir:
        # Right after a training job: never fail it, whatever happens here.
        if not study:
            log.info("no study name (no --study, config or %s): MLflow logging skipped", exp_json)
            return 0
        try:
            run_id = log_run_dir(args.run_dir, None, uri, study, parent_run_id=record.get("parent_run_id"),
                                 config=config, log_model=log_model)
        except Exception as e:  # noqa: BLE001
            log.warning("%s not logged to MLflow: %s", args.run_dir, _short(e))
            run_id = None
        return 1 if args.strict and run_id is None else 0

    if not study:
        log.error("sync needs --study, a config with 'study' or %s", exp_json)
        return 1
    try:
        summary = sync(results, study, uri, config, log_model=log_model,
                       summary_path=args.summary or results / "mlflow" / "sync.json")
    except ValueError as e:
        log.error("%s", e)
        return 1
    return 1 if args.strict and not summary["ok"] else 0


if __name__ == "__main__":
    sys.exit(sync_main())
