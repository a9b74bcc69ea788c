"""The MLflow model registry: a release folder registered as a model version.

The release's files are logged as artifacts of a ``release`` run of the study's
experiment and a model version points at them, tagged with the study metrics (names by
:func:`fundusfm.tracking.records.metric_name`, the rule of every MLflow write). No
pickled model is logged. Registration writes the same store as the sync, under the
same lock (:func:`fundusfm.tracking.store.store_lock`); the workflow also orders it
after the final sync.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from fundusfm.tracking.records import KEY_TAG, MAX_PARAM_VAL_LENGTH, METRICS_PER_BATCH, metric_name
from fundusfm.tracking.store import (StoreError, _get_or_create_experiment, open_client, redact_uri, store_failure,
                                     store_lock, tracking_uri)

log = logging.getLogger(__name__)

DEFAULT_REGISTERED_NAME = "fundusfm-foundation"
WEIGHTS_TAG = "fundusfm.weights_sha256"


def release_metrics(cfg: dict) -> dict[str, float]:
    """Study metrics of a release's ``config.json`` as MLflow metric names -> values."""
    out: dict[str, float] = {}
    own = cfg["fundusfm"]["metrics"].get("released_model_test") or {}
    for k, v in (own.get("metrics") or {}).items():
        if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
            out[metric_name(f"test.{k}")] = float(v)
    for task, rows in cfg["fundusfm"]["metrics"].get("study", {}).items():
        for r in rows:
            if r["mean"] is not None:
                # a linear probe's arm is named so; fine-tunes keep the names they always had
                arm = r["init"] if r.get("adaptation", "finetune") == "finetune" else f"{r['init']}.{r['adaptation']}"
                name = f"study.{task}.{r['set']}.{arm}.frac{r['fraction']:g}.{r['metric']}"
                out[metric_name(name)] = float(r["mean"])
    return out


def register(release_dir: str | Path, name: str = DEFAULT_REGISTERED_NAME, *, uri: str | None = None,
             results: str | Path = "results", study: str | None = None) -> dict | None:
    """Log the release folder as artifacts of an MLflow run and register a model version
    pointing at it, tagged with the study metrics. Idempotent: a version with the same
    weights digest is reused. Returns ``{name, version, run_id, source, tracking_uri,
    created}``; ``None`` with a warning when a tracking server cannot be reached.
    Raises :class:`StoreError` when a local store is broken or stays locked."""
    from fundusfm.release.loading import CONFIG_FILE, WEIGHTS_FILE

    release_dir = Path(release_dir)
    cfg = json.loads((release_dir / CONFIG_FILE).read_text())
    digest = cfg["fundusfm"]["files"][WEIGHTS_FILE]["sha256"]
    uri = tracking_uri(uri, results)  # MLFLOW_TRACKING_URI wins, then uri, then sqlite
    study = study or cfg["fundusfm"]["source"].get("study") or "fundusfm"
    try:
        with store_lock(uri):
            return _register(open_client(uri), release_dir, cfg, digest, name, uri, study)
    except Exception as e:  # noqa: BLE001 - an unreachable server never fails the release
        err = store_failure(uri, e)
        if isinstance(err, StoreError):
            raise err from e
        log.warning("%s; the release folder is complete, register it later with `fundusfm register`", err)
        return None


def _register(client, release_dir: Path, cfg: dict, digest: str, name: str, uri: str, study: str) -> dict:
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    exp_id = _get_or_create_experiment(client, study, uri)
    try:
        client.get_registered_model(name)
    except MlflowException:  # RESOURCE_DOES_NOT_EXIST
        client.create_registered_model(name, description="fundusfm release: see the model card README.md")
    for mv in client.search_model_versions(f"name='{name}'"):
        if (mv.tags or {}).get(WEIGHTS_TAG) == digest:
            log.info("MLflow: %s version %s already holds these weights", name, mv.version)
            return {"name": name, "version": str(mv.version), "run_id": mv.run_id, "source": mv.source,
                    "tracking_uri": redact_uri(uri), "created": False}
    run = client.create_run(exp_id, run_name="release", tags={KEY_TAG: "release", WEIGHTS_TAG: digest})
    rid = run.info.run_id
    ts = int(time.time() * 1000)
    items = list(release_metrics(cfg).items())
    for i in range(0, len(items), METRICS_PER_BATCH):
        client.log_batch(rid, metrics=[Metric(k, v, ts, 0) for k, v in items[i:i + METRICS_PER_BATCH]])
    model = cfg["fundusfm"]["model"]
    params = {"arch": model["arch"], "head": model["head"], "img_size": model["img_size"],
              "classes": ",".join(model["classes"]), "init": model.get("init"), "licence": cfg["fundusfm"]["licence"]}
    client.log_batch(rid, params=[Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()])
    client.log_artifacts(rid, str(release_dir), artifact_path="release")
    source = f"{run.info.artifact_uri.rstrip('/')}/release"
    tags = {WEIGHTS_TAG: digest, "licence": cfg["fundusfm"]["licence"]}
    tags.update({k: f"{v:.4f}" for k, v in items})
    mv = client.create_model_version(name, source=source, run_id=rid, tags=tags,
                                     description=f"{model['arch']} ({model['head']} head), classes "
                                                 f"{model['classes']}; weights sha256 {digest}")
    client.set_terminated(rid)
    log.info("MLflow: registered %s version %s (source %s)", name, mv.version, source)
    return {"name": name, "version": str(mv.version), "run_id": rid, "source": source,
            "tracking_uri": redact_uri(uri), "created": True}
