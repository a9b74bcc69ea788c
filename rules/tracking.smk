# MLflow: a mirror of the result files (which stay the source of truth).
# The experiment and the study's parent run are created once, before any training job
# (so parallel jobs never race to create them); each training job logs itself as it
# finishes (rules/train.smk); a final sync logs everything from the result files and
# is idempotent. An unreachable tracking store never fails a job: the records say so
# and `fundusfm sync-mlflow` (or `snakemake -R sync_mlflow`) fills MLflow in later.
from types import SimpleNamespace


def mlflow_enabled():
    return bool(config.get("mlflow", {}).get("enabled", True))


def mlflow_uri_arg():
    """--tracking-uri from the config (MLFLOW_TRACKING_URI in the environment wins)."""
    uri = config.get("mlflow", {}).get("tracking_uri")
    return f"--tracking-uri {shlex.quote(uri)}" if uri else ""


def mlflow_experiment_input(wildcards):
    """Training jobs start after the experiment exists. ancient(): setting it up again
    (another tracking URI, say) never re-runs training."""
    return ancient(f"{R}/mlflow/experiment.json")


def mlflow_training_outputs(wildcards=None):
    """model.json of every training job (written last: the job finished)."""
    return [f"{R}/pretrain/{s}/model.json" for s in SOURCES] + [
        f"{R}/finetune/{r.path}/model.json" for r in RUNS
    ]


def mlflow_metrics(wildcards=None):
    """Every metrics JSON of the study (all tasks)."""
    return [m for t in TASKS for m in task_metrics(SimpleNamespace(task=t))]


def mlflow_config_json(wildcards):
    """The resolved study config (parent-run params, dataset lists, expected jobs)."""
    return q(config)


def mlflow_targets():
    return [f"{R}/mlflow/sync.json"] if mlflow_enabled() else []


rule mlflow_experiment:
    """Create the study's MLflow experiment and parent run once (written even when the
    store is unreachable, recording that)."""
    output:
        f"{R}/mlflow/experiment.json",
    log:
        f"{R}/logs/mlflow/experiment.log",
    params:
        cfg=mlflow_config_json,
        uri=mlflow_uri_arg(),
    shell:
        "fundusfm sync-mlflow --experiment-only --results {R} --config-json {params.cfg} "
        "{params.uri} --experiment-json {output} > {log} 2>&1"


rule sync_mlflow:
    """Mirror every training job, its per-epoch history, metrics and artifacts into
    MLflow from the result files (idempotent: a rerun creates no runs)."""
    input:
        experiment=f"{R}/mlflow/experiment.json",
        runs=mlflow_training_outputs,
        metrics=mlflow_metrics,
    output:
        f"{R}/mlflow/sync.json",
    log:
        f"{R}/logs/mlflow/sync.log",
    params:
        cfg=mlflow_config_json,
        uri=mlflow_uri_arg(),
    shell:
        "fundusfm sync-mlflow --results {R} --config-json {params.cfg} {params.uri} "
        "--experiment-json {input.experiment} --summary {output} > {log} 2>&1"
