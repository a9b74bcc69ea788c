"""A real `mlflow server` (SQLite backend, artifacts in a temp dir) on 127.0.0.1 receiving
the tiny study, run by Snakemake with 2 parallel jobs.

1. server up for the whole study: every training job and every metric arrives, the
   training jobs log themselves as they finish (the final sync creates no run), and a
   repeated sync creates nothing.
2. server killed once the first fine-tuning job has finished: the study still completes;
   after a restart on the same store, `fundusfm sync-mlflow` fills in what was missed,
   keeping the runs that arrived before the kill (no duplicates).

Run with: pytest -m integration tests/integration/test_mlflow_server.py
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import workflow_helpers

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

from fundusfm import config as fcfg  # noqa: E402
from fundusfm.tracking import records  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
STUDY_TIMEOUT = 1800  # seconds: the tiny study on 2 shared CPU cores


def require_wiring() -> None:
    snakefile = (REPO / "Snakefile").read_text()
    train = (REPO / "rules" / "train.smk").read_text()
    missing = []
    if "rules/tracking.smk" not in snakefile:
        missing.append("Snakefile: include: \"rules/tracking.smk\" (after common.smk) and mlflow_targets() in rule all")
    if "sync-mlflow" not in train:
        missing.append("rules/train.smk: pretrain/finetune log themselves with `fundusfm sync-mlflow --run-dir`")
    if missing:
        pytest.fail("MLflow tracking is not wired into the workflow: " + "; ".join(missing))


def copy_workflow(dest: Path) -> Path:
    """The workflow with the tiny study as its config (a --configfile would be merged)."""
    return workflow_helpers.copy_workflow(dest, workflow_helpers.tiny_config())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` in its own process group, so stopping it stops its workers too."""

    def __init__(self, root: Path):
        self.db = root / "server" / "mlflow.db"
        self.artifacts = root / "server" / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.proc = None
        self.uri = None
        self.log = root / "server" / "server.log"

    def start(self, timeout: float = 180) -> str:
        port = free_port()
        self.uri = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
               "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
        with open(self.log, "a") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=dict(os.environ, OMP_NUM_THREADS="1",
                                                  # no background job runner: only tracking is tested
                                                  MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self.log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.uri
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout}s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


def smk_cmd(workdir: Path) -> list[str]:
    return [*SNAKEMAKE, "--cores", "2"]


def smk_env(uri: str) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=uri)


def failure_report(workdir: Path, out: str) -> str:
    """Snakemake's output and the logs of the jobs that failed (else the newest logs)."""
    named = [workdir / m for m in re.findall(r"^\s*log: (\S+)", out, flags=re.M)]
    logdir = workdir / "results" / "logs"
    newest = sorted(logdir.rglob("*.log"), key=lambda f: f.stat().st_mtime)[-4:] if logdir.exists() else []
    logs = [f for f in named if f.is_file()] or newest
    tail = "\n".join(f"--- {f}\n{f.read_text()[-2500:]}" for f in logs[:6])
    return f"snakemake failed:\n{out[-5000:]}\n{tail}"


def run_study(workdir: Path, uri: str) -> None:
    p = subprocess.run(smk_cmd(workdir), cwd=workdir, capture_output=True, text=True, env=smk_env(uri),
                       timeout=STUDY_TIMEOUT)
    assert p.returncode == 0, failure_report(workdir, p.stdout + p.stderr)


def study_runs(client: MlflowClient, study: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(study)
    assert exp is not None, f"no MLflow experiment {study!r}"
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], max_results=5000):
        out.setdefault(r.data.tags.get(records.KEY_TAG), []).append(r)
    return out


def assert_mirror_complete(workdir: Path, uri: str) -> dict[str, str]:
    """One finished run per training job under the study's parent run, final metrics
    equal to the metrics JSONs, the full per-epoch history; returns key -> run id."""
    config = fcfg.load(workdir / "config" / "config.yaml")
    results = workdir / "results"
    keys = records.expected_keys(config)
    client = MlflowClient(uri)
    runs = study_runs(client, config["study"])
    # one run per training job, the study's parent run, and the registered release's run
    expected = keys + [f"study:{config['study']}"]
    registry = results / "mlflow" / "release.json"
    if registry.is_file() and "version" in json.loads(registry.read_text()):  # registered, not {"registered": false}
        expected.append("release")
    assert sorted(runs) == sorted(expected), sorted(runs)
    dups = {k: len(v) for k, v in runs.items() if len(v) != 1}
    assert not dups, f"duplicate runs: {dups}"
    parent = runs[f"study:{config['study']}"][0].info.run_id
    for key in keys:
        run = runs[key][0]
        assert run.info.status == "FINISHED", key
        assert run.data.tags["mlflow.parentRunId"] == parent, key
        want = workflow_helpers.expected_final_metrics(results, key)
        if key.startswith("finetune/"):
            assert want, f"no metrics JSONs for {key}"
        assert {k: run.data.metrics.get(k) for k in want} == want, key
        n_epochs = len((results / key / "history.csv").read_text().strip().splitlines()) - 1
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == n_epochs, key
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"model.json", "history.csv", "predictions_test.csv"} <= arts, (key, arts)
    return {k: runs[k][0].info.run_id for k in keys}


def sync_cli(workdir: Path, uri: str) -> dict:
    config = fcfg.load(workdir / "config" / "config.yaml")
    p = subprocess.run([sys.executable, "-m", "fundusfm.cli", "sync-mlflow", "--results", "results",
                        "--config-json", fcfg.to_json(config), "--summary", "results/mlflow/resync.json", "--strict"],
                       cwd=workdir, capture_output=True, text=True, env=smk_env(uri), timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads((workdir / "results" / "mlflow" / "resync.json").read_text())


def test_study_with_parallel_jobs_arrives_complete_on_a_live_server(tmp_path, server):
    require_wiring()
    wd = copy_workflow(tmp_path / "wf")
    uri = server.start()
    run_study(wd, uri)

    ids = assert_mirror_complete(wd, uri)
    summary = json.loads((wd / "results" / "mlflow" / "sync.json").read_text())
    assert summary["ok"], summary
    # every training job logged itself as it finished; the final sync only completed runs
    assert summary["counts"]["created"] == 0 and summary["counts"]["replaced"] == 0, summary["counts"]
    experiment = json.loads((wd / "results" / "mlflow" / "experiment.json").read_text())
    assert experiment["reachable"] and experiment["tracking_uri"] == uri

    again = sync_cli(wd, uri)
    assert again["counts"]["unchanged"] == len(ids) and again["counts"]["created"] == 0, again["counts"]
    assert assert_mirror_complete(wd, uri) == ids


def test_server_killed_mid_study_then_sync_fills_in_without_duplicates(tmp_path, server):
    require_wiring()
    wd = copy_workflow(tmp_path / "wf")
    uri = server.start()
    config = fcfg.load(wd / "config" / "config.yaml")
    log = open(tmp_path / "snakemake.log", "w")
    study = subprocess.Popen(smk_cmd(wd), cwd=wd, stdout=log, stderr=subprocess.STDOUT, env=smk_env(uri),
                             start_new_session=True)
    try:
        # Stop the server once the first training job has logged itself (mid-study).
        deadline = time.monotonic() + STUDY_TIMEOUT
        before: dict[str, str] = {}
        while not before:
            assert study.poll() is None, failure_report(wd, (tmp_path / "snakemake.log").read_text())
            assert time.monotonic() < deadline, "no training job reached MLflow in time"
            time.sleep(1)
            if (wd / "results" / "mlflow" / "experiment.json").exists():
                before = {k: v[0].info.run_id for k, v in study_runs(MlflowClient(uri), config["study"]).items()
                          if k and not k.startswith("study:")}
        server.stop()
        rc = study.wait(timeout=STUDY_TIMEOUT)
    finally:
        if study.poll() is None:
            os.killpg(os.getpgid(study.pid), signal.SIGTERM)
            study.wait(timeout=60)
        log.close()
    assert rc == 0, failure_report(wd, (tmp_path / "snakemake.log").read_text())
    assert len(before) < len(records.expected_keys(config)), "the server was stopped only after the last job"
    missed = json.loads((wd / "results" / "mlflow" / "sync.json").read_text())
    assert not missed["reachable"] and not missed["ok"]

    uri = server.start()  # same SQLite store and artifact folder, new port
    summary = sync_cli(wd, uri)
    assert summary["ok"] and summary["counts"]["created"] >= 1, summary["counts"]
    ids = assert_mirror_complete(wd, uri)
    assert {k: ids[k] for k in before} == before  # runs from before the kill were completed, not duplicated
    again = sync_cli(wd, uri)
    assert again["counts"]["unchanged"] == len(ids), again["counts"]
    assert assert_mirror_complete(wd, uri) == ids
