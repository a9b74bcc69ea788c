"""MLflow mirror: real MLflow on a SQLite file in tmp_path, result trees written here."""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

from fundusfm import layout  # noqa: E402
from fundusfm.tracking import records
from fundusfm.tracking import store as tstore  # noqa: E402
from fundusfm.tracking import cli as tcli  # noqa: E402
from workflow_helpers import expected_final_metrics  # noqa: E402

STUDY = "unit"
CONFIG = {
    "study": STUDY,
    "pretrain": {"datasets": ["up"]},
    "tasks": {
        "multi": {"type": "multilabel", "labels": ["dr", "glaucoma"], "datasets": ["down"], "external": ["ext"],
                  "inits": ["random", "fundus"], "adaptations": ["finetune"], "fractions": [0.5, 1.0], "seeds": [0], "run_folds": [0],
                  "split": {"strategy": "kfold", "folds": 3}},
    },
    "mlflow": {"enabled": True},
}
RUN_KEYS = ["pretrain/random", "finetune/multi/random/finetune/fold0/frac1/seed0", "finetune/multi/fundus/finetune/fold0/frac0.5/seed0"]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables created once (migrations take seconds);
    each test works on a copy."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(empty_store, tmp_path) -> str:
    db = tmp_path / "results" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_store, db)
    return f"sqlite:///{db}"


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def make_run(results: Path, key: str, epochs: int = 3, offset: float = 0.0, metrics: bool = True) -> Path:
    """A finished training folder with the files docs/architecture.md lists, and (for
    fine-tuning) its metrics JSONs. Values depend on the key so runs differ."""
    ident = layout.parse_key(key)
    out = results / key
    out.mkdir(parents=True, exist_ok=True)
    base = (len(key) % 7) / 100 + offset
    _write_csv(out / "history.csv", ["epoch", "train_loss", "val_loss", "val_auroc", "lr", "time"],
               [[e, 1.0 - 0.1 * e + base, 1.1 - 0.05 * e + base, 0.5 + 0.1 * e - base, 0.001 / (e + 1), 2.5]
                for e in range(1, epochs + 1)])
    (out / "train_config.json").write_text(json.dumps({
        "task": {"type": "multilabel", "labels": ["dr", "glaucoma"]},
        "hparams": {"arch": "resnet10t", "lr": 0.001, "epochs": epochs, "augment": {"hflip": 0.5, "ratio": [0.9, 1.1]}},
        "fold": ident["fold"], "fraction": float(ident["fraction"]), "seed": ident.get("seed", 0),
        "init": ident["init"], "table": "results/splits/multi.csv",
        "resources": {"wall_s": 12.5, "cpu_s": 20.0, "max_rss_mb": 900.0},
    }))
    (out / "model.json").write_text(json.dumps({"arch": "resnet10t", "num_classes": 2, "img_size": 48}))
    (out / "model.safetensors").write_bytes(b"\0" * 64)
    sets = ["val", "test"] if ident["kind"] == "pretrain" else ["val", "test", "external_ext"]
    for s in sets:
        ds = "ext" if s.startswith("external") else ("up" if ident["kind"] == "pretrain" else "down")
        _write_csv(out / f"predictions_{s}.csv", ["image_id", "dataset", "patient_id", "eye", "label_dr", "prob_dr"],
                   [[f"{ds}{i}", ds, f"p{i}", "L", i % 2, 0.3 + 0.1 * i] for i in range(4)])
    if metrics and ident["kind"] == "finetune":
        mdir = results / "metrics" / key.split("/", 1)[1]
        mdir.mkdir(parents=True, exist_ok=True)
        for s in ("test", "external_ext"):
            rec = {"task": ident["task"], "init": ident["init"], "fold": ident["fold"], "fraction": float(ident["fraction"]),
                   "seed": ident["seed"], "set": s, "n_images": 4, "n_patients": 4,
                   "metrics": {"auroc": 0.71 + base, "auroc:dr": 0.65 + base, "accuracy": 0.6, "kappa": None},
                   "ci": {"auroc": [0.6 + base, 0.8 + base], "auroc:dr": None, "accuracy": [0.5, 0.7]},
                   "undefined": {"kappa": "only one class in y_true (n=4)"}}
            (mdir / f"{s}.json").write_text(json.dumps(rec))
    return out


@pytest.fixture
def results(tmp_path) -> Path:
    res = tmp_path / "results"
    for ds in ("up", "down", "ext"):
        _write_csv(res / "manifests" / f"{ds}.csv", ["image_id", "path", "patient_id", "eye", "split", "dataset"],
                   [[f"{ds}{i}", f"img/{i}.png", f"p{i}", "L", "", ds] for i in range(4)])
    for key in RUN_KEYS:
        make_run(res, key)
    return res


def child_runs(client: MlflowClient, study: str = STUDY) -> dict[str, list]:
    exp = client.get_experiment_by_name(study)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    out = {}
    for r in runs:
        out.setdefault(r.data.tags[records.KEY_TAG], []).append(r)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- tests


def test_tracking_uri_env_wins_then_config_then_sqlite_under_results(tmp_path, monkeypatch):
    assert tstore.tracking_uri(None, tmp_path / "res") == f"sqlite:///{(tmp_path / 'res').resolve()}/mlflow.db"
    assert tstore.tracking_uri("http://mlflow:5000", tmp_path) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:1")
    assert tstore.tracking_uri("http://mlflow:5000", tmp_path) == "http://env:1"


def test_redact_uri_hides_password():
    assert tstore.redact_uri("postgresql://me:secret@db:5432/ml") == "postgresql://me:***@db:5432/ml"
    assert tstore.redact_uri("sqlite:////a/b.db") == "sqlite:////a/b.db"


def test_sync_logs_one_run_per_job_with_params_tags_metrics_from_files(results, store):
    summary = tstore.sync(results, STUDY, store, CONFIG, summary_path=results / "mlflow" / "sync.json")
    assert summary["ok"] and summary["counts"]["created"] == len(RUN_KEYS)
    assert json.loads((results / "mlflow" / "sync.json").read_text())["counts"] == summary["counts"]
    # the config also asks for frac0.5/random and frac1/fundus, which have no outputs here
    assert summary["missing_outputs"] == ["finetune/multi/fundus/finetune/fold0/frac1/seed0", "finetune/multi/random/finetune/fold0/frac0.5/seed0"]

    client = MlflowClient(store)
    runs = child_runs(client)
    assert sorted(runs) == sorted(RUN_KEYS + [f"study:{STUDY}"])
    assert all(len(v) == 1 for v in runs.values())
    parent = runs[f"study:{STUDY}"][0]
    cfg_file = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="study_config.json",
                                                   dst_path=str(results.parent / "dl"), tracking_uri=store)
    assert json.loads(Path(cfg_file).read_text())["study"] == STUDY

    for key in RUN_KEYS:
        run = runs[key][0]
        ident = layout.parse_key(key)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for k in ("task", "init", "fold", "fraction"):
            assert run.data.tags[k] == str(ident[k])
        assert run.data.tags["study"] == STUDY
        # params: the flattened train_config.json
        cfg = json.loads((results / key / "train_config.json").read_text())
        assert run.data.params["hparams.lr"] == str(cfg["hparams"]["lr"])
        assert run.data.params["hparams.augment.ratio"] == "[0.9, 1.1]"
        assert run.data.params["table"] == cfg["table"]
        # what the job used is a metric (it differs between reruns), never a param
        assert run.data.metrics["job_max_rss_mb"] == 900.0 and run.data.metrics["job_wall_s"] == 12.5
        assert not any(k.startswith("resources") for k in run.data.params)
        # per-epoch history, one value per epoch at step=epoch
        with open(results / key / "history.csv") as fh:
            hist = list(csv.DictReader(fh))
        got = client.get_metric_history(run.info.run_id, "val_auroc")
        assert [(m.step, m.value) for m in sorted(got, key=lambda m: m.step)] == [
            (int(h["epoch"]), float(h["val_auroc"])) for h in hist]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"model.json", "history.csv", "train_config.json", "predictions_test.csv"} <= artifacts
        assert "model.safetensors" not in artifacts
        if ident["kind"] == "pretrain":
            assert run.data.tags["dataset.up"] == records.file_digest(results / "manifests" / "up.csv")
            continue
        assert run.data.tags["dataset.down"] == records.file_digest(results / "manifests" / "down.csv")
        assert run.data.tags["dataset.ext"] == records.file_digest(results / "manifests" / "ext.csv")
        assert run.data.tags["seed"] == "0"
        expected = expected_final_metrics(results, key)
        final = {k: v for k, v in run.data.metrics.items() if k.startswith(("test_", "external_ext_"))}
        assert {k: final[k] for k in expected} == expected
        assert "test_kappa" not in final and run.data.tags["undefined.test_kappa"].startswith("only one class")
        assert "metrics" in artifacts


def test_sync_twice_changes_nothing_and_an_edited_metric_updates_in_place(results, store):
    first = tstore.sync(results, STUDY, store, CONFIG)
    client = MlflowClient(store)
    n_runs = sum(len(v) for v in child_runs(client).values())
    second = tstore.sync(results, STUDY, store, CONFIG)
    assert second["counts"]["unchanged"] == len(RUN_KEYS) and second["counts"]["created"] == 0
    assert {k: v["run_id"] for k, v in second["runs"].items()} == {k: v["run_id"] for k, v in first["runs"].items()}
    assert sum(len(v) for v in child_runs(client).values()) == n_runs
    key = RUN_KEYS[1]
    assert len(client.get_metric_history(first["runs"][key]["run_id"], "val_auroc")) == 3

    # re-evaluation (new metrics JSON) updates the same run
    path = results / "metrics" / key.split("/", 1)[1] / "test.json"
    rec = json.loads(path.read_text())
    rec["metrics"]["auroc"] = 0.99
    path.write_text(json.dumps(rec))
    third = tstore.sync(results, STUDY, store, CONFIG)
    assert third["runs"][key] == {**first["runs"][key], "action": "updated"}
    assert client.get_run(first["runs"][key]["run_id"]).data.metrics["test_auroc"] == 0.99
    assert sum(len(v) for v in child_runs(client).values()) == n_runs


def test_log_run_dir_right_after_training_then_sync_completes_the_same_run(tmp_path, store):
    results = tmp_path / "results"
    key = "finetune/multi/random/finetune/fold0/frac1/seed0"
    run_dir = make_run(results, key, metrics=False)
    run_id = tstore.log_run_dir(run_dir, None, store, STUDY)
    assert run_id
    client = MlflowClient(store)
    assert not [m for m in client.get_run(run_id).data.metrics if m.startswith("test_")]
    assert tstore.log_run_dir(run_dir, None, store, STUDY) == run_id  # again: same run

    make_run(results, key)  # evaluation writes the metrics JSONs (training files unchanged)
    summary = tstore.sync(results, STUDY, store, None)
    # + 3: job_wall_s, job_cpu_s, job_max_rss_mb from train_config.json's resources
    assert summary["runs"][key] == {"run_id": run_id, "action": "updated",
                                    "final_metrics": len(expected_final_metrics(results, key)) + 4 + 3}
    run = client.get_run(run_id)
    assert run.data.metrics["test_auroc"] == pytest.approx(expected_final_metrics(results, key)["test_auroc"])
    assert len(child_runs(client)[key]) == 1
    assert len(client.get_metric_history(run_id, "train_loss")) == 3


def test_short_http_settings_are_valid_mlflow_settings(monkeypatch):
    import mlflow.environment_variables as mev

    for name in tstore.HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    tstore._quick_http()
    for name, value in tstore.HTTP_DEFAULTS.items():
        assert str(getattr(mev, name).get()) == value


def test_unreachable_store_returns_none_quickly_and_a_later_sync_fills_in(results, store, tmp_path, caplog):
    closed = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    assert tstore.ensure_experiment(STUDY, closed) is None
    assert tstore.log_run_dir(results / RUN_KEYS[1], None, closed, STUDY) is None
    summary = tstore.sync(results, STUDY, closed, CONFIG)
    assert time.monotonic() - start < 30
    # it failed because nothing listens there (not because of a bad setting of ours)
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("fundusfm.tracking")]
    assert len(warnings) == 3 and all("Connection refused" in w or "NewConnectionError" in w for w in warnings), warnings
    assert not summary["reachable"] and not summary["ok"] and summary["counts"]["failed"] == len(RUN_KEYS)

    later = tstore.sync(results, STUDY, store, CONFIG)
    assert later["ok"] and later["counts"]["created"] == len(RUN_KEYS)
    runs = child_runs(MlflowClient(store))
    for key in RUN_KEYS[1:]:
        got = runs[key][0].data.metrics
        assert {k: got[k] for k in expected_final_metrics(results, key)} == expected_final_metrics(results, key)


def test_retrained_job_replaces_its_run(results, store):
    first = tstore.sync(results, STUDY, store, CONFIG)
    key = RUN_KEYS[2]
    make_run(results, key, epochs=4, offset=0.05)  # retrained: new history and metrics
    second = tstore.sync(results, STUDY, store, CONFIG)
    assert second["runs"][key]["action"] == "replaced"
    client = MlflowClient(store)
    runs = child_runs(client)[key]
    assert [r.info.run_id for r in runs] == [second["runs"][key]["run_id"]] != [first["runs"][key]["run_id"]]
    assert len(client.get_metric_history(runs[0].info.run_id, "val_loss")) == 4
    assert runs[0].data.metrics["test_auroc"] == pytest.approx(expected_final_metrics(results, key)["test_auroc"])


def test_sync_collapses_duplicate_runs_of_a_job(results, store):
    first = tstore.sync(results, STUDY, store, CONFIG)
    client = MlflowClient(store)
    key = RUN_KEYS[1]
    client.create_run(first["experiment_id"], tags={records.KEY_TAG: key})  # e.g. two jobs that raced
    assert len(child_runs(client)[key]) == 2
    tstore.sync(results, STUDY, store, CONFIG)
    runs = child_runs(client)[key]
    assert [r.info.run_id for r in runs] == [first["runs"][key]["run_id"]]


def test_log_model_flag_adds_the_weights(results, store):
    tstore.sync(results, STUDY, store, CONFIG, log_model=True)
    client = MlflowClient(store)
    run = child_runs(client)[RUN_KEYS[1]][0]
    assert "model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_malformed_metrics_json_is_an_error_naming_the_file(results, store):
    path = results / "metrics" / RUN_KEYS[1].split("/", 1)[1] / "test.json"
    path.write_text(json.dumps({"set": "test", "metrics": [0.5]}))
    with pytest.raises(ValueError, match=r"test\.json: key 'metrics' must be an object"):
        tstore.sync(results, STUDY, store, CONFIG)


def test_not_a_training_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match="not a training folder"):
        layout.run_key(tmp_path / "somewhere")


def test_cli_experiment_record_run_dir_and_sync(results, store, monkeypatch):
    exp_json = results / "mlflow" / "experiment.json"
    closed = f"http://127.0.0.1:{free_port()}"
    cfg = json.dumps(CONFIG)
    # store down: the record is still written, the job-level log still exits 0
    assert tcli.sync_mlflow_main(["--results", str(results), "--experiment-only", "--config-json", cfg,
                               "--tracking-uri", closed, "--experiment-json", str(exp_json)]) == 0
    rec = json.loads(exp_json.read_text())
    assert rec["study"] == STUDY and rec["reachable"] is False and rec["experiment_id"] is None
    assert tcli.sync_mlflow_main(["--results", str(results), "--run-dir", str(results / RUN_KEYS[1])]) == 0
    assert tcli.sync_mlflow_main(["--results", str(results), "--run-dir", str(results / RUN_KEYS[1]), "--strict"]) == 1

    # store up (env wins over the recorded config URI)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert tcli.sync_mlflow_main(["--results", str(results), "--experiment-only", "--config-json", cfg]) == 0
    rec = json.loads(exp_json.read_text())
    assert rec["reachable"] and rec["parent_run_id"]
    assert tcli.sync_mlflow_main(["--results", str(results), "--run-dir", str(results / RUN_KEYS[1])]) == 0
    client = MlflowClient(store)
    run = child_runs(client)[RUN_KEYS[1]][0]
    assert run.data.tags["mlflow.parentRunId"] == rec["parent_run_id"]
    for _ in range(2):
        assert tcli.sync_mlflow_main(["--results", str(results), "--config-json", cfg]) == 0
    summary = json.loads((results / "mlflow" / "sync.json").read_text())
    assert summary["ok"] and summary["counts"]["unchanged"] == len(RUN_KEYS)
    assert sum(len(v) for v in child_runs(client).values()) == len(RUN_KEYS) + 1


def test_cli_disabled_config_logs_nothing(results, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    cfg = json.dumps({**CONFIG, "mlflow": {"enabled": False}})
    assert tcli.sync_mlflow_main(["--results", str(results), "--experiment-only", "--config-json", cfg]) == 0
    assert json.loads((results / "mlflow" / "experiment.json").read_text())["enabled"] is False
    assert tcli.sync_mlflow_main(["--results", str(results), "--run-dir", str(results / RUN_KEYS[1])]) == 0
    assert tcli.sync_mlflow_main(["--results", str(results), "--config-json", cfg]) == 0
    assert MlflowClient(store).get_experiment_by_name(STUDY) is None


@pytest.mark.slow
def test_parallel_jobs_logging_to_one_sqlite_store_do_not_race(results, store):
    """Separate processes (as Snakemake runs jobs) log at once after the experiment exists."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=store, OMP_NUM_THREADS="1")
    assert tcli.sync_mlflow_main(["--results", str(results), "--experiment-only", "--study", STUDY]) == 0
    procs = [subprocess.Popen([sys.executable, "-m", "fundusfm.cli", "sync-mlflow", "--results", str(results),
                               "--run-dir", str(results / key), "--strict"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for key in RUN_KEYS]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), outs
    runs = child_runs(MlflowClient(store))
    assert sorted(runs) == sorted(RUN_KEYS + [f"study:{STUDY}"]) and all(len(v) == 1 for v in runs.values())


# ---------------------------------------------------------------------------- a new store met by two jobs at once


def _sync_when_released(results: Path, uri: str, barrier, out) -> None:
    barrier.wait()
    summary = tstore.sync(results, STUDY, uri, CONFIG)
    out.put((summary["ok"], summary["store_error"], summary["errors"][:1]))


def _two_syncs_at_once(results: Path, uri: str, ctx) -> list:
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_sync_when_released, args=(results, uri, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    return [out.get(timeout=5) for _ in procs]


@pytest.mark.slow
def test_two_syncs_on_a_new_sqlite_store_at_once_leave_it_usable_and_record_each_run_once(tmp_path):
    """Issue 16 item 1: MLflow's schema migration of a new SQLite store raced when two jobs
    met it at once ("table _alembic_tmp_tags already exists" forever after). Forked
    processes (mlflow already imported, so they start within milliseconds of each other)
    are released together onto a store that does not exist yet, 20 times."""
    import multiprocessing

    results = tmp_path / "results"
    make_run(results, RUN_KEYS[1])  # one run: the race is in creating the store, not in the runs
    ctx = multiprocessing.get_context("fork")
    for rep in range(20):
        uri = f"sqlite:///{tmp_path / f'new{rep}' / 'mlflow.db'}"
        outcomes = _two_syncs_at_once(results, uri, ctx)
        assert all(ok for ok, _, _ in outcomes), (rep, outcomes)
        client = MlflowClient(uri)  # usable: a further client reads and writes it
        runs = child_runs(client)
        assert sorted(runs) == sorted([RUN_KEYS[1], f"study:{STUDY}"]), (rep, sorted(runs))
        assert all(len(v) == 1 for v in runs.values()), (rep, {k: len(v) for k, v in runs.items()})
        assert tstore.sync(results, STUDY, uri, CONFIG)["counts"]["created"] == 0


def test_a_broken_store_fails_the_sync_but_never_the_training_job(results, tmp_path, caplog):
    """A local store that cannot be opened is an error of the final sync and of the
    experiment set-up (exit 1, so Snakemake retries), never of a training job's logging."""
    db = tmp_path / "broken" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(b"this is not an SQLite database, " * 64)
    uri = f"sqlite:///{db}"
    args = ["--results", str(results), "--tracking-uri", uri, "--study", STUDY]
    assert tcli.sync_mlflow_main(args + ["--run-dir", str(results / RUN_KEYS[1])]) == 0
    assert tcli.sync_mlflow_main(args + ["--experiment-only", "--experiment-json", str(tmp_path / "e.json")]) == 1
    summary_path = tmp_path / "sync.json"
    assert tcli.sync_mlflow_main(args + ["--summary", str(summary_path)]) == 1
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is False and summary["store_error"] is True
    assert "is broken" in summary["errors"][0] and str(db) in summary["errors"][0]


def test_a_store_that_stays_locked_fails_the_sync(results, store, monkeypatch):
    monkeypatch.setattr(tstore, "LOCK_TIMEOUT_S", 0.3)
    import fcntl

    lock = Path(store[len("sqlite:///"):] + ".lock")
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # another process's lock: taken on another open file
        summary = tstore.sync(results, STUDY, store, CONFIG)
    assert summary["store_error"] is True and not summary["ok"]
    assert "still held" in summary["errors"][0]
    assert tstore.sync(results, STUDY, store, CONFIG)["ok"]  # released: the rerun syncs


# ---------------------------------------------------------------------------- a copied results folder


def _release_folder(results: Path, weights: bytes) -> Path:
    """The files `fundusfm register` reads of a release (config.json keys it uses)."""
    import hashlib

    rel = results / "release"
    rel.mkdir(parents=True, exist_ok=True)
    (rel / "model.safetensors").write_bytes(weights)
    (rel / "README.md").write_text("card\n")
    cfg = {"fundusfm": {"files": {"model.safetensors": {"sha256": hashlib.sha256(weights).hexdigest()}},
                        "source": {"study": STUDY}, "licence": "CC-BY-NC-4.0",
                        "metrics": {"released_model_test": {"metrics": {"auroc": 0.7}}, "study": {}},
                        "model": {"arch": "resnet10t", "head": "paper", "img_size": 48, "classes": ["a", "b"],
                                  "init": "random"}}}
    (rel / "config.json").write_text(json.dumps(cfg))
    return rel


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _store_records(db: Path) -> dict:
    """Every run of a store with its tags, params, metrics, artifact location and artifact
    bytes, and every model version: what "the original's records" are."""
    client = MlflowClient(f"sqlite:///{db}")
    out = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            root = run.info.artifact_uri.removeprefix("file://")
            arts = {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()} \
                if Path(root).is_dir() else {}
            out[run.info.run_id] = (run.data.tags.get(records.KEY_TAG), run.info.artifact_uri, dict(run.data.params),
                                    dict(run.data.metrics), arts)
    versions = [(mv.name, mv.version, mv.source) for mv in client.search_model_versions()]
    return {"runs": out, "versions": versions}


@pytest.mark.slow
def test_a_copied_results_folder_syncs_into_its_own_store_and_leaves_the_original_unchanged(tmp_path, empty_store,
                                                                                          monkeypatch):
    """cp -a results copy/: the copy's store (same absolute artifact locations inside) must
    write its own artifacts; the original stays byte for byte and record for record."""
    from fundusfm.tracking.registry import register

    a = tmp_path / "study"
    res_a = a / "results"
    for key in RUN_KEYS:
        make_run(res_a, key)
    shutil.copy(empty_store, res_a / "mlflow.db")
    monkeypatch.chdir(a)
    uri_a = tstore.tracking_uri(None, res_a)
    assert tstore.sync(res_a, STUDY, uri_a, CONFIG)["ok"]
    register(_release_folder(res_a, b"\1" * 64), uri=None, results=res_a)

    b = tmp_path / "copy" / "study"
    b.parent.mkdir()
    subprocess.run(["cp", "-a", str(a), str(b.parent)], check=True)  # as the user did
    before_bytes, before_records = _tree_bytes(a), _store_records(res_a / "mlflow.db")

    res_b = b / "results"
    run_b = res_b / RUN_KEYS[1]
    (run_b / "predictions_test.csv").write_text("image_id,dataset\ncorrupted,down\n")
    mjson = res_b / "metrics" / RUN_KEYS[1].split("/", 1)[1] / "test.json"
    rec = json.loads(mjson.read_text())
    rec["metrics"]["auroc"] = 0.01
    mjson.write_text(json.dumps(rec))
    _release_folder(res_b, b"\2" * 64)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    for verb in (["sync-mlflow", "--results", "results", "--config-json", json.dumps(CONFIG), "--study", STUDY],
                 ["register", "--release", "results/release", "--results", "results", "--study", STUDY]):
        p = subprocess.run([sys.executable, "-m", "fundusfm.cli", *verb], cwd=b, env=env, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((res_b / "mlflow" / "sync.json").read_text())
    assert summary["ok"] and summary["counts"]["updated"] >= 1, summary

    assert _tree_bytes(a) == before_bytes  # not one byte of the original changed
    assert _store_records(res_a / "mlflow.db") == before_records
    # the copy holds its own, corrupted, mirror: every location points into the copy
    after_b = _store_records(res_b / "mlflow.db")
    assert all(loc.startswith((res_b / "mlflow-artifacts").resolve().as_uri()) for _, loc, *_ in after_b["runs"].values())
    assert all(src.startswith((res_b / "mlflow-artifacts").resolve().as_uri()) for *_, src in after_b["versions"])
    key_b = next(r for r in after_b["runs"].values() if r[0] == RUN_KEYS[1])
    assert key_b[4]["predictions_test.csv"].startswith(b"image_id,dataset\ncorrupted")
    assert json.loads(key_b[4]["metrics/test.json"])["metrics"]["auroc"] == 0.01
