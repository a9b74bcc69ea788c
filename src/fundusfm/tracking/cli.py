"""``fundusfm sync-mlflow`` and ``fundusfm register``: the tracking verbs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fundusfm.fileio import write_json
from fundusfm.jsonargs import load_json_arg

log = logging.getLogger("fundusfm.tracking")


def _sync_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="fundusfm sync-mlflow",
        description="Mirror the result files into MLflow (idempotent). An unreachable tracking server "
        "is no failure (use --strict for that); a broken or locked local store is (exit 1).",
    )
    ap.add_argument("--results", default="results", help="results folder (default: results)")
    ap.add_argument("--study", help="study name = MLflow experiment (default: the config's or experiment JSON's)")
    ap.add_argument("--tracking-uri", help="tracking URI (MLFLOW_TRACKING_URI wins; default: sqlite under --results)")
    ap.add_argument("--config-json", help="resolved study config (JSON text or file): parent-run params, "
                    "dataset lists, expected jobs, mlflow.enabled / mlflow.log_model")
    ap.add_argument("--run-dir", help="log just this finished training folder (used right after each job; "
                    "never fails)")
    ap.add_argument("--summary", help="write the sync summary JSON here (default: <results>/mlflow/sync.json)")
    ap.add_argument("--experiment-only", action="store_true",
                    help="only create the experiment and the study's parent run, and write --experiment-json")
    ap.add_argument("--experiment-json", help="experiment record: written by --experiment-only, read otherwise "
                    "(default: <results>/mlflow/experiment.json)")
    ap.add_argument("--log-model", action="store_true", help="also log model.safetensors as an artifact")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the store is unreachable or a run failed")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def sync_mlflow_main(argv: list[str] | None = None) -> int:
    """``fundusfm sync-mlflow``: see ``--help``. Exit 0 when a tracking server is down
    (unless ``--strict``) and always after ``--run-dir``; exit 1 for malformed result
    files, a bad config, or a broken or locked local store."""
    from fundusfm.tracking import store
    from fundusfm.tracking.records import read_json

    args = _sync_parser().parse_args(argv)
    if args.verbose:
        logging.getLogger("fundusfm").setLevel(logging.DEBUG)
    results = Path(args.results)
    exp_json = Path(args.experiment_json) if args.experiment_json else results / "mlflow" / "experiment.json"
    try:
        config = load_json_arg(args.config_json) if args.config_json else None
    except ValueError as e:
        log.error("--config-json: %s", e)
        return 1
    record = {}
    if not args.experiment_only and exp_json.is_file():
        try:
            record = read_json(exp_json)
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable experiment record: %s", e)
        # The study config recorded when the experiment was set up, so a job-level log
        # tags its run exactly as the final sync will.
        config = config or record.get("config")
    mcfg = (config or {}).get("mlflow") or {}
    enabled = mcfg.get("enabled", record.get("enabled", True))
    study = args.study or (config or {}).get("study") or record.get("study")
    # Same resolution as when the experiment was set up: env, then config, then results/.
    uri = store.tracking_uri(args.tracking_uri or mcfg.get("tracking_uri") or record.get("config_tracking_uri"),
                             results)
    log_model = args.log_model or bool(mcfg.get("log_model", False))

    if args.experiment_only:
        if not study:
            log.error("--experiment-only needs --study or a config with 'study'")
            return 1
        out = {"study": study, "enabled": bool(enabled), "tracking_uri": store.redact_uri(uri),
               "config_tracking_uri": args.tracking_uri or mcfg.get("tracking_uri"),
               "experiment_id": None, "parent_run_id": None, "reachable": False, "config": config}
        if enabled:
            try:
                exp_id = store.ensure_experiment(study, uri)
                if exp_id is not None:
                    with store.store_lock(uri):
                        out["parent_run_id"] = store.ensure_parent(store.open_client(uri), exp_id, study, config)
                    out.update(experiment_id=exp_id, reachable=True)
            except Exception as e:  # noqa: BLE001
                err = store.store_failure(uri, e)
                if isinstance(err, store.StoreError):
                    log.error("%s", err)
                    return 1
                log.warning("%s: study run not set up", err)
        else:
            log.info("mlflow.enabled is false: nothing to set up")
        write_json(exp_json, out, sort_keys=True)
        return 1 if args.strict and enabled and not out["reachable"] else 0

    if not enabled:
        log.info("mlflow.enabled is false: nothing logged")
        if not args.run_dir:
            write_json(args.summary or results / "mlflow" / "sync.json",
                       {"study": study, "enabled": False, "ok": True}, sort_keys=True)
        return 0

    if args.run_dir:
        # Right after a training job: never fail it, whatever happens here.
        if not study:
            log.info("no study name (no --study, config or %s): MLflow logging skipped", exp_json)
            return 0
        try:
            run_id = store.log_run_dir(args.run_dir, None, uri, study, parent_run_id=record.get("parent_run_id"),
                                       config=config, log_model=log_model)
        except Exception as e:  # noqa: BLE001
            log.warning("%s not logged to MLflow: %s", args.run_dir, e)
            run_id = None
        return 1 if args.strict and run_id is None else 0

    if not study:
        log.error("sync needs --study, a config with 'study' or %s", exp_json)
        return 1
    try:
        summary = store.sync(results, study, uri, config, log_model=log_model,
                             summary_path=args.summary or results / "mlflow" / "sync.json")
    except ValueError as e:
        log.error("%s", e)
        return 1
    if summary["store_error"]:
        log.error("MLflow sync failed: %s", "; ".join(summary["errors"][:3]))
        return 1
    return 1 if args.strict and not summary["ok"] else 0


def register_main(argv: list[str] | None = None) -> int:
    """``fundusfm register``: register a release folder in the MLflow model registry.
    Exit 0 with ``{"registered": false}`` when a tracking server is unreachable; exit 1
    when a local store is broken or locked (the job is retried) or the release is unreadable."""
    from fundusfm.tracking.registry import DEFAULT_REGISTERED_NAME, register
    from fundusfm.tracking.store import StoreError

    p = argparse.ArgumentParser(prog="fundusfm register", description=register_main.__doc__)
    p.add_argument("--release", required=True, help="release folder (model.safetensors, config.json, README.md)")
    p.add_argument("--results", default="results", help="results folder (the default SQLite store lives there)")
    p.add_argument("--study", default=None, help="study name = MLflow experiment (default: the release's)")
    p.add_argument("--registered-name", default=DEFAULT_REGISTERED_NAME)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (MLFLOW_TRACKING_URI wins)")
    p.add_argument("--out", default=None, help="write the registration record (or its absence) here")
    a = p.parse_args(argv)
    try:
        record = register(a.release, a.registered_name, uri=a.tracking_uri, results=a.results, study=a.study)
    except StoreError as e:
        log.error("%s", e)
        return 1
    except (OSError, ValueError, KeyError) as e:
        log.error("%s: not a readable release (%s: %s)", a.release, type(e).__name__, e)
        return 1
    if a.out:
        write_json(a.out, record or {"registered": False})
    return 0
