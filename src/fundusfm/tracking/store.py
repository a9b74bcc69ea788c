"""MLflow writes: the one client (retries on a busy SQLite file, serialised first use),
per-job logging and the idempotent sync.

Result files are the source of truth; MLflow mirrors them. One experiment per study,
one parent run for the study (tag ``fundusfm.key = study:<name>``) and one child run per
training job (tag ``fundusfm.key`` = the job's key, :mod:`fundusfm.layout`).

Every write is keyed by that tag and checked against what the run already holds, so
logging a job twice (right after training, then again in the final sync) completes the
existing run instead of creating a second one.

Failures are of two kinds:

* an **outage** (a tracking server that cannot be reached): never fails a job; the call
  warns, and the final sync fills in the gaps;
* a **store error** on a local SQLite store (a database still locked after the retries,
  or a store left broken): :class:`StoreError`. A training job's own logging still only
  warns, but the experiment set-up, the final sync and the registration fail, so
  Snakemake retries them and nobody reads a false success.

Every process takes a file lock (``<db>.lock``, :func:`store_lock`) around its first use
of a SQLite store, where MLflow creates and migrates the schema: two jobs meeting a new
store at once would otherwise both migrate it and break it for good. The sync and the
registration hold the same lock for their whole write.

A local store belongs to its results folder. MLflow records absolute artifact locations
(``file:///.../results/mlflow-artifacts/...``) in the database, so a copied or moved
results folder would go on writing its artifacts into the original's folder. On first
use in a process, :func:`relocate_store` rewrites every location that points at another
folder's ``mlflow-artifacts`` (and MLflow's ``mlruns`` default of the process that
created the store) to this store's own folder, before anything is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from fundusfm import layout
from fundusfm.fileio import output_mode, write_json
from fundusfm.tracking.records import (CONFIG_HASH_TAG, HISTORY_TAG, ARTIFACTS_TAG, KEY_TAG, MAX_PARAM_VAL_LENGTH,
                                       MAX_TAG_VAL_LENGTH, METRICS_PER_BATCH, PARAMS_PER_BATCH, PARENT_TAG,
                                       STUDY_PREFIX, TRAIN_HASH_TAG, RunRecord, expected_keys, flatten_params,
                                       read_run_dir)

log = logging.getLogger(__name__)

# Short HTTP timeouts: an unreachable server must cost a job seconds, not minutes
# (MLflow's defaults retry for several minutes). The user's own settings win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # MLflow parses it as an int
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
LOCK_TIMEOUT_S = 600.0  # how long a writer waits for the store lock before it gives up


class TrackingUnavailable(RuntimeError):
    """The tracking server could not be reached or refused the write (an outage)."""


class StoreError(RuntimeError):
    """A local store is broken or stays locked: the job fails (and is retried)."""


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


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///"):]
    return None if db in ("", ":memory:") else Path(db)


def is_local(uri: str) -> bool:
    """A store on this machine's disk (SQLite): its errors are not outages."""
    return _sqlite_file(uri) is not None


def _sqlite_artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store live next to the database file (MLflow's own
    default is ./mlruns of whatever folder the job happens to run in)."""
    db = _sqlite_file(uri)
    return None if db is None else (db.parent / "mlflow-artifacts").resolve().as_uri()


ARTIFACTS_DIR = "mlflow-artifacts"
# (table, column) holding an artifact location, in MLflow's SQLite schema (3.x); absent
# tables or columns (older schemas) are skipped
LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("model_versions", "source"), ("model_versions", "storage_location"),
                    ("logged_models", "artifact_location"))
_relocated: set[str] = set()


def _as_path(location: str) -> str | None:
    """The local path of a ``file:`` URI or a plain absolute path, else ``None`` (s3:, ...)."""
    if location.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(location).path)
    return location if location.startswith("/") else None


def relocate_store(uri: str) -> dict[str, str]:
    """Point a local SQLite store's artifact locations at its own folder; returns
    ``{old root: new root}`` of what was rewritten (empty when nothing pointed elsewhere).

    The store's artifacts live in ``<db folder>/mlflow-artifacts`` (:func:`_sqlite_artifact_root`).
    A location ``<X>/mlflow-artifacts/...`` with another ``X`` (the folder the store was
    copied or moved from) is rewritten to this root, in experiments, runs, model versions
    and logged models alike, and so is MLflow's own ``<cwd>/mlruns/<id>`` default of the
    process that created the store. Locations elsewhere (an object store, a server's
    artifact root) are left as they are. Done once per store and process, under
    :func:`store_lock`; the caller holds it."""
    db = _sqlite_file(uri)
    if db is None or not db.is_file():
        return {}
    key = str(db.resolve())
    if key in _relocated:
        return {}
    root = (db.parent / ARTIFACTS_DIR).resolve()
    done: dict[str, str] = {}
    con = sqlite3.connect(str(db), timeout=60)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "experiments" not in tables:
            _relocated.add(key)
            return {}
        olds: set[str] = set()
        for eid, loc in con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall():
            path = _as_path(loc or "")
            if path is None or path == str(root) or path.startswith(str(root) + "/"):
                continue
            m = re.match(rf"^(.*/{ARTIFACTS_DIR})(/.*)?$", path)
            if m:
                olds.add(m.group(1))
            elif re.match(rf"^.*/mlruns/{re.escape(str(eid))}$", path):
                # MLflow's default (experiment 0): <cwd>/mlruns/<id> of the process that made the
                # store, the study folder above results/; follows the study folder when it moved
                home = str(db.parent.parent.resolve() / "mlruns" / str(eid))
                if path != home:
                    con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (home, eid))
                    done[path] = home
        for old in sorted(olds):
            new = str(root)
            for table, col in LOCATION_COLUMNS:
                if table not in tables or col not in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
                    continue
                rows = con.execute(f"SELECT rowid, {col} FROM {table} WHERE {col} IS NOT NULL").fetchall()
                for rowid, loc in rows:
                    for prefix, repl in ((Path(old).as_uri(), root.as_uri()), (old, new)):
                        if loc == prefix or loc.startswith(prefix + "/"):
                            con.execute(f"UPDATE {table} SET {col} = ? WHERE rowid = ?", (repl + loc[len(prefix):], rowid))
                            break
            done[old] = new
        con.commit()
    finally:
        con.close()
    if done:
        log.warning("MLflow store %s was made in another folder: its artifact locations now point at %s (%s)",
                    db, root, ", ".join(f"{k} -> {v}" for k, v in sorted(done.items())))
    _relocated.add(key)
    return done


def _quick_http() -> None:
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


# ---------------------------------------------------------------------------- the lock and the client

_held: dict[str, list] = {}  # lock file -> [fd, depth]: the lock is re-entrant within a process


@contextlib.contextmanager
def store_lock(uri: str, timeout: float | None = None):
    """Exclusive lock of a SQLite store (``<db>.lock``), re-entrant within a process; a
    no-op for a server. Raises :class:`StoreError` when not obtained within ``timeout``
    (default :data:`LOCK_TIMEOUT_S`)."""
    timeout = LOCK_TIMEOUT_S if timeout is None else timeout
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    path = str(db.resolve()) + ".lock"
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, output_mode())
    except OSError as e:
        raise StoreError(f"MLflow store {db}: cannot open its lock file {path}: {e}") from None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(f"MLflow store {db}: lock {path} still held after {timeout:.0f} s") from None
                time.sleep(0.05 + 0.1 * random.random())
        _held[path] = [fd, 1]
        try:
            yield
        finally:
            del _held[path]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


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


def open_client(uri: str) -> _RetryingClient:
    """A client of ``uri`` whose store is ready: the first call, where MLflow creates and
    migrates a new SQLite store, runs under :func:`store_lock`."""
    _quick_http()
    with store_lock(uri):
        relocate_store(uri)  # a copied or moved results folder writes into its own artifacts only
        client = _RetryingClient(uri)
        client.search_experiments(max_results=1)
    return client


def store_failure(uri: str, err: BaseException) -> BaseException:
    """What a failed store call means: :class:`StoreError` for a local store (broken or
    locked: the job must fail), else :class:`TrackingUnavailable` (an outage)."""
    if isinstance(err, (StoreError, TrackingUnavailable)):
        return err
    what = "stays locked" if _is_locked(err) else "is broken (move the file aside to start a new store)"
    if is_local(uri):
        return StoreError(f"MLflow store {redact_uri(uri)} {what}: {_short(err)}")
    return TrackingUnavailable(f"MLflow store {redact_uri(uri)} unreachable: {_short(err)}")


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
    server cannot be reached. Raises :class:`StoreError` for a broken or locked local
    store. Run once before parallel training jobs start, so they never race to create it."""
    try:
        with store_lock(uri):
            return _get_or_create_experiment(open_client(uri), study, uri)
    except Exception as e:  # noqa: BLE001 - an outage never fails the study
        err = store_failure(uri, e)
        if isinstance(err, StoreError):
            raise err from e
        log.warning("%s; experiment %r not set up", err, study)
        return None


def _short(e: BaseException, n: int = 300) -> str:
    text = f"{e.__class__.__name__}: {e}"
    return text if len(text) <= n else text[:n] + "..."


# ---------------------------------------------------------------------------- reading result files


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
        with store_lock(uri):
            client = open_client(uri)
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
        log.warning("%s: %s not logged (the sync step will retry)", store_failure(uri, e), rec.key)
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
    action, counts, jobs the config expects but whose outputs are missing, errors, and
    ``store_error`` (true when a local store is broken or locked: the sync failed and
    must be rerun, see :func:`store_failure`). The whole sync holds :func:`store_lock`.
    """
    from fundusfm import __version__

    results = Path(results_dir)
    records = [read_run_dir(d, config=config, study=study, log_model=log_model) for d in layout.find_run_dirs(results)]
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
        "store_error": False,
    }
    try:
        with store_lock(uri):
            _sync_records(uri, study, config, records, summary)
    except StoreError as e:  # the lock itself could not be had
        summary["errors"].append(str(e))
        summary["store_error"] = True
    summary["ok"] = summary["reachable"] and summary["counts"]["failed"] == 0 and not summary["store_error"]
    log.info("MLflow sync of %s: %s", study, ", ".join(f"{k} {v}" for k, v in summary["counts"].items()))
    if summary_path:
        write_json(summary_path, summary, sort_keys=True)
    return summary


def _sync_records(uri: str, study: str, config: dict | None, records: list[RunRecord], summary: dict) -> None:
    try:
        client = open_client(uri)
        exp_id = _get_or_create_experiment(client, study, uri)
        parent = ensure_parent(client, exp_id, study, config)
        existing = _runs_by_key(client, exp_id)
        summary.update(reachable=True, experiment_id=exp_id, parent_run_id=parent)
    except Exception as e:  # noqa: BLE001 - reported in the summary
        err = store_failure(uri, e)
        log.warning("%s; nothing synced", err)
        summary["errors"].append(str(err))
        summary["store_error"] = isinstance(err, StoreError)
        summary["counts"]["failed"] = len(records)
        return
    for rec in _progress(records):
        try:
            run_id, action = _push(client, exp_id, rec, parent, existing.get(rec.key, []))
        except Exception as e:  # noqa: BLE001 - one failed run must not stop the others
            err = store_failure(uri, e)
            log.warning("%s not synced: %s", rec.key, err)
            summary["errors"].append(f"{rec.key}: {err}")
            summary["counts"]["failed"] += 1
            summary["store_error"] |= isinstance(err, StoreError)
            continue
        summary["runs"][rec.key] = {"run_id": run_id, "action": action, "final_metrics": len(rec.final)}
        summary["counts"][action] += 1
        for w in rec.warnings:
            log.warning("%s: %s", rec.key, w)


def _progress(items: list):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return items
    return tqdm(items, desc="mlflow sync", unit="run", disable=len(items) < 2 or not sys.stderr.isatty())
