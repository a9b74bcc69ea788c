"""The study on a real single-node SLURM cluster, through the slurm workflow profile.

A cluster (munge, MariaDB + slurmdbd, slurmctld, slurmd; the node declares ``Gres=gpu:1``
without devices) is started from Debian packages for this module. The tiny study runs
once locally (default profile) and once with ``snakemake --executor slurm
--workflow-profile workflow/profiles/slurm`` and ``gpus_per_job=1``, so every training
job requests ``--gpus 1`` (the training itself still runs on CPU). Then a training job
is preempted with ``scancel --signal=TERM``: it must checkpoint, and the rerun resume.

Opt out with FUNDUSFM_SKIP_SLURM=1; any other problem fails (never a silent skip).
Needs root (daemons) and apt access when the packages are missing.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_helpers import copy_workflow, job_stats, opt_out, run_snakemake, tiny_config, workflow_logs

sys.path.insert(0, str(Path(__file__).parent))
from slurm_cluster import SlurmCluster  # noqa: E402

# a hang guard, not a budget: the three tests take ~5-8 min on an idle 2-core machine
pytestmark = pytest.mark.timeout(1500)

# The smallest study that still runs the GPU rules on the cluster:
# synth -> ingest -> preprocess -> split -> pretraining (fundus init) -> fine-tune -> evaluate -> table.
STUDY_TASKS = {
    "multi": {
        "type": "multilabel",
        "labels": ["dr", "glaucoma"],
        "datasets": ["down"],
        "split": {"strategy": "kfold", "folds": 3},
        "run_folds": [0],
        "inits": ["fundus"],
        "fractions": [1.0],
        "seeds": [0],
    }
}
# rules that run a network and ask for a GPU (model_facts measures throughput on it)
GPU_RULES = {"pretrain", "finetune", "predict_external", "embed", "model_facts"}
# measurements, not results: they differ between any two runs
MEASURED_COLUMNS = {"throughput_img_s", "torch_threads", "device"}
RUN_DIR = "results/finetune/multi/fundus/finetune/fold0/frac1/seed0"
FT_LOG = "results/logs/finetune/multi/fundus/finetune/fold0/frac1/seed0.log"
SLURM_LOGS = "results/logs/slurm"  # the profile's default slurm-logdir


def study_config(**hparams) -> dict:
    cfg = tiny_config(**STUDY_TASKS)
    # no external dataset and no activation maps: fewer jobs, same code paths on the cluster
    cfg["datasets"].pop("ext")
    cfg["report"]["cam"] = False
    cfg["mlflow"] = {"enabled": False}  # tracking has its own integration test
    if hparams:
        cfg["tasks"]["multi"]["hparams"] = hparams
    return cfg


@pytest.fixture(scope="module")
def cluster():
    opt_out("slurm")
    c = SlurmCluster()
    try:
        c.start()
    except Exception:
        c.stop()
        raise
    yield c
    c.stop()


def slurm_env(cluster: SlurmCluster) -> dict:
    """The profile's one-place cluster settings, pointed at the test cluster."""
    return dict(
        cluster.env,
        OMP_NUM_THREADS="1",
        FUNDUSFM_SLURM_GPU_PARTITION=cluster.partition,
        FUNDUSFM_SLURM_CPU_PARTITION=cluster.partition,
        FUNDUSFM_SLURM_ACCOUNT=cluster.account,
        FUNDUSFM_SLURM_CONSTRAINT=cluster.features,
        # the local run's training threads (--cores 2: one each), so the results can match
        FUNDUSFM_SLURM_TRAIN_CPUS="1",
    )


def slurm_args(*extra: str) -> list[str]:
    # The executor polls sacct 40 s after submission by default (the profile keeps that
    # for real clusters); a tiny study on an idle node wants answers within seconds.
    return [
        "--executor", "slurm", "--workflow-profile", "workflow/profiles/slurm",
        "--jobs", "4", "--configfile", "config/config.yaml", "--config", "gpus_per_job=1", "--retries", "0",
        "--slurm-init-seconds-before-status-checks", "2", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def studies(cluster, tmp_path_factory):
    """The same tiny study run locally (default profile) and on the cluster, side by side.

    Side by side because the SLURM run spends much of its time waiting for status polls.
    Returns {"local"|"slurm": (workdir, jobs planned per rule)}.
    """
    local = copy_workflow(tmp_path_factory.mktemp("local"), study_config())
    slurm = copy_workflow(tmp_path_factory.mktemp("slurm"), study_config())
    with ThreadPoolExecutor(2) as pool:
        runs = {
            "local": pool.submit(run_snakemake, local, "--workflow-profile", "workflow/profiles/default",
                                 "--cores", "2", "--configfile", "config/config.yaml", "--config", "gpus_per_job=1"),
            "slurm": pool.submit(run_snakemake, slurm, *slurm_args(), env=slurm_env(cluster)),
        }
        done = {k: f.result() for k, f in runs.items()}
    return {k: (wd, job_stats(done[k].stdout + done[k].stderr)) for k, wd in (("local", local), ("slurm", slurm))}


@pytest.fixture(scope="module")
def slurm_study(studies):
    return studies["slurm"]


@pytest.fixture(scope="module")
def local_study(studies):
    return studies["local"]


def slurm_jobs(workdir: Path) -> dict[str, str]:
    """SLURM job id -> rule, from the job logs the profile keeps (<rule>/<wildcards>/<id>.log)."""
    jobs = {}
    for f in (workdir / SLURM_LOGS).rglob("*.log"):
        rule = f.relative_to(workdir / SLURM_LOGS).parts[0].removeprefix("rule_")
        jobs[f.stem] = rule
    return jobs


def test_every_job_ran_as_a_completed_slurm_job(cluster, slurm_study, local_study):
    wd, planned = slurm_study
    _, local_planned = local_study
    planned.pop("all", None)  # the target rule is local
    local_planned.pop("all", None)
    assert planned and planned == local_planned, (planned, local_planned)

    jobs = slurm_jobs(wd)
    assert Counter(jobs.values()) == Counter(planned), (jobs, planned)
    records = {r["JobIDRaw"]: r for r in cluster.sacct(list(jobs))}
    assert set(records) == set(jobs), f"sacct misses jobs {set(jobs) - set(records)}"
    for job_id, rule in jobs.items():
        r = records[job_id]
        assert (r["State"], r["ExitCode"]) == ("COMPLETED", "0:0"), (rule, r)
        assert r["Partition"] == cluster.partition and r["Account"] == cluster.account, r
        assert rule in r["Comment"], r  # the plugin names the rule in the job comment
        if rule in GPU_RULES:
            # the GPU request path: resources gpu=1 -> sbatch --gpus=1 -> a gres/gpu allocation
            assert "gres/gpu=1" in r["AllocTRES"], r
            assert r["Constraints"] == cluster.features, r
        else:
            assert "gres/gpu" not in r["AllocTRES"], r
    # nothing else of this run hit the cluster (e.g. a failed first attempt)
    run_names = {records[j]["JobName"] for j in jobs}
    assert len(run_names) == 1
    assert {r["JobIDRaw"] for r in cluster.sacct(name=run_names.pop())} == set(jobs)
    # inside each training job, the rule's gpu resource (-> `fundusfm train --gpus 1`) is 1
    assert {"pretrain", "finetune", "model_facts"} <= set(planned)
    for rule in GPU_RULES & set(planned):
        assert re.search(r"resources: .*\bgpu=1\b", _slurm_logs_of(wd, rule)), rule


def _slurm_logs_of(workdir: Path, rule: str) -> str:
    logs = [f for f in (workdir / SLURM_LOGS / f"rule_{rule}").rglob("*.log")]
    return "\n".join(f.read_text(errors="replace") for f in logs)


def _close(a, b, where: str) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), (where, sorted(set(a) ^ set(b)))
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6), (where, a, b)
    else:
        assert a == b, (where, a, b)


def _result_files(workdir: Path) -> dict[str, Path]:
    r = workdir / "results"
    files = [*r.glob("metrics/**/*.json"), *r.glob("finetune/**/predictions_*.csv"),
             *r.glob("pretrain/**/predictions_*.csv"), *r.glob("tables/*.csv")]
    return {str(f.relative_to(workdir)): f for f in files}


def test_slurm_results_equal_a_local_run(slurm_study, local_study):
    slurm_files, local_files = _result_files(slurm_study[0]), _result_files(local_study[0])
    assert sorted(slurm_files) == sorted(local_files)
    kinds = Counter(Path(k).suffix for k in slurm_files)
    assert kinds[".json"] >= 1 and kinds[".csv"] >= 4, kinds
    for name, f in slurm_files.items():
        g = local_files[name]
        if f.suffix == ".json":
            _close(json.loads(f.read_text()), json.loads(g.read_text()), name)
            continue
        a, b = pd.read_csv(f), pd.read_csv(g)
        assert list(a.columns) == list(b.columns) and len(a) == len(b), name
        measured = [c for c in a.columns if c in MEASURED_COLUMNS]
        a, b = a.drop(columns=measured), b.drop(columns=measured)
        num = a.select_dtypes("number").columns
        pd.testing.assert_frame_equal(a.drop(columns=num), b.drop(columns=num), obj=name)
        pd.testing.assert_frame_equal(a[num], b[num], check_exact=False, rtol=1e-6, atol=1e-6, obj=name)


def _squeue_job(cluster: SlurmCluster, rule: str) -> str | None:
    out = cluster.cmd(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], check=False).stdout
    for line in out.splitlines():
        job_id, _, comment = line.partition("|")
        if rule in comment:
            return job_id
    return None


def test_preempted_training_checkpoints_and_the_rerun_resumes(cluster, slurm_study):
    """scancel --signal=TERM mid-training: checkpoint to OUT/.resume, non-zero exit, resume on rerun."""
    wd, _ = slurm_study
    run = wd / RUN_DIR
    # More epochs (and no early stop) so the job is still training when it is signalled;
    # only the fine-tune and what depends on it are out of date now.
    epochs = 25
    cfg = study_config(epochs=epochs, patience=None)
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    target = f"{RUN_DIR}/model.safetensors"
    env = slurm_env(cluster)
    cmd = [sys.executable, "-m", "snakemake", *slurm_args(target)]
    proc = subprocess.Popen(cmd, cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        state = run / ".resume" / "state.pt"
        job_id = None
        deadline = time.monotonic() + 300
        # wait for the first epoch checkpoint of the *new* run (the old outputs are gone once it starts)
        while time.monotonic() < deadline and proc.poll() is None:
            job_id = job_id or _squeue_job(cluster, "finetune")
            if job_id and state.exists() and not (run / "model.safetensors").exists():
                break
            time.sleep(0.3)
        assert proc.poll() is None and job_id and state.exists(), (
            f"the fine-tune never reached a checkpoint while running (job {job_id}):\n{_read(proc)}\n{workflow_logs(wd)}")
        # SLURM delivers the signal to the job's steps: the srun'd Snakemake job and the training under it.
        cluster.cmd(["scancel", "--signal=TERM", job_id])
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, out[-3000:]
    log = (wd / FT_LOG).read_text()
    assert re.search(r"received signal 15", log), log[-3000:]
    m = re.search(r"stopped by signal 15 (?:after epoch (\d+)|at epoch (\d+) step \d+)", log)
    assert m, log[-3000:]
    assert state.exists(), "no resume checkpoint after SIGTERM"
    assert not (run / "model.safetensors").exists(), "a preempted job must not leave final outputs"
    record = cluster.sacct([job_id])[0]
    assert record["State"] == "FAILED" and record["ExitCode"] != "0:0", record

    run_snakemake(wd, *slurm_args(target), env=env)
    log = (wd / FT_LOG).read_text()
    resumed = re.search(r"resuming from \S+: epoch (\d+) step (\d+)", log)
    assert resumed, log[-3000:]
    assert (run / "model.safetensors").exists() and not (run / ".resume").exists()
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == list(range(epochs)), history
    jobs = {j for j, rule in slurm_jobs(wd).items() if rule == "finetune"} - {job_id}
    last = max(jobs, key=int)
    record = cluster.sacct([last])[0]
    assert record["State"] == "COMPLETED" and "gres/gpu=1" in record["AllocTRES"], record


def _read(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        return "(still running)"
    return (proc.stdout.read() if proc.stdout else "")[-4000:]
